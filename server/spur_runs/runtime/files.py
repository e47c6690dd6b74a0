"""The open-file limit the connection caps need, asked for at start-up.

Each connection holds a descriptor, so both caps are lowered to fit the
process's soft file limit (rpc/limits.py: gRPC's, gateway/connections.py:
HTTP's). Under systemd that soft limit is 1024 by default, which cut the
default 1,024 gRPC connections to 256, while the hard limit (524,288 under
systemd) allowed them all. As Go's runtime does for every Go server, the
soft limit is raised at start-up, here only as far as the caps need and
the hard limit allows; --workers' processes inherit it.
"""

from __future__ import annotations

import logging
import resource

from ..config import Config
from ..gateway.connections import BACKLOG
from ..rpc.limits import RESERVED_DESCRIPTORS

log = logging.getLogger(__name__)


def files_needed(config: Config) -> int:
    """The soft limit at which neither cap is lowered (the inverse of
    rpc.limits.grpc_connections and gateway.connections.descriptor_budget)."""
    grpc = 2 * (config.grpc_max_connections + RESERVED_DESCRIPTORS)
    http = 2 * config.http_max_connections + 2 * BACKLOG
    return max(grpc, http)


def raise_file_limit(config: Config) -> None:
    """Raise the soft open-file limit towards files_needed, up to the hard
    limit. Where the hard limit is lower, the caps are lowered with their
    own warnings."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return
    wanted = files_needed(config)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted <= soft:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as error:  # a sandbox that refuses it
        log.warning("could not raise the open-file limit from %d: %s", soft, error)
        return
    log.info("open-file limit raised from %d to %d for the connection caps", soft, wanted)
