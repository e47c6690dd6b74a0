"""Served through a real PgBouncer in transaction mode (docs/production.md).

PgBouncer (Debian's, 1.18) lends one of its few server connections to each
transaction of any client: a client's next statement may run on another
server session than its last. What a session keeps (a prepared statement, a
SET) is then missing where the client expects it, or present where another
client does not. Measured before the database URL's `prepare_threshold=none`
was honoured (12 client threads, default_pool_size 6): 0.05-0.7% of GetRun and
list calls answered INTERNAL ("prepared statement spur_runs_... does not
exist", "... already exists"), and the URL's `?prepare_threshold=none` made
every statement of psycopg's cursor fail (a TypeError: SQLAlchemy passed the
text on). PgBouncer also refuses the start-up parameter `options` (which
carries --db-timeout-seconds) unless told to ignore it.

Here: PgBouncer as a child process (pool_mode transaction, 2 server
connections), the server in process with the URL an operator is told to
use, and calls from several threads, half of them with deadlines shorter
than --db-timeout-seconds (a single read then lowers statement_timeout in
its own implicit transaction, store/libpq.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from databases import IN_CI, new_postgres_database
from locks import runs_locked
from servers import free_port, start_server
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.seed import seed
from spur_runs.store.migrate import migrate

POOL = 2  # PgBouncer's server connections: every client shares these two
ROLE_BOUND = "30s"  # the bound set on the database, as production.md says
DB_TIMEOUT_S = 30.0  # --db-timeout-seconds: longer than the short deadlines
SHORT_S = 3.0  # a client deadline shorter than it
THREADS = 8
ROUNDS = 15


# Ports tried before giving up: each is lost only to a process that binds
# it between free_port() and PgBouncer's own bind.
PORT_ATTEMPTS = 5


@contextmanager
def pgbouncer(folder: Path, settings: str = "") -> Iterator[int]:
    """PgBouncer in transaction mode in front of 127.0.0.1:5432, trusting
    every user as the PostgreSQL of the tests does; yields its port.
    `settings`: more lines for its [pgbouncer] section.

    Its port comes from free_port(), and another process may bind it before
    PgBouncer does: PgBouncer then exits ("Address already in use" in its
    log) and is started again on another port. Any other failure to start
    fails the test, with PgBouncer's log. Started means that PgBouncer's
    log says it listens on the port: a connection that succeeds may be
    another process's, the one that took the port."""
    binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if binary is None:
        reason = "pgbouncer not installed (apt-get install pgbouncer)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    (folder / "users.txt").write_text('"postgres" ""\n')
    taken: list[int] = []
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        process, log = _start_pgbouncer(binary, folder, port, settings, attempt)
        try:
            if _listening(process, log, port):
                break
        except BaseException:
            _stop(process)
            raise
        _stop(process)
        taken.append(port)
    else:
        raise AssertionError(f"pgbouncer: every port tried was taken first: {taken}")
    try:
        yield port
    finally:
        _stop(process)


def _start_pgbouncer(
    binary: str, folder: Path, port: int, settings: str, attempt: int
) -> tuple[subprocess.Popen[bytes], Path]:
    """PgBouncer started on `port`, its log in a file of this attempt's."""
    ini = folder / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        "* = host=127.0.0.1 port=5432\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {POOL}\nmax_client_conn = 500\n"
        # What production.md tells operators to set: without it PgBouncer
        # refuses the connections ("unsupported startup parameter: options").
        "ignore_startup_parameters = options\n"
        f"{settings}"
    )
    # PgBouncer will not run as root; it reads its files before it switches.
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    log = folder / f"pgbouncer-{attempt}.log"
    with log.open("w") as out:  # the child has its own descriptor
        process = subprocess.Popen([binary, *user, str(ini)], stdout=out, stderr=out)
    return process, log


def _listening(process: subprocess.Popen[bytes], log: Path, port: int) -> bool:
    """True once PgBouncer listens on `port` and takes a connection; False
    when it exited because the port was taken; AssertionError (with its
    log) when it exited for any other reason or did not start within 10 s."""
    end = time.monotonic() + 10
    while True:
        exited = process.poll() is not None
        said = log.read_text()
        if exited:
            # PgBouncer 1.18: "cannot listen on 127.0.0.1:<port>: bind():
            # Address already in use", then "FATAL nowhere to listen on"
            # (it listens on that one address only).
            if "Address already in use" in said:
                return False
            raise AssertionError(f"pgbouncer exited ({process.returncode}) at start: {said}")
        if f"listening on 127.0.0.1:{port}" in said:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                pass
        if time.monotonic() > end:
            raise AssertionError(f"pgbouncer did not start within 10 s: {said}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_a_port_taken_before_pgbouncer_binds_it_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process binds the port free_port() gave before PgBouncer
    does (here, this test): PgBouncer starts again on another port, and the
    port it yields is PgBouncer's, not the other process's."""
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", 0))
        thief.listen()
        stolen = thief.getsockname()[1]
        given, free = iter([stolen]), free_port
        monkeypatch.setattr(sys.modules[__name__], "free_port", lambda: next(given, None) or free())
        with pgbouncer(tmp_path) as port:
            assert port != stolen
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/test") as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    assert "Address already in use" in (tmp_path / "pgbouncer-0.log").read_text()


def test_pgbouncer_failing_otherwise_fails_the_test(tmp_path: Path) -> None:
    """Any other failure to start is not retried: it fails, with the log."""
    with pytest.raises(AssertionError, match="pgbouncer exited .*pool_mode"):
        with pgbouncer(tmp_path, settings="pool_mode = nonsense\n"):
            pass
    assert not (tmp_path / "pgbouncer-1.log").exists()


@pytest.fixture
def through(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A database migrated and seeded directly: its own URL, its URL through
    PgBouncer as production.md says to write it, and libpq's for PgBouncer."""
    with ExitStack() as stack:
        direct = stack.enter_context(new_postgres_database())
        migrate(direct)
        seed(direct, runs=30)
        name = make_url(direct).database
        engine = create_engine(direct, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"ALTER DATABASE \"{name}\" SET statement_timeout = '{ROLE_BOUND}'"))
        engine.dispose()
        port = stack.enter_context(pgbouncer(tmp_path))
        bouncer = f"postgresql://postgres@127.0.0.1:{port}/{name}"
        yield direct, f"{bouncer}?prepare_threshold=none", bouncer


def _calls(channel: grpc.Channel, timeout: float | None) -> dict[str, Callable[[], bytes]]:
    """Each read as a function giving its answer's bytes: of finished runs
    only, whose answers do not change (an unfinished one's duration grows)."""
    stub = RunServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    basic = run_pb2.RUN_VIEW_BASIC

    def watch(run_id: str) -> bytes:
        answers = list(stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=timeout or 10))
        return answers[-1].SerializeToString(deterministic=True)

    requests: dict[str, Callable[[], Any]] = {
        "GetRun": lambda: stub.GetRun(pb.GetRunRequest(run_id="R1"), timeout=timeout),
        "GetRun basic": lambda: stub.GetRun(
            pb.GetRunRequest(run_id="R7", view=basic), timeout=timeout
        ),
        "ListRuns": lambda: stub.ListRuns(
            pb.ListRunsRequest(status=["COMPLETED"], page_size=7), timeout=timeout
        ),
        "ListRuns filtered": lambda: stub.ListRuns(
            pb.ListRunsRequest(status=["FAILED", "CANCELED"], page_size=5), timeout=timeout
        ),
        "ListRuns total": lambda: stub.ListRuns(
            pb.ListRunsRequest(
                status=["COMPLETED"], page_size=3, include_total_size=True, view=basic
            ),
            timeout=timeout,
        ),
        "GetRunTasks": lambda: stub.GetRunTasks(
            pb.GetRunTasksRequest(run_id="R1", page_size=2), timeout=timeout
        ),
        "GetChildRuns": lambda: stub.GetChildRuns(
            pb.GetChildRunsRequest(run_id="R1", view=basic), timeout=timeout
        ),
        "Health": lambda: health.Check(
            health_pb2.HealthCheckRequest(service="spur.runs.v1.RunService"),
            timeout=timeout or 10,
        ),
    }
    answers: dict[str, Callable[[], bytes]] = {
        name: (lambda call=call: call().SerializeToString(deterministic=True))
        for name, call in requests.items()
    }
    answers["WatchRun"] = lambda: watch("R7")  # failed: one message, then OK
    return answers


def _held_timeouts(url: str) -> list[tuple[int, str]]:
    """(server pid, statement_timeout) of every server connection of
    PgBouncer's pool: one transaction held open per connection, at once."""
    conns = [psycopg.connect(url, prepare_threshold=None) for _ in range(POOL)]
    try:
        seen = []
        for conn in conns:  # each BEGIN holds a server connection until ROLLBACK
            row = conn.execute("SELECT pg_backend_pid(), current_setting('statement_timeout')")
            pid, bound = row.fetchone()  # type: ignore[misc]
            seen.append((pid, bound))
        return seen
    finally:
        for conn in conns:
            conn.rollback()
            conn.close()


@pytest.mark.slow  # about 8 s: a thousand calls, a lock waited for three times
def test_served_through_pgbouncer_in_transaction_mode(
    through: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    direct, pooled, bouncer = through
    caplog.set_level(logging.WARNING, logger="spur_runs.store.engine")

    def warned() -> int:
        return sum("start-up options were dropped" in r.getMessage() for r in caplog.records)

    # The answers of a server on the database itself: what every call must give.
    reference = start_server(direct, db_timeout_seconds=DB_TIMEOUT_S)
    with grpc.insecure_channel(f"127.0.0.1:{reference.port}") as channel:
        expected = {name: call() for name, call in _calls(channel, None).items()}
    reference.stop(0)
    # Through PgBouncer without ?prepare_threshold=none: said once at start.
    start_server(bouncer, db_timeout_seconds=DB_TIMEOUT_S).stop(0)
    assert warned() == 1

    server = start_server(
        pooled, db_timeout_seconds=DB_TIMEOUT_S, max_workers=THREADS, pool_size=THREADS
    )
    assert warned() == 1  # nothing more to say
    failures: list[str] = []
    answered = [0]
    lock = threading.Lock()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:

            def client(index: int) -> None:
                # Half the threads with a deadline shorter than the server's
                # bound: their single reads lower it in one pipeline.
                calls = _calls(channel, SHORT_S if index % 2 else None)
                for _ in range(ROUNDS):
                    for name, call in calls.items():
                        try:
                            got = call()
                        except grpc.RpcError as error:
                            with lock:
                                failures.append(f"{name}: {error.code()} {error.details()}")
                            continue
                        with lock:
                            answered[0] += 1
                            if got != expected[name]:
                                failures.append(f"{name}: another answer")

            threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert failures == []
            assert answered[0] == THREADS * ROUNDS * len(expected)

            # Nothing left on the pool's sessions for other clients: both
            # server connections still have the database's own bound.
            held = _held_timeouts(bouncer)
            assert len({pid for pid, _ in held}) == POOL
            assert [bound for _, bound in held] == [ROLE_BOUND] * POOL

            stub = RunServiceStub(channel)
            # A read waiting for a locked table is cancelled by PostgreSQL
            # at the caller's deadline, and its server connection is free
            # again for other clients (more reads than the pool has).
            with runs_locked(direct) as waiting:
                for _ in range(POOL + 1):
                    with pytest.raises(grpc.RpcError) as raised:
                        stub.GetRun(pb.GetRunRequest(run_id="R1"), timeout=1.0)
                    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                    # Cancelled on the server, not abandoned by the client:
                    # without the lowered bound it waits for the lock up to
                    # the database's 30 s.
                    end = time.monotonic() + 2
                    while waiting() and time.monotonic() < end:
                        time.sleep(0.02)
                    assert waiting() == 0
            assert stub.GetRun(pb.GetRunRequest(run_id="R1"), timeout=5).run.id == "R1"

            # Deletes in transactions, from several threads, short deadlines.
            completed = pb.ListRunsRequest(
                page_size=20, view=run_pb2.RUN_VIEW_BASIC, status=["COMPLETED"]
            )
            showcase = {f"R{n}" for n in range(1, 10)}  # read by the calls above
            ids = [run.id for run in stub.ListRuns(completed).runs if run.id not in showcase]
            assert len(ids) >= 4

            def delete(run_id: str) -> None:
                try:
                    stub.DeleteRun(pb.DeleteRunRequest(run_id=run_id), timeout=SHORT_S)
                    with pytest.raises(grpc.RpcError) as gone:
                        stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=SHORT_S)
                    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
                except (grpc.RpcError, AssertionError) as error:
                    with lock:
                        failures.append(f"DeleteRun {run_id}: {error}")

            deleters = [threading.Thread(target=delete, args=(run_id,)) for run_id in ids]
            for thread in deleters:
                thread.start()
            for thread in deleters:
                thread.join()
            assert failures == []
            assert [bound for _, bound in _held_timeouts(bouncer)] == [ROLE_BOUND] * POOL
    finally:
        server.stop(0)
