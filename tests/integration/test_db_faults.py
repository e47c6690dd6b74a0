"""The database failing under load (issue 6, "Database down").

PostgreSQL is shared with other tests and cannot be stopped, so "down" is
made two ways: its server-side connections killed with pg_terminate_backend
in the middle of the load, and a real outage through a TCP proxy (`Proxy`)
that the server's database URL points at: cut, it drops every connection and
refuses new ones (the kernel answers RST, as for a stopped server), then
comes back on the same port. Under load from several client threads every
call ends OK or UNAVAILABLE (never UNKNOWN/INTERNAL, never past its
deadline), health turns NOT_SERVING, and the service recovers by itself once
the database is back. SQLite: a database locked by another process.

Figures (latency against deadline, recovery time) are printed (pytest -s).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from fault_load import (
    NOT_SERVING,
    SERVING,
    Load,
    health_status,
    seed_runs,
    wait_pool_idle,
)
from servers import start_server
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs import deadline
from spur_runs.store.db import Database
from spur_runs.store.migrate import migrate


def wait_health(channel: grpc.Channel, want: int, timeout: float = 10) -> float:
    """Seconds until health reports `want`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if health_status(channel) == want:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"health did not become {want} within {timeout} s")


class Proxy:
    """A TCP forwarder 127.0.0.1:<port> -> upstream that can be cut (every
    connection dropped, new ones refused: nothing listens) and restored on
    the same port: a database server going down and coming back. Frozen, it
    keeps every connection open and accepts new ones but forwards nothing:
    a database that stops answering (a network partition, seen from the
    application; the kernel here still acknowledges every packet)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._frozen = threading.Event()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepting.start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=3)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self._frozen.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            self._drop(end)

    def _drop(self, end: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(end)
        try:
            end.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv
        except OSError:
            pass
        end.close()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._accepting is not None:
            self._accepting.join()
        with self._lock:
            ends = list(self._sockets)
        for end in ends:
            self._drop(end)

    def restore(self) -> None:
        self.start()

    def freeze(self) -> None:
        self._frozen.set()

    def thaw(self) -> None:
        """Forward again; the connections that lost bytes are dropped."""
        with self._lock:
            ends = list(self._sockets)
        for end in ends:
            self._drop(end)
        self._frozen.clear()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    forwarder = Proxy(("127.0.0.1", 5432))
    forwarder.start()
    yield forwarder
    forwarder.cut()


@pytest.mark.slow
def test_database_down_and_back_through_a_proxy(postgres_url: str, proxy: Proxy) -> None:
    run_ids = seed_runs(postgres_url)
    proxied = make_url(postgres_url).set(port=proxy.port).render_as_string(hide_password=False)
    server = start_server(proxied, health_interval=0.2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            wait_health(channel, SERVING)
            with Load(stub, run_ids) as load:
                load.wait_for(lambda o: o.code == grpc.StatusCode.OK, timeout=5)
                time.sleep(0.3)
                down = time.monotonic()
                proxy.cut()
                to_not_serving = wait_health(channel, NOT_SERVING)
                # Calls that start while the database is down fail at once.
                failed = load.wait_for(
                    lambda o: o.started > down + 0.1 and o.code != grpc.StatusCode.OK, timeout=5
                )
                time.sleep(0.5)
                back = time.monotonic()
                proxy.restore()
                first_ok = load.wait_for(
                    lambda o: o.started >= back and o.code == grpc.StatusCode.OK, timeout=10
                )
                wait_health(channel, SERVING)
                to_serving = time.monotonic() - back
                time.sleep(0.3)
            print(
                f"\n{load.report('proxy cut')}; health NOT_SERVING {to_not_serving:.2f} s after "
                f"the cut; database back -> first OK call {first_ok.ended - back:.3f} s, "
                f"health SERVING {to_serving:.2f} s (interval 0.2 s)"
            )
            assert failed.code == grpc.StatusCode.UNAVAILABLE
            load.assert_clean()
            during = [o for o in load.outcomes if down + 0.1 < o.started and o.ended < back]
            assert during and all(o.code == grpc.StatusCode.UNAVAILABLE for o in during)
            # Fail fast: the refused connection is reported in milliseconds
            # (the slack is for a busy machine), not after connect_timeout (3 s)
            # or the pool's timeout (5 s).
            assert max(o.seconds for o in during) < 2.0
            assert first_ok.ended - back < 5
            assert to_serving < 5
            after = [o for o in load.outcomes if o.started > first_ok.ended]
            assert after and all(o.code == grpc.StatusCode.OK for o in after)
    finally:
        server.stop(grace=1)


@pytest.mark.slow
@pytest.mark.exclusive  # refused within 0.5 s
def test_a_database_that_stops_answering_turns_health_not_serving(
    postgres_url: str, proxy: Proxy
) -> None:
    """No answer at all (not even a refusal): health must not keep its last
    SERVING while the ping waits forever (health.PING_TIMEOUT_S bounds it),
    and while it says NOT_SERVING calls are refused at once (UNAVAILABLE)
    instead of each waiting on the database until its deadline."""
    run_ids = seed_runs(postgres_url, count=3)
    proxied = make_url(postgres_url).set(port=proxy.port).render_as_string(hide_password=False)
    server = start_server(proxied, health_interval=0.2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            wait_health(channel, SERVING)
            # The next health ping (SELECT 1 on a pooled connection) gets
            # no answer.
            proxy.freeze()
            frozen = time.monotonic()
            wait_health(channel, NOT_SERVING, timeout=10)
            to_not_serving = time.monotonic() - frozen
            refused = time.monotonic()
            with pytest.raises(grpc.RpcError) as raised:
                stub.GetRun(pb.GetRunRequest(run_id=run_ids[0]), timeout=1)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - refused < 0.5
            proxy.thaw()
            back = time.monotonic()
            wait_health(channel, SERVING, timeout=10)
            to_serving = time.monotonic() - back
            assert stub.GetRun(pb.GetRunRequest(run_id=run_ids[0]), timeout=5).run.id
            print(
                f"\nfrozen database: health NOT_SERVING after {to_not_serving:.1f} s, "
                f"SERVING {to_serving:.2f} s after it answered again"
            )
            assert to_not_serving < 8
    finally:
        server.stop(grace=1)


@pytest.mark.exclusive  # bounds in wall-clock seconds
@pytest.mark.slow
def test_calls_in_flight_when_the_database_stops_answering_end(
    postgres_url: str, proxy: Proxy
) -> None:
    """Statements already sent when the database stops answering (it takes
    the bytes, the kernel acknowledges them, no answer comes): each call ends
    UNAVAILABLE within --db-timeout-seconds and the watchdog's slack
    (store/pg_watchdog.py), on the hot reads' libpq path and on the cursor's
    alike, rather than holding its thread until the database answers; and
    the server serves again once it does."""
    run_ids = seed_runs(postgres_url, count=3)
    proxied = make_url(postgres_url).set(port=proxy.port).render_as_string(hide_password=False)
    # Health's ping every 30 s: the calls reach the database, not a refusal.
    server = start_server(proxied, db_timeout_seconds=1.0, health_interval=30)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            wait_health(channel, SERVING)
            assert stub.GetRun(pb.GetRunRequest(run_id=run_ids[0]), timeout=5).run.id
            proxy.freeze()
            calls = {
                "GetRun": lambda: stub.GetRun(pb.GetRunRequest(run_id=run_ids[0])),
                "ListRuns": lambda: stub.ListRuns(pb.ListRunsRequest()),
                "DeleteRun": lambda: stub.DeleteRun(pb.DeleteRunRequest(run_id=run_ids[1])),
            }
            ended: dict[str, tuple[grpc.StatusCode, float]] = {}

            def call(name: str) -> None:
                started = time.monotonic()
                try:
                    calls[name]()
                    code = grpc.StatusCode.OK
                except grpc.RpcError as error:
                    code = error.code()
                ended[name] = (code, time.monotonic() - started)

            threads = [threading.Thread(target=call, args=(name,)) for name in calls]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=15)
            proxy.thaw()
            print(f"\ncalls in flight on a database that stopped answering: {ended}")
            assert set(ended) == set(calls), f"calls still held after 15 s: {ended}"
            for name, (code, seconds) in ended.items():
                assert code == grpc.StatusCode.UNAVAILABLE, (name, code)
                # The bound, the watchdog's slack, and a reconnect that may
                # follow a lost connection (connect_timeout 3 s), + margin.
                assert seconds < 1.0 + 2.0 + 3.0 + 2.0, (name, seconds)
            wait_health(channel, SERVING, timeout=10)
            assert stub.GetRun(pb.GetRunRequest(run_id=run_ids[1]), timeout=5).run.id
    finally:
        server.stop(grace=1)


@pytest.mark.exclusive  # bounds in wall-clock seconds
@pytest.mark.slow
@pytest.mark.parametrize("scope", ["write", "read"])
def test_commit_and_rollback_on_a_database_that_stops_answering_end(
    postgres_url: str, proxy: Proxy, scope: str
) -> None:
    """COMMIT (a write's end) and ROLLBACK (a read's) go without a cursor;
    they are bounded as statements are (pg_watchdog.WatchedConnection)."""
    proxied = make_url(postgres_url).set(port=proxy.port).render_as_string(hide_password=False)
    migrate(postgres_url)
    db = Database.from_url(proxied, pool_size=1, timeout_seconds=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(sa_exc.DBAPIError):
            with db.write() if scope == "write" else db.read() as conn:
                conn.execute(text("SELECT count(*) FROM runs")).scalar_one()
                proxy.freeze()
                started = time.monotonic()
        assert time.monotonic() - started < 1.0 + 2.0 + 2.5
    finally:
        proxy.thaw()
        db.dispose()


@pytest.mark.slow
@pytest.mark.exclusive  # refused within 0.5 s
def test_a_replica_that_stops_answering_leaves_deletes_to_the_primary(
    postgres_url: str, proxy: Proxy
) -> None:
    """--read-database-url through a proxy that stops answering, the primary
    fine: reads are refused at once once health says NOT_SERVING (both
    databases must answer), DeleteRun still runs on the primary, and reads
    come back by themselves with the replica."""
    run_ids = seed_runs(postgres_url, count=3)
    replica = make_url(postgres_url).set(port=proxy.port).render_as_string(hide_password=False)
    server = start_server(
        postgres_url, read_database_url=replica, health_interval=0.2, db_timeout_seconds=1.0
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            wait_health(channel, SERVING)
            assert stub.GetRun(pb.GetRunRequest(run_id=run_ids[0]), timeout=5).run.id
            proxy.freeze()
            frozen = time.monotonic()
            wait_health(channel, NOT_SERVING, timeout=10)
            to_not_serving = time.monotonic() - frozen
            refused = time.monotonic()
            with pytest.raises(grpc.RpcError) as raised:
                stub.GetRun(pb.GetRunRequest(run_id=run_ids[0]), timeout=2)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "replica" in (raised.value.details() or "")
            assert time.monotonic() - refused < 0.5
            stub.DeleteRun(pb.DeleteRunRequest(run_id=run_ids[1]), timeout=5)  # OK: the primary
            proxy.thaw()
            back = time.monotonic()
            wait_health(channel, SERVING, timeout=10)
            to_serving = time.monotonic() - back
            assert stub.GetRun(pb.GetRunRequest(run_id=run_ids[0]), timeout=5).run.id
            with pytest.raises(grpc.RpcError) as gone:
                stub.GetRun(pb.GetRunRequest(run_id=run_ids[1]), timeout=5)
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
            print(
                f"\nfrozen replica: health NOT_SERVING after {to_not_serving:.1f} s, "
                f"SERVING {to_serving:.2f} s after it answered again"
            )
            assert to_not_serving < 8 and to_serving < 5
    finally:
        server.stop(grace=1)


def _server_backends(admin: object, name: str) -> set[int]:
    with admin.connect() as c:  # type: ignore[attr-defined]
        return set(
            c.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = :n "
                    "AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            ).scalars()
        )


@pytest.mark.slow
def test_connections_killed_mid_load(postgres_url: str) -> None:
    run_ids = seed_runs(postgres_url)
    name = make_url(postgres_url).database or ""
    admin = create_engine(
        make_url(postgres_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    server = start_server(postgres_url, health_interval=0.2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            with Load(stub, run_ids) as load:
                load.wait_for(lambda o: o.code == grpc.StatusCode.OK, timeout=5)
                time.sleep(0.3)
                before = _server_backends(admin, name)
                killed = 0
                end = time.monotonic() + 1.5
                while time.monotonic() < end:
                    with admin.connect() as c:
                        killed += sum(
                            1
                            for _ in c.execute(
                                text(
                                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                                ),
                                {"n": name},
                            )
                        )
                    time.sleep(0.05)
                stopped = time.monotonic()
                first_ok = load.wait_for(lambda o: o.started >= stopped and o.code.name == "OK", 5)
                time.sleep(0.5)
            after = _server_backends(admin, name)
            print(
                f"\n{load.report('pg_terminate_backend')}; {killed} backends terminated; "
                f"first OK {first_ok.ended - stopped:.3f} s after the last kill"
            )
            load.assert_clean()
            assert before and not before & after, "the killed connections were replaced"
            late = [o for o in load.outcomes if o.started > first_ok.ended]
            assert late and all(o.code == grpc.StatusCode.OK for o in late)
            assert health_status(channel) == SERVING
    finally:
        server.stop(grace=1)
        admin.dispose()


LOCKER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
connection.execute("ROLLBACK")
"""


def _lock_sqlite(path: str) -> subprocess.Popen[str]:
    """Another process holding the write lock of the SQLite file at `path`
    until its stdin is closed (communicate)."""
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    return locker


@pytest.mark.slow
def test_sqlite_locked_by_another_process(sqlite_url: str) -> None:
    run_ids = seed_runs(sqlite_url, count=3)
    path = make_url(sqlite_url).database or ""
    server = start_server(sqlite_url, db_timeout_seconds=1.5)
    locker = _lock_sqlite(path)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            # WAL: readers do not wait for the writer's lock.
            assert stub.GetRun(pb.GetRunRequest(run_id=run_ids[0]), timeout=2).run.id
            assert len(stub.ListRuns(pb.ListRunsRequest(), timeout=2).runs) == 3

            timings = {}
            for label, timeout in (("no deadline", None), ("deadline 0.8 s", 0.8)):
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as raised:
                    stub.DeleteRun(pb.DeleteRunRequest(run_id=run_ids[0]), timeout=timeout)
                timings[label] = time.monotonic() - started
                # The database is up, the lock wait ran out (configuration.md).
                assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, label
                # The connection is back in the pool as the answer arrives,
                # though the lock is still held.
                wait_pool_idle(server, timeout=0.2)
            print(f"\nDeleteRun on a locked SQLite (--db-timeout-seconds 1.5): {timings}")
            # Bounded by --db-timeout-seconds, or sooner by the caller's deadline.
            assert timings["no deadline"] < 3.0
            assert timings["deadline 0.8 s"] < 0.8
            assert health_status(channel) == SERVING  # reads still work

            locker.communicate("", timeout=5)
            stub.DeleteRun(pb.DeleteRunRequest(run_id=run_ids[0]), timeout=5)
            with pytest.raises(grpc.RpcError) as raised:
                stub.GetRun(pb.GetRunRequest(run_id=run_ids[0]), timeout=2)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        if locker.poll() is None:
            locker.kill()
        server.stop(grace=1)


@pytest.mark.exclusive  # bounds in wall-clock seconds
@pytest.mark.slow
def test_writes_waiting_for_a_lock_leave_threads_for_reads(sqlite_url: str) -> None:
    """Eight DeleteRuns wait for a write lock another process holds, on a
    server of 4 RPC threads: at most half of the threads wait with them (the
    others are refused: RESOURCE_EXHAUSTED, retry), and a read is answered
    meanwhile, not after the writers' --db-timeout-seconds."""
    run_ids = seed_runs(sqlite_url, count=9)
    path = make_url(sqlite_url).database or ""
    server = start_server(sqlite_url, db_timeout_seconds=5, max_workers=4)
    locker = _lock_sqlite(path)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            codes: list[grpc.StatusCode] = []

            def delete(run_id: str) -> None:
                try:
                    stub.DeleteRun(pb.DeleteRunRequest(run_id=run_id), timeout=15)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())

            deletes = [threading.Thread(target=delete, args=(r,)) for r in run_ids[1:]]
            for thread in deletes:
                thread.start()
            time.sleep(0.5)  # every delete has arrived
            started = time.monotonic()
            assert stub.GetRun(pb.GetRunRequest(run_id=run_ids[0]), timeout=10).run.id
            read = time.monotonic() - started
            for thread in deletes:
                thread.join(timeout=20)
        print(f"\nGetRun while 8 deletes wait for a lock: {read:.2f} s; deletes: {codes}")
        assert read < 2.0
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 4
        assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
    finally:
        locker.communicate("", timeout=5)
        server.stop(grace=1)


@pytest.mark.slow
def test_a_sqlite_file_replaced_or_removed_while_serving(sqlite_url: str) -> None:
    """A file moved over the live path (a restore) or removed: reads kept
    coming from the old file and writes went to the new one (or both to a
    deleted inode), with health SERVING. Now health is NOT_SERVING and calls
    UNAVAILABLE, saying why, until a restart serves the new file (whose
    path still holds the old file's -wal: it cannot be opened safely)."""
    run_ids = seed_runs(sqlite_url, count=3)
    path = Path(make_url(sqlite_url).database or "")
    for replace in (True, False):
        server = start_server(sqlite_url, health_interval=0.2)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = RunServiceStub(channel)
                wait_health(channel, SERVING)
                assert stub.GetRun(pb.GetRunRequest(run_id=run_ids[0]), timeout=5).run.id
                if replace:
                    copy = path.with_name("copy.db")
                    shutil.copy(path, copy)
                    os.replace(copy, path)
                else:
                    path.unlink()
                wait_health(channel, NOT_SERVING, timeout=5)
                with pytest.raises(grpc.RpcError) as raised:
                    stub.DeleteRun(pb.DeleteRunRequest(run_id=run_ids[1]), timeout=5)
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
                with pytest.raises(grpc.RpcError) as raised:
                    stub.GetRun(pb.GetRunRequest(run_id=run_ids[0]), timeout=5)
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
                # The call says why (it said "not answering"), as the log does.
                why = "was replaced while serving; restart" if replace else "is gone"
                assert f"the database file {path} {why}" in (raised.value.details() or "")
        finally:
            server.stop(grace=1)
        if replace:  # restarted, the new file serves
            server = start_server(sqlite_url, health_interval=0.2)
            try:
                with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                    wait_health(channel, SERVING)
                    stub = RunServiceStub(channel)
                    assert stub.GetRun(pb.GetRunRequest(run_id=run_ids[0]), timeout=5).run.id
            finally:
                server.stop(grace=1)


def test_a_write_bound_by_its_deadline_leaves_no_short_busy_timeout_behind(
    sqlite_url: str,
) -> None:
    """A write lowers its connection's busy_timeout to what its caller's
    deadline leaves; the next call on that pooled connection, a one-statement
    read (no BEGIN) included, gets the server's full bound back."""
    migrate(sqlite_url)
    db = Database.from_url(sqlite_url, pool_size=1, timeout_seconds=3.0)  # one connection
    try:
        deadline.set_remaining(0.05)
        with db.write() as conn:
            lowered = conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
        deadline.clear()
        assert 1 <= lowered <= 50, lowered
        with db.read_one() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 3000
        with db.read() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 3000
    finally:
        deadline.clear()
        db.dispose()
