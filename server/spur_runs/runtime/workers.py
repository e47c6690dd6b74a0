"""`spur-runs serve --workers N`: N server processes on one port.

Python gRPC serves a process's calls with one interpreter lock; several
processes are the way to use several cores. Each worker is a full server
(its own gRPC server, database pool, health pinger and HTTP gateway) that
binds the same ports with SO_REUSEPORT, so the kernel spreads connections
over them; no worker shares state with another.

Metrics: the parent makes an empty directory and hands it to the workers as
PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode, chosen at
its import, hence set before the workers start); each worker writes its
numbers there, and whichever worker answers a scrape adds all of them up.

Signals: SIGTERM, SIGINT or SIGHUP to the parent is passed on to every
worker through a pipe (_follow_parent), each drains as a single server does,
and the parent exits 0 once all of them have exited 0. A second one during
the drain is passed on too, and each worker exits at once; the parent exits
1. Not as signals: workers ignore SIGINT and SIGHUP, which a terminal's
Ctrl-C and a closing terminal or SSH session send to the whole process
group, and a SIGTERM sent to the whole group (systemd's default KillMode) is
each worker's own, which a forwarded SIGTERM would have followed as a
second, impatient signal (serve.py: exit at once, no drain). A parent killed
without a word (SIGKILL) takes its workers with it: each drains once it sees
its parent gone. A worker that dies on its own stops the others and the
parent exits 1: the process supervisor (systemd, Kubernetes) restarts the
whole, rather than this code hiding a crash loop.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from typing import Any

from .. import tls
from ..config import Config, ConfigError
from ..rpc import auth
from .serve import STOP_SIGNALS, check_port_free, exit_now

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The parent's orders to its workers (_follow_parent).
DRAIN, NOW = "drain", "now"
# How long, beyond the grace period, a worker may take to exit after SIGTERM.
_EXIT_MARGIN = 10.0


def _worker(config: Config, metrics_dir: str, orders: Connection) -> None:
    """A worker process's main (spawned: a fresh interpreter, no fork)."""
    # Catch a stop that arrives while the server is still being built.
    stopping = threading.Event()
    signalled = threading.Event()  # by its own SIGTERM (serve: a second one exits now)

    def on_sigterm(_signum: int, _frame: Any) -> None:
        signalled.set()
        stopping.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    for signum in (signal.SIGINT, signal.SIGHUP):  # the parent's, through `orders`
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked since birth (serve_workers)
    # A parent killed outright (SIGKILL, the OOM killer) forwards nothing:
    # its workers would go on serving on the port, and a restarted parent
    # could not bind it. Each worker drains once its parent is gone.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_follow_parent, args=(parent.sentinel, orders, stopping, config), daemon=True
        ).start()
    from ..telemetry import logs
    from ..telemetry.metrics import Metrics
    from .serve import serve

    logs.setup(config)
    sys.exit(
        serve(
            config,
            Metrics(multiprocess_dir=metrics_dir),
            stopping,
            signals=(signal.SIGTERM,),
            signalled=signalled,
        )
    )


def _follow_parent(
    sentinel: int, orders: Connection, stopping: threading.Event, config: Config
) -> None:
    """The parent's orders: DRAIN, then perhaps NOW (a second signal). They
    come through a pipe, not as signals: a SIGTERM sent to the whole process
    group (systemd's default KillMode) reached each worker twice, its own and
    the parent's, and the second made it exit at once, cutting every call."""
    while True:
        ready = wait([sentinel, orders])
        try:
            order = orders.recv() if orders in ready else None
        except (EOFError, OSError):
            order = None
        if order == DRAIN:
            if not stopping.is_set():
                log.info("stopped by the parent: draining (up to %ss)", config.grace_seconds)
                stopping.set()
            continue
        if order == NOW:
            log.warning("stopped again by the parent during the drain: exiting now")
            exit_now(1)
        # The parent process has ended (its sentinel, or its end of the pipe).
        if not stopping.is_set():
            log.warning("the parent process has gone: stopping this worker")
            stopping.set()
        return


def preflight(config: Config) -> None:
    """What each worker would fail on, checked once, before any starts."""
    auth.Tokens.from_config(config)
    tls.load(config)
    # Each in one line, where grpc's own bind failure is a C log line more.
    for name in ("grpc_address", "http_address", "health_address"):
        address = getattr(config, name)
        if address is not None:
            check_port_free(address, name)


def serve_workers(config: Config) -> int:
    try:
        preflight(config)
    except (ConfigError, OSError) as error:
        print(f"spur-runs: {error}", file=sys.stderr)
        return 2
    metrics_dir = tempfile.mkdtemp(prefix="spur-runs-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir  # inherited by the workers
    context = multiprocessing.get_context("spawn")
    pipes = [context.Pipe(duplex=False) for _ in range(config.workers)]
    workers = [
        context.Process(
            target=_worker, args=(config, metrics_dir, reader), name=f"spur-runs-worker-{i}"
        )
        for i, (reader, _) in enumerate(pipes)
    ]
    orders = [writer for _, writer in pipes]
    stopping = threading.Event()
    impatient: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if not stopping.is_set():
            log.info("%s: stopping %d workers", name, len(workers))
            stopping.set()
            return
        # A second signal: the operator will not wait for the drain, as with
        # one process (serve.py). It used to be ignored, the parent waiting
        # out the whole grace period. Each worker exits at once (with 1) on
        # NOW; the parent's wait for them then ends at once.
        if not impatient:
            log.warning("%s during the drain: stopping the workers now", name)
        impatient.append(name)
        _order(workers, orders, NOW)

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    try:
        # Started with the stop signals blocked, each worker is born with
        # them blocked (the mask survives fork and exec) and unblocks them
        # once its handlers are in place (_worker): a Ctrl-C while a worker
        # was still importing raised KeyboardInterrupt there, a traceback
        # from each and exit 1. Here they are delivered, if they came, once
        # all have started. multiprocessing starts its resource tracker the
        # same way, at the first start(), and unblocks SIGINT and SIGTERM
        # after it: it is started first, so that it leaves the mask alone.
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for worker in workers:
                worker.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        log.info(
            "started %d workers (pids %s) on %s",
            len(workers),
            ", ".join(str(w.pid) for w in workers),
            config.grpc_address,
        )
        crashed = _supervise(workers, stopping)
        code = _stop(workers, orders, config, crashed)
        return 1 if impatient else code
    finally:
        from prometheus_client import multiprocess

        for worker in workers:
            if worker.pid is not None:
                multiprocess.mark_process_dead(worker.pid, metrics_dir)  # type: ignore[no-untyped-call]
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(workers: list[Any], stopping: threading.Event) -> Any | None:
    """Wait for a signal (returns None) or a worker's failure (returns it).

    A worker that exited 0 was signalled itself (a process-group kill, as
    `timeout` or a terminal's Ctrl-C send): that is a stop, not a failure.
    """
    while not stopping.is_set():
        for sentinel in wait([w.sentinel for w in workers], timeout=0.5):
            dead = next(w for w in workers if w.sentinel == sentinel)
            dead.join()
            if stopping.is_set() or dead.exitcode == 0:
                return None
            log.error("worker %d exited with code %s: stopping the others", dead.pid, dead.exitcode)
            return dead
    return None


def _order(workers: list[Any], orders: list[Connection], order: str) -> None:
    for worker, pipe in zip(workers, orders, strict=True):
        if worker.is_alive():
            with contextlib.suppress(OSError):  # it has just exited
                pipe.send(order)


def _stop(workers: list[Any], orders: list[Connection], config: Config, crashed: Any | None) -> int:
    _order(workers, orders, DRAIN)
    for worker in workers:
        worker.join(config.grace_seconds + _EXIT_MARGIN)
        if worker.is_alive():
            log.error("worker %d did not exit: killing it", worker.pid)
            worker.kill()
            worker.join()
    if crashed is not None:
        # A worker that could not start (exit 2: port, file) says why itself.
        return 2 if crashed.exitcode == 2 else 1
    codes = [w.exitcode for w in workers]
    # -SIGTERM: a worker stopped before it had installed its handler, i.e.
    # before it served anything; nothing was cut short.
    if any(code not in (0, -signal.SIGTERM) for code in codes):
        log.error("workers exited with codes %s", codes)
        return 1
    log.info("all workers drained and exited")
    return 0
