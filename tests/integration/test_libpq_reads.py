"""PostgreSQL's hot reads through libpq (store/libpq.py): prepared in
autocommit, prepared again when gone, unnamed in a transaction, and the
same answers, snapshots and errors as the cursor's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, event, text
from sqlalchemy import exc as sa_exc

from factories import add_run, add_workflow
from spur_runs.store import runs
from spur_runs.store.db import Database
from spur_runs.store.models import RunStatus, TaskStatus

T0 = datetime(2026, 11, 2, 9, 0, 0, 250_000)

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
def one(migrated_url: str) -> Iterator[Database]:
    """A Database of one pooled connection (each read() or write() gets the
    same one), and one kept for single reads (read_one: store/held.py)."""
    database = Database.from_url(migrated_url, pool_size=1)
    yield database
    database.dispose()


@pytest.fixture
def run_id(one: Database) -> str:
    """The newest of 7 runs (a list page of 5 then ends within them)."""
    with one.write() as s:
        workflow = add_workflow(s)
        for minutes in range(6):
            add_run(s, workflow, start_time=T0 - timedelta(minutes=minutes + 1))
        return add_run(
            s,
            workflow,
            start_time=T0,
            tasks=[("a", TaskStatus.COMPLETED), ("b", TaskStatus.RUNNING)],
            initial_inputs={"q": "?"},
        )


def ours(conn: Connection) -> dict[str, int]:
    """This connection's prepared statements of ours, with how often each ran."""
    rows = conn.exec_driver_sql(
        "SELECT name, generic_plans + custom_plans FROM pg_prepared_statements"
        " WHERE name LIKE 'spur_runs_%%'"
    )
    return {name: int(count) for name, count in rows}


def test_a_single_read_runs_a_prepared_statement_of_ours(one: Database, run_id: str) -> None:
    with one.read_one() as conn:
        first = runs.get_run(conn, run_id, single_statement=True)
        (name, count), *others = ours(conn).items()
        assert not others and count == 1
        again = runs.get_run(conn, run_id, single_statement=True)
        assert ours(conn) == {name: 2}  # the same statement ran again
    assert again == first
    assert [t.status for t in first.tasks] == [TaskStatus.COMPLETED, TaskStatus.RUNNING]
    assert first.row.initial_inputs == {"q": "?"} and first.row.start_time == T0


def test_the_reads_answer_what_the_cursor_answers(one: Database, run_id: str) -> None:
    """A list page and a run read through libpq, then through the cursor (a
    listener that rewrites the statement sends it there), are equal."""
    with one.read_one() as conn:
        fast_run = runs.get_run(conn, run_id, single_statement=True)
        fast_page = runs.list_runs_in_one_statement(conn, limit=5, filters=runs.NO_FILTER)

    def rewrite(conn: Any, cursor: Any, sql: str, params: Any, *_rest: Any) -> tuple[str, Any]:
        return "/* rewritten */ " + sql, params

    event.listen(one.engine, "before_cursor_execute", rewrite, retval=True)
    try:
        with one.read_one() as conn:
            conn.exec_driver_sql("DEALLOCATE ALL")
            slow_run = runs.get_run(conn, run_id, single_statement=True)
            slow_page = runs.list_runs_in_one_statement(conn, limit=5, filters=runs.NO_FILTER)
            assert ours(conn) == {}  # none of ours: the cursor sent them
    finally:
        event.remove(one.engine, "before_cursor_execute", rewrite)
    assert fast_page is not None and len(fast_page[0]) == 5 and fast_page[1]
    assert slow_run == fast_run and slow_page == fast_page


def test_a_statement_deallocated_under_us_is_prepared_again(one: Database, run_id: str) -> None:
    """A statement that is gone from the connection (DEALLOCATE ALL, which
    psycopg itself sends at a rollback once it has prepared a query of its
    own) is prepared again by the next single read; a read in a
    transaction uses none."""
    with one.read_one() as conn:
        expected = runs.get_run(conn, run_id, single_statement=True)
        assert list(ours(conn).values()) == [1]
        conn.exec_driver_sql("DEALLOCATE ALL")
    with one.read_one() as conn:
        assert ours(conn) == {}  # gone, though we prepared it on this connection
        assert runs.get_run(conn, run_id, single_statement=True) == expected
        assert list(ours(conn).values()) == [1]
    with one.read() as conn:
        for _ in range(6):  # psycopg prepares this one; the rollback deallocates all
            conn.exec_driver_sql("SELECT 1").scalar_one()
    with one.read() as conn:
        assert runs.get_run(conn, run_id) == expected  # in the transaction: unnamed
        assert ours(conn) == {}


def test_a_read_keeps_its_snapshot(one: Database, migrated_url: str, run_id: str) -> None:
    """Database.read's first statement begins its REPEATABLE READ transaction
    (the cursor sends BEGIN); the next, sent through libpq, runs in it and
    does not see a change committed in between."""
    other = Database.from_url(migrated_url, pool_size=1)
    try:
        with one.read() as conn:
            before = runs.get_run(conn, run_id)
            with other.write() as s:
                s.execute(text("UPDATE runs SET status = 'FAILED' WHERE id = :r"), {"r": run_id})
            assert conn.connection.dbapi_connection.pgconn.transaction_status == (  # type: ignore[union-attr]
                psycopg.pq.TransactionStatus.INTRANS
            )
            assert runs.get_run(conn, run_id) == before
        with one.read_one() as conn:
            assert runs.get_run(conn, run_id, single_statement=True).row.status is RunStatus.FAILED
    finally:
        other.dispose()


def test_no_prepared_statement_where_psycopg_is_told_to_prepare_none(
    one: Database, run_id: str
) -> None:
    """prepare_threshold None (PgBouncer in transaction mode) holds for our
    statements too."""
    with one.read_one() as conn:
        dbapi: Any = conn.connection.dbapi_connection
        dbapi.prepare_threshold = None
        try:
            for _ in range(3):
                assert runs.get_run(conn, run_id, single_statement=True).row.id == run_id
            assert ours(conn) == {}
        finally:
            dbapi.prepare_threshold = 5


@pytest.mark.parametrize(("query", "threshold"), [("none", None), ("None", None), ("0", 0)])
def test_the_urls_prepare_threshold_is_psycopgs(
    migrated_url: str, run_id: str, query: str, threshold: int | None
) -> None:
    """`?prepare_threshold=none` in the database URL (PgBouncer in
    transaction mode, docs/production.md) reaches psycopg as None, not as
    text (which failed every statement of psycopg's cursor with a TypeError),
    and libpq's reads then prepare nothing either; a number is a number."""
    db = Database.from_url(f"{migrated_url}?prepare_threshold={query}", pool_size=1)
    try:
        for scope in (db.read_one, db.read):
            with scope() as conn:
                dbapi: Any = conn.connection.dbapi_connection
                assert dbapi.prepare_threshold == threshold
                for _ in range(7):  # past psycopg's default threshold, 5
                    assert runs.get_run(conn, run_id, single_statement=True).row.id == run_id
                    assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 7
                prepared = conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements")
                assert (prepared.scalar_one() == 0) is (threshold is None)
    finally:
        db.dispose()


@pytest.mark.parametrize("begun", [False, True], ids=["autocommit", "in-a-transaction"])
def test_a_failed_statement_is_sqlalchemys_wrapper_of_psycopgs_error(
    database_url: str, begun: bool
) -> None:
    """No runs table (an unmigrated database): prepared in autocommit or
    sent unnamed in a transaction, the error is psycopg's class for its
    SQLSTATE, wrapped as SQLAlchemy's execution wraps it (rpc/status.py maps
    those), and the connection serves the next read."""
    db = Database.from_url(database_url, pool_size=1)
    try:
        scope = db.read if begun else db.read_one
        with pytest.raises(sa_exc.ProgrammingError) as raised, scope() as conn:
            if begun:
                conn.exec_driver_sql("SELECT 1")  # the transaction has begun
            runs.get_run(conn, "R1", single_statement=True)
        assert isinstance(raised.value.orig, psycopg.errors.UndefinedTable)
        assert raised.value.orig.sqlstate == "42P01"
        with db.read_one() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
    finally:
        db.dispose()
