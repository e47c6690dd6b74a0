"""Single reads on a connection each thread keeps (store/held.py), on SQLite
and PostgreSQL: never a stale answer, never a transaction carried over,
bounded, closed, replaced after the database dropped it."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import StaticPool

from factories import add_run, add_workflow
from spur_runs.store import runs
from spur_runs.store.db import Database
from spur_runs.store.engine import create_db_engine
from spur_runs.store.held import HeldConnections
from spur_runs.store.models import RunStatus


@pytest.fixture
def held_db(migrated_url: str) -> Iterator[Database]:
    database = Database.from_url(migrated_url, pool_size=4)
    yield database
    database.dispose()


def _status(db: Database, run_id: str) -> RunStatus:
    with db.read_one() as conn:
        return runs.get_run(conn, run_id, single_statement=True).row.status


def _held(db: Database) -> HeldConnections:
    held = db._held  # noqa: SLF001 - what these tests are about
    assert held is not None
    return held


def _set_status(db: Database, run_id: str, status: str) -> None:
    """Commit a status change from another process, as PySpur would."""
    script = (
        "import sys\n"
        "from sqlalchemy import create_engine, text\n"
        "engine = create_engine(sys.argv[1])\n"
        "with engine.begin() as c:\n"
        "    c.execute(text('UPDATE runs SET status = :s WHERE id = :i'),"
        " {'s': sys.argv[3], 'i': sys.argv[2]})\n"
        "engine.dispose()\n"
    )
    url = db.engine.url.render_as_string(hide_password=False)
    subprocess.run([sys.executable, "-c", script, url, run_id, status], check=True)


def test_a_commit_by_another_process_is_seen_by_the_next_read(held_db: Database) -> None:
    """PySpur writes from its own process: the kept connection's next read
    must see it (no snapshot lives between reads)."""
    with held_db.write() as s:
        run_id = add_run(s, add_workflow(s), status=RunStatus.RUNNING)
    assert _status(held_db, run_id) is RunStatus.RUNNING
    with held_db.read_one() as first:
        pass
    _set_status(held_db, run_id, "COMPLETED")
    with held_db.read_one() as again:
        assert again is first  # the same kept connection...
    assert _status(held_db, run_id) is RunStatus.COMPLETED  # ...and a fresh answer


def test_reads_keep_one_connection_out_of_the_pool(held_db: Database) -> None:
    with held_db.read_one() as first:
        pass
    with held_db.read_one() as second:
        assert held_db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert first is second
    assert len(_held(held_db)) == 1


def test_a_transaction_begun_behind_sqlalchemys_back_is_not_carried_over(
    held_db: Database,
) -> None:
    """A BEGIN left open would pin a snapshot for every later read of the
    thread: the connection is closed instead, and the next read sees the
    commit made since."""
    with held_db.write() as s:
        run_id = add_run(s, add_workflow(s), status=RunStatus.RUNNING)
    with held_db.read_one() as conn:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        dbapi.cursor().execute("BEGIN")
        dbapi.cursor().execute("SELECT count(*) FROM runs").fetchall()
    _set_status(held_db, run_id, "FAILED")
    assert conn.closed
    assert _status(held_db, run_id) is RunStatus.FAILED


def test_a_transaction_sqlalchemy_began_is_rolled_back(held_db: Database) -> None:
    with held_db.write() as s:
        run_id = add_run(s, add_workflow(s), status=RunStatus.RUNNING)
    with held_db.read_one() as conn:
        conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql("SELECT count(*) FROM runs").all()
    _set_status(held_db, run_id, "FAILED")
    assert not conn.in_transaction()
    assert _status(held_db, run_id) is RunStatus.FAILED


def test_sqlalchemys_own_statements_leave_no_transaction(held_db: Database) -> None:
    """VersionCache.load runs a SQLAlchemy statement in read_one: autobegin,
    rolled back at the end, and the connection is kept."""
    with held_db.read_one() as conn:
        conn.execute(text("SELECT 1")).all()
        assert conn.in_transaction()
    assert not conn.closed
    assert not conn.in_transaction()
    with held_db.read_one() as again:
        assert again is conn


def test_a_database_error_closes_the_connection(held_db: Database) -> None:
    with pytest.raises(sa_exc.DBAPIError):
        with held_db.read_one() as conn:
            conn.exec_driver_sql("SELECT * FROM no_such_table")
    assert conn.closed
    with held_db.read_one() as again:
        assert again is not conn
        assert again.exec_driver_sql("SELECT 1").scalar() == 1


def test_beyond_the_limit_reads_use_the_pool(held_db: Database) -> None:
    """At most the pool's size (4 here) are kept: a fifth thread reads on a
    pooled connection, and every thread's read still answers."""
    inside = threading.Barrier(6)
    done = threading.Event()
    seen: list[bool] = []

    def read() -> None:
        with held_db.read_one() as conn:
            seen.append(conn.get_execution_options().get("spur_runs_held", False))
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
            inside.wait(timeout=10)
            done.wait(timeout=10)  # every thread alive while the count is read

    threads = [threading.Thread(target=read) for _ in range(5)]
    for thread in threads:
        thread.start()
    inside.wait(timeout=10)
    assert len(_held(held_db)) == 4
    done.set()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(seen) == [False, True, True, True, True]


def test_a_threads_connection_closes_when_the_thread_ends(held_db: Database) -> None:
    kept: list[object] = []

    def read() -> None:
        with held_db.read_one() as conn:
            kept.append(conn)

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    gc.collect()
    assert len(_held(held_db)) == 0
    assert kept[0].closed  # type: ignore[attr-defined]


def test_dispose_closes_every_kept_connection(held_db: Database) -> None:
    with held_db.read_one() as conn:
        pass
    held_db.dispose()
    assert conn.closed
    assert len(_held(held_db)) == 0
    with held_db.read_one() as again:  # usable again, as a disposed engine is
        assert again.exec_driver_sql("SELECT 1").scalar() == 1


def test_dispose_leaves_a_read_under_way_to_finish(held_db: Database) -> None:
    """Closing a connection under a running statement is unsafe (psycopg
    frees its libpq connection): dispose leaves it to its thread, which
    closes it when the read ends."""
    inside, release = threading.Event(), threading.Event()
    seen: list[object] = []

    def read() -> None:
        with held_db.read_one() as conn:
            inside.set()
            release.wait(timeout=10)
            seen.append(conn.exec_driver_sql("SELECT 1").scalar())
        seen.append(conn.closed)

    thread = threading.Thread(target=read)
    thread.start()
    assert inside.wait(timeout=10)
    held_db.dispose()
    release.set()
    thread.join(timeout=10)
    assert seen == [1, True]


def test_dispose_as_a_read_ends_leaves_it_to_its_thread(held_db: Database) -> None:
    """A read ends with a check of its connection (held.py's _end: the
    rollback of SQLAlchemy's transaction, the DBAPI connection's state),
    which uses the connection as the statement did: dispose meanwhile (a
    drain's end, with calls still running) must leave it to its thread, as
    during the statement. It closed it under the check, and the read, which
    had its answer, failed ("This Connection is closed")."""
    held = _held(held_db)
    closed_meanwhile: list[int] = []

    def close_all_now(_conn: Connection) -> None:  # the check has begun
        if not closed_meanwhile:
            closed_meanwhile.append(len(held))
            held.close_all()

    event.listen(held._engine, "rollback", close_all_now)  # noqa: SLF001
    with held_db.read_one() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1  # autobegins
    assert closed_meanwhile == [1]
    assert conn.closed  # by its thread, once the read had ended
    assert len(held) == 0


def test_a_connection_being_made_holds_up_no_other_thread(tmp_path: Path) -> None:
    """Making a thread's connection waits for the database: up to
    connect_timeout (2 s) when it does not answer. Meanwhile another
    thread's new connection, and mark_stale() (a failed call's, the health
    ping's), go ahead. They waited behind it, under held.py's lock: in a
    partition (test_partition.py) a call then held its RPC thread 6 s, 2 s
    for each connection attempt queued before its own."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'held.db'}", pool_size=4)
    held = HeldConnections(engine, 4)
    connecting, release = threading.Event(), threading.Event()
    stalled: list[bool] = []

    def connect(*_args: Any) -> None:  # None: SQLAlchemy's own connect follows
        if not stalled:  # the first attempt only: a database slow to answer
            stalled.append(True)
            connecting.set()
            release.wait(timeout=10)

    event.listen(engine, "do_connect", connect)

    def read() -> None:
        with held.scope() as conn:
            assert conn is not None
            conn.exec_driver_sql("SELECT 1").scalar()

    answered: list[float] = []

    def meanwhile() -> None:
        began = time.monotonic()
        held.mark_stale()
        read()  # a connection of its own, at once
        answered.append(time.monotonic() - began)

    slow, other = threading.Thread(target=read), threading.Thread(target=meanwhile)
    try:
        slow.start()
        assert connecting.wait(timeout=10)
        other.start()
        other.join(timeout=2)
        assert not other.is_alive()
        assert len(answered) == 1 and answered[0] < 1
    finally:
        release.set()
        slow.join(timeout=10)
        other.join(timeout=10)
        held.close_all()
        engine.dispose()
    assert not slow.is_alive()
    gc.collect()  # both threads have ended: their connections are closed
    assert len(held) == 0


def test_after_a_dropped_connection_every_thread_gets_a_new_one(postgres_url: str) -> None:
    """A PostgreSQL restart or failover drops every connection: the read
    that meets it fails (as a pooled one would, UNAVAILABLE to a client),
    and the other threads' kept connections are replaced before they are
    used, instead of each failing a call of its own."""
    held_db = Database.from_url(postgres_url, pool_size=4)
    try:
        _every_thread_gets_a_new_one(held_db, postgres_url)
    finally:
        held_db.dispose()


def _every_thread_gets_a_new_one(held_db: Database, url: str) -> None:
    ready, go = threading.Event(), threading.Event()
    outcome: list[object] = []

    def other_thread() -> None:
        with held_db.read_one() as conn:
            conn.exec_driver_sql("SELECT 1").scalar()
        ready.set()
        go.wait(timeout=10)
        try:
            with held_db.read_one() as conn:
                outcome.append(conn.exec_driver_sql("SELECT 1").scalar())
        except Exception as error:  # noqa: BLE001 - recorded for the assertion
            outcome.append(error)

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert ready.wait(timeout=10)
    with held_db.read_one() as conn:
        conn.exec_driver_sql("SELECT 1").scalar()
    killer = create_engine(url)
    with killer.connect() as kill:
        kill.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).all()
    killer.dispose()
    with pytest.raises(sa_exc.DBAPIError) as raised:
        with held_db.read_one() as conn:
            conn.exec_driver_sql("SELECT 1").scalar()
    assert raised.value.connection_invalidated
    go.set()
    thread.join(timeout=10)
    assert outcome == [1]


def test_a_pool_of_one_shared_connection_keeps_nothing() -> None:
    """StaticPool (one connection, as for an in-memory database): a kept
    connection would take the database's only one."""
    database = Database(create_engine("sqlite://", poolclass=StaticPool))
    try:
        assert database._held is None  # noqa: SLF001
        with database.read_one() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    finally:
        database.dispose()
