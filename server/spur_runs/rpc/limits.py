"""Limits that protect the server: message sizes, concurrent calls,
connections, keepalive enforcement, connection age, and the deadline of
database work.

The concurrent-call bound is grpc's own (`maximum_concurrent_rpcs`): beyond
it a call gets RESOURCE_EXHAUSTED at once, before any thread or database
connection is spent on it, instead of waiting in the executor's unbounded
queue while its client's deadline runs out.
"""

from __future__ import annotations

import logging
import resource
from typing import Any

from .. import deadline
from ..config import Config
from .chain import Call, Hook

log = logging.getLogger(__name__)

# How long the server waits for the answer to its keepalive ping.
KEEPALIVE_TIMEOUT_MS = 20_000
# grpc's bound on any message sent is at least this: reflection's and
# health's answers are fixed by the protos (the largest, some 36 KB, is
# run_service.proto's file with its imports), and --max-response-bytes
# bounds RunService's answers alone, in the chain (encode.py).
FIXED_ANSWER_BYTES = 4 * 1024 * 1024
# Descriptors kept for what is neither an HTTP nor a gRPC connection: the
# database pools and kept connections, listeners, logs, files.
RESERVED_DESCRIPTORS = 256


def grpc_connections(configured: int, soft_limit: int | None = None) -> int:
    """--grpc-max-connections, lowered to what the file limit allows: HTTP
    connections may take half of it (gateway/connections.py), gRPC's the
    other half less RESERVED_DESCRIPTORS. Idle connections that sent only
    HTTP/2's preface took every descriptor, and with them HTTP's accepts."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft_limit // 2 - RESERVED_DESCRIPTORS))


def server_options(config: Config) -> list[tuple[str, int]]:
    connections = grpc_connections(config.grpc_max_connections)
    if connections < config.grpc_max_connections:
        log.warning(
            "at most %d open gRPC connections, not --grpc-max-connections %d: the process "
            "may open only %d files (ulimit -n)",
            connections,
            config.grpc_max_connections,
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
    options = [
        # Connections beyond it are closed as soon as they are accepted.
        ("grpc.max_allowed_incoming_connections", connections),
        ("grpc.max_receive_message_length", config.max_request_bytes),
        # A backstop: RunService's answers are held to --max-response-bytes
        # before they get here (encode.py), with their own status.
        ("grpc.max_send_message_length", max(config.max_response_bytes, FIXED_ANSWER_BYTES)),
        # Ping idle connections so that those of vanished clients (a pod
        # killed without FIN) are closed instead of kept forever.
        ("grpc.keepalive_time_ms", int(config.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # Enforcement of clients' pings: no more often than this, else
        # GOAWAY "too_many_pings" after grpc's default 2 strikes. Clients
        # may keep an idle channel alive with pings at that pace.
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            int(config.min_ping_interval_seconds * 1000),
        ),
        ("grpc.keepalive_permit_without_calls", 1),
        # Streams open at once on one connection (HTTP/2 SETTINGS): a client
        # cannot hold more than this many of the server's stream slots (health
        # and WatchRun watches, reflection) through a single connection.
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
        # Several workers bind one port on purpose; a single server must not
        # silently share its port with another process started by mistake.
        ("grpc.so_reuseport", 1 if config.workers > 1 else 0),
    ]
    if config.max_connection_age_seconds > 0:
        options += [
            ("grpc.max_connection_age_ms", int(config.max_connection_age_seconds * 1000)),
            # Calls in flight when the age is reached may finish for as
            # long as a graceful shutdown would let them.
            ("grpc.max_connection_age_grace_ms", int(config.grace_seconds * 1000)),
        ]
    return options


class DeadlineHook(Hook):
    """Makes the client's deadline known to the database layer (deadline.py).

    For a non-blocking behavior it bounds what the behavior does before it
    returns (WatchRun's first read of the run), on the thread that runs it;
    what is sent later is bounded by the deadline of the stream itself, which
    grpc enforces (it cancels the call)."""

    def enter(self, call: Call) -> None:
        deadline.set_remaining(call.context.time_remaining())

    def exit(self, call: Call, state: Any, error: BaseException | None) -> None:
        deadline.clear()
