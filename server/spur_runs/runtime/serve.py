"""Serve one process until SIGTERM or SIGINT, then drain: `spur-runs serve`
with one worker, and each worker of `--workers N` (runtime/workers.py).

Here rather than in cli.py so that workers.py need not import the command
line (which imports workers.py): the two used to import each other.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from typing import Any

from ..config import Config, ConfigError, parse_address
from ..telemetry.metrics import Metrics


def check_port_free(address: str, name: str) -> None:
    """Refuse a port that another process already listens on, with a reason
    (grpc's own bind failure is a C-level log line and a RuntimeError); with
    SO_REUSEPORT the workers would even share it silently."""
    host, port = parse_address(address, name)
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            probe.bind(where)
    except OSError as error:
        raise OSError(f"cannot listen on {address}: {error.strerror or error}") from None


def serve(
    config: Config, metrics: Metrics | None = None, stopping: threading.Event | None = None
) -> int:
    """Serve until SIGTERM or SIGINT (or `stopping` is set), then drain; one
    process, or one worker of several."""
    from .server import create_server

    try:
        if config.workers == 1:  # (a worker's siblings hold the port on purpose)
            check_port_free(config.grpc_address, "grpc_address")
        server, _port = create_server(config, metrics=metrics)
    except (ConfigError, OSError) as error:  # unreadable file, port taken
        print(f"spur-runs: {error}", file=sys.stderr)
        return 2
    if stopping is None:
        stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger(__name__).info(
            "%s: draining (up to %ss)", signal.Signals(signum).name, config.grace_seconds
        )
        stopping.set()

    # Before start: health says SERVING as soon as gRPC listens, and a
    # SIGTERM sent from then on must drain, not kill the process outright.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    # A timed wait, not stopping.wait(): the kernel may hand SIGTERM to any
    # thread that does not block it (grpc's own threads included), and
    # Python runs the handler on the main thread only when that thread runs
    # bytecode. An untimed wait could sleep through the signal for good
    # (seen: about 1 start in 30-50 hung until killed).
    while not stopping.wait(0.5):
        pass
    server.stop()
    return 0
