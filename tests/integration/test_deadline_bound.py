"""A caller's deadline shorter than --db-timeout-seconds bounds PostgreSQL's
single reads in the same round trip as the read (store/libpq.py): the bound
holds, costs no extra round trip, and leaves nothing on the session."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from factories import add_run, add_workflow
from locks import runs_locked
from pg_wire import RoundTripCounter, counting_round_trips
from servers import wait_until
from spur_runs import deadline
from spur_runs.store import hot, libpq, runs
from spur_runs.store.db import Database
from spur_runs.store.models import RunStatus, TaskStatus
from spur_runs.store.statements import RunFilter

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

T0 = datetime(2026, 11, 2, 9, 0, 0)
ADMIN = "host=127.0.0.1 user=postgres dbname=test"
SERVER_BOUND_S = 60.0  # --db-timeout-seconds: far above the callers' deadlines here


@pytest.fixture
def run_id(migrated_url: str) -> str:
    db = Database.from_url(migrated_url, pool_size=1)
    try:
        with db.write() as s:
            workflow = add_workflow(s)
            for minutes in range(3):
                add_run(s, workflow, start_time=T0 - timedelta(minutes=minutes + 1))
            return add_run(
                s,
                workflow,
                start_time=T0,
                tasks=[("a", TaskStatus.COMPLETED), ("b", TaskStatus.RUNNING)],
            )
    finally:
        db.dispose()


@pytest.fixture
def counter(migrated_url: str) -> Iterator[RoundTripCounter]:
    with counting_round_trips(migrated_url) as counting:
        yield counting


@pytest.fixture(params=["kept", "pooled"])
def db(
    request: pytest.FixtureRequest, counter: RoundTripCounter, migrated_url: str
) -> Iterator[Database]:
    """Through the counter; read_one on the connection a thread keeps
    (held.py) or on a pooled one."""
    held_limit = None if request.param == "kept" else 0
    database = Database.from_url(
        counter.url_for(migrated_url),
        pool_size=1,
        timeout_seconds=SERVER_BOUND_S,
        held_limit=held_limit,
    )
    yield database
    database.dispose()


@pytest.fixture
def within() -> Iterator[Any]:
    """Set the current call's deadline, as rpc.limits.DeadlineHook does."""
    yield deadline.set_remaining
    deadline.clear()


def _get_run(conn: Connection, run_id: str) -> Any:
    return runs.get_run(conn, run_id, single_statement=True)


def _failed_runs_page(conn: Connection, run_id: str) -> Any:
    # A status filter: on PostgreSQL the page also reads the statuses the
    # database's type has (runs._filter_params).
    filters = RunFilter(statuses=frozenset({RunStatus.RUNNING}))
    return runs.list_runs_in_one_statement(conn, limit=5, filters=filters)


@pytest.mark.parametrize("read", [_get_run, _failed_runs_page], ids=["GetRun", "ListRuns"])
def test_a_short_deadline_costs_no_round_trip(
    db: Database, counter: RoundTripCounter, run_id: str, within: Any, read: Any
) -> None:
    """Before, such a read began a transaction for the bound: BEGIN, the
    bound, the read, ROLLBACK: four round trips instead of one."""
    with db.read_one() as conn:
        expected = read(conn, run_id)  # prepares what it runs (a round trip each)
    trips = []
    for remaining in (None, 5.0, 5.0):
        if remaining is not None:
            within(remaining)
        before = counter.round_trips
        with db.read_one() as conn:
            assert read(conn, run_id) == expected
        trips.append(counter.round_trips - before)
    assert trips == [1, 1, 1]
    deadline.clear()
    with db.read_one() as conn:  # the session's bound is the server's again
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "1min"


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "first-read"])
def test_a_short_deadline_still_cancels_the_read(
    db: Database, migrated_url: str, run_id: str, within: Any, prepared: bool
) -> None:
    """Also the first read on a connection, whose statement is prepared in
    the same pipeline: parsing it waits for the table's lock too."""
    if prepared:
        with db.read_one() as conn:
            _get_run(conn, run_id)
    with runs_locked(migrated_url):
        within(0.5)
        started = time.monotonic()
        with pytest.raises(sa_exc.OperationalError) as raised, db.read_one() as conn:
            _get_run(conn, run_id)
        took = time.monotonic() - started
    assert raised.value.orig is not None and raised.value.orig.sqlstate == "57014"  # type: ignore[attr-defined]
    assert 0.4 < took < 5, took  # the deadline's bound, not the server's 60 s
    deadline.clear()
    with db.read_one() as conn:  # the connection serves the next read, unbounded again
        assert _get_run(conn, run_id).row.id == run_id
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "1min"


def test_unnamed_and_deallocated_statements_are_bounded_too(
    db: Database, counter: RoundTripCounter, migrated_url: str, run_id: str, within: Any
) -> None:
    """PgBouncer in transaction mode (prepare_threshold None: unnamed), and a
    prepared statement gone from the connection (prepared again, then run)."""
    with db.read_one() as conn:
        expected = _get_run(conn, run_id)
        conn.exec_driver_sql("DEALLOCATE ALL")
    within(5.0)
    with db.read_one() as conn:
        assert _get_run(conn, run_id) == expected  # prepared again
    with db.read_one() as conn:
        dbapi: Any = conn.connection.dbapi_connection
        dbapi.prepare_threshold = None
        try:
            before = counter.round_trips
            assert _get_run(conn, run_id) == expected
            assert counter.round_trips - before == 1
            with runs_locked(migrated_url):
                within(0.5)
                with pytest.raises(sa_exc.OperationalError) as raised:
                    _get_run(conn, run_id)
            assert raised.value.orig.sqlstate == "57014"  # type: ignore[union-attr]
        finally:
            dbapi.prepare_threshold = 5


def test_a_statement_sent_by_the_cursor_is_bounded_too(
    db: Database, migrated_url: str, run_id: str, within: Any
) -> None:
    """A listener that rewrites the statement (a SQL commenter) sends it
    through the cursor instead of libpq: bounded there by a transaction."""

    def rewrite(conn: Any, cursor: Any, sql: str, params: Any, *_rest: Any) -> tuple[str, Any]:
        return "/* rewritten */ " + sql, params

    event.listen(db.engine, "before_cursor_execute", rewrite, retval=True)
    try:
        with runs_locked(migrated_url):
            within(0.5)
            started = time.monotonic()
            with pytest.raises(sa_exc.OperationalError) as raised, db.read_one() as conn:
                _get_run(conn, run_id)
            assert time.monotonic() - started < 5
        assert raised.value.orig.sqlstate == "57014"  # type: ignore[union-attr]
        deadline.clear()
        with db.read_one() as conn:
            assert _get_run(conn, run_id).row.id == run_id
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "1min"
    finally:
        event.remove(db.engine, "before_cursor_execute", rewrite)


def test_a_connection_lost_in_the_pipeline_is_replaced(
    db: Database, migrated_url: str, run_id: str, within: Any
) -> None:
    """The backend ends while the bounded read waits (a failover, an
    operator's pg_terminate_backend): the read fails as a lost connection,
    and the next read gets a working one."""
    with db.read_one() as conn:
        expected = _get_run(conn, run_id)
    with runs_locked(migrated_url) as waiting:
        failed: list[BaseException] = []

        def read() -> None:
            # Set in the reader's thread: a thread starts without the
            # caller's context (deadline.py's ContextVar), and an unbounded
            # read would not go through the pipeline at all.
            within(30.0)
            try:
                with db.read_one() as conn:
                    _get_run(conn, run_id)
            except BaseException as error:  # noqa: BLE001 - recorded for the assertion
                failed.append(error)

        reader = threading.Thread(target=read)
        reader.start()
        wait_until(lambda: waiting() == 1, "the read waits for the lock", timeout=10)
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND wait_event_type = 'Lock'",
                [make_url(migrated_url).database],
            ).fetchall()
        assert ended == [(True,)]
        reader.join(10)
    assert not reader.is_alive()
    assert len(failed) == 1 and isinstance(failed[0], sa_exc.OperationalError)
    assert failed[0].connection_invalidated  # type: ignore[attr-defined]
    deadline.clear()
    with db.read_one() as conn:
        assert _get_run(conn, run_id) == expected


def test_a_read_larger_than_the_socket_takes_is_sent_whole(migrated_url: str, within: Any) -> None:
    """psycopg's connections are non-blocking: the pipeline's flush leaves in
    libpq what the socket did not take, and the server waits for the rest
    (the Sync) before it answers. Waiting only to read, the read hung until
    the watchdog cut it (UNAVAILABLE). 8 MB: more than loopback's buffers
    take at once; a distant server's window fills with far less."""
    db = Database.from_url(migrated_url, pool_size=1, timeout_seconds=SERVER_BOUND_S)
    sql = "SELECT length(%(s)s::text)"
    try:
        within(3.0)
        with db.read_one() as conn:
            rows = hot.fetch(conn, sql, {"s": "x" * 8_000_000}, libpq.Prepared(sql))
        assert rows == [(8_000_000,)]
    finally:
        db.dispose()
