"""Serve one process until SIGTERM, SIGINT or SIGHUP, then drain: `spur-runs serve`
with one worker, and each worker of `--workers N` (runtime/workers.py).

Here rather than in cli.py so that workers.py need not import the command
line (which imports workers.py): the two used to import each other.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from ..config import Config, ConfigError, parse_address
from ..store import pg_watchdog
from ..telemetry.metrics import Metrics

log = logging.getLogger(__name__)

# After the grace period, how long the calls' threads get to end once their
# statements are cut, before the process leaves without them.
EXIT_SECONDS = 2.0


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


# What stops a server: SIGHUP too, which a closing terminal or SSH session
# sends (README's command run in one): it used to kill the process at once,
# with no drain and no log line.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def serve(
    config: Config,
    metrics: Metrics | None = None,
    stopping: threading.Event | None = None,
    signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
    signalled: threading.Event | None = None,
) -> int:
    """Serve until one of `signals` (or `stopping` is set), then drain; one
    process, or one worker of several (which the parent stops through a
    pipe, setting `stopping`). A second of `signals` exits at once: second
    after `signalled`, set by the first (a worker's own handler may have
    set it before this one was in place), not after `stopping`, which a
    worker's parent sets too: systemd's stop signals parent and workers
    alike, and a worker that heard its parent's order before its own
    SIGTERM took that SIGTERM for a second one and cut every call."""
    from .server import create_server

    try:
        if config.workers == 1:  # (a worker's siblings hold the port on purpose)
            check_port_free(config.grpc_address, "grpc_address")
        server, _port = create_server(config, metrics=metrics)
    except (ConfigError, OSError) as error:  # unreadable file, port taken
        print(f"spur-runs serve: {error}", file=sys.stderr)
        return 2
    if stopping is None:
        stopping = threading.Event()
    if signalled is None:
        signalled = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if signalled.is_set():  # a second signal: the operator will not wait
            log.warning("%s during the drain: exiting now", name)
            exit_now(1)
        signalled.set()
        if not stopping.is_set():  # (else draining already, on the parent's order)
            log.info("%s: draining (up to %ss)", name, config.grace_seconds)
        stopping.set()

    # Before start: health says SERVING as soon as gRPC listens, and a
    # SIGTERM sent from then on must drain, not kill the process outright.
    for signum in signals:
        signal.signal(signum, on_signal)
    server.start()
    # A timed wait, not stopping.wait(): the kernel may hand SIGTERM to any
    # thread that does not block it (grpc's own threads included), and
    # Python runs the handler on the main thread only when that thread runs
    # bytecode. An untimed wait could sleep through the signal for good
    # (seen: about 1 start in 30-50 hung until killed).
    while not stopping.wait(0.5):
        pass
    stopped = server.stop()
    _end_stuck_calls(server.call_threads(), leave=not stopped)
    return 0


def _end_stuck_calls(calls: list[threading.Thread], leave: bool = False) -> None:
    """After server.stop(): grpc has cancelled the calls still running at the
    end of the grace period, but a call's thread goes on waiting for a
    database that does not answer (up to --db-timeout-seconds and 2 s more,
    pg_watchdog), and the interpreter waits for every such thread at exit:
    a SIGTERM took 31 s with --grace-seconds 2 (a review, 2026-12-03), past
    an orchestrator's own grace and into its SIGKILL. So the statements
    still running are cut now (their connections shut down), the threads
    get EXIT_SECONDS to end, and the process leaves without any that did
    not (a SQLite lock wait, bounded by busy_timeout alone; its write
    cannot commit, Database.cut). `calls`: the threads that ran calls
    (RunsServer.call_threads), daemon threads as grpc starts them, which
    the interpreter's exit still waits for (concurrent.futures joins its
    pools' threads); every other non-daemon thread is waited for too.
    `leave`: exit now all the same (grpc's transport did not shut down)."""
    cut = pg_watchdog.WATCHDOG.cut_all()
    if cut:
        log.warning("%d database statement(s) still running after the grace period: cut", cut)
    until = time.monotonic() + EXIT_SECONDS
    me = threading.current_thread()
    others = [t for t in threading.enumerate() if not t.daemon and t not in calls]
    waited = [t for t in [*calls, *others] if t is not me]
    for thread in waited:
        thread.join(max(0.0, until - time.monotonic()))
    stuck = [t.name for t in waited if t.is_alive()]
    if stuck:
        log.warning("leaving %d thread(s) still waiting: %s", len(stuck), ", ".join(stuck))
    if stuck or leave:
        exit_now(0)


def exit_now(code: int) -> None:
    """Exit now, without waiting for other threads (logs flushed first)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
