"""The hot reads on the DBAPI cursor (store/hot.py) keep what SQLAlchemy's
execution gave them: listeners, bind and result types, wrapped errors."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import sqlite

from factories import add_run, add_workflow
from spur_runs.errors import DataLoss
from spur_runs.store import runs
from spur_runs.store.db import Database
from spur_runs.store.models import RunStatus, TaskStatus
from spur_runs.store.statements import (
    NO_FILTER,
    TASKS_OF_RUN,
    page_queries,
    run_with_tasks,
)

T0 = datetime(2026, 11, 2, 9, 0, 0, 250_000)


def test_a_hot_read_decodes_what_sqlalchemy_would(db: Database) -> None:
    with db.write() as s:
        run_id = add_run(
            s,
            add_workflow(s),
            status=RunStatus.PAUSED,
            start_time=T0,
            end_time=T0 + timedelta(seconds=3),
            tasks=[("llm", TaskStatus.COMPLETED), ("approval", TaskStatus.PAUSED)],
            initial_inputs={"input_node": {}},
        )
    with db.read() as conn:
        expected = conn.execute(runs.runs_select().where(text("runs.id = :r")), {"r": run_id}).one()
        record = runs.get_run(conn, run_id)
    assert tuple(record.row) == tuple(expected)  # the same values, types and all
    assert record.row.status is RunStatus.PAUSED
    assert record.row.start_time == T0
    assert record.row.initial_inputs == {"input_node": {}}
    assert [t.status for t in record.tasks] == [TaskStatus.COMPLETED, TaskStatus.PAUSED]
    assert record.paused_nodes == frozenset({record.tasks[1].node_id})


def test_a_hot_read_runs_the_cursor_listeners(db: Database) -> None:
    """db.py arms SQLite's watchdog there; tests and bench/run.py count
    statements there."""
    with db.write() as s:
        run_id = add_run(s, add_workflow(s), start_time=T0)
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        seen.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        with db.read() as conn:
            runs.list_runs(conn, limit=5)
            runs.get_run(conn, run_id)
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    statements = [s for s, _ in seen if s.lstrip().upper().startswith(("SELECT", "WITH"))]
    assert len(statements) >= 3  # the page, its tasks, the run with its tasks
    assert any(run_id in (p.values() if isinstance(p, dict) else p) for _, p in seen)


def test_a_driver_error_of_a_hot_read_is_sqlalchemys(sqlite_url: str) -> None:
    """rpc/status.py maps SQLAlchemy's wrappers; a raw sqlite3 error would
    have been INTERNAL for any cause."""
    db = Database.from_url(sqlite_url)  # no migration: no runs table
    try:
        with pytest.raises(sa_exc.OperationalError, match="no such table"), db.read() as conn:
            runs.get_run(conn, "R1")
    finally:
        db.dispose()


def test_a_task_page_knows_the_pauses_beyond_it(db: Database) -> None:
    """GetRunTasks reads the paused tasks with one more statement only when
    the page does not hold all of the run's tasks."""
    with db.write() as s:
        run_id = add_run(
            s,
            add_workflow(s),
            status=RunStatus.PAUSED,
            tasks=[("summarize", TaskStatus.PENDING), ("approval", TaskStatus.PAUSED)],
        )
    with db.read() as conn:
        first, paused_first, more = runs.list_tasks(conn, run_id, limit=1)
        whole, paused_whole, rest = runs.list_tasks(conn, run_id, limit=10)
        after, paused_after, _ = runs.list_tasks(
            conn, run_id, limit=10, after_intid=first[0]._intid
        )
    assert [t.node_id for t in first] == ["summarize"] and more
    assert [t.node_id for t in whole] == ["summarize", "approval"] and not rest
    assert [t.node_id for t in after] == ["approval"]
    assert paused_first == paused_whole == paused_after == frozenset({"approval"})


def test_packed_reads_answer_what_sqlalchemy_answers(db: Database) -> None:
    """On SQLite the list's, GetRun's and the task pages' statements answer
    their rows packed in one JSON array (hot.Statement): values, types and
    order must stay those of SQLAlchemy's execution of the same select, on
    both databases (PostgreSQL does not pack: the same test holds there)."""
    stamps = [T0 + timedelta(seconds=s) for s in (5, 1, 5, 3, 1)]  # ties broken by _intid
    with db.write() as s:
        workflow = add_workflow(s)
        for n, stamp in enumerate([*stamps, None, None]):  # two runs without a start_time
            add_run(
                s,
                workflow,
                start_time=stamp,
                tasks=[("a", TaskStatus.COMPLETED), ("b", TaskStatus.FAILED)][: n % 3],
                initial_inputs={"n": n, "text": 'quote " and \\ and \u00e9 and \u0000'},
                outputs=None if n % 2 else [n, 1.5, True, None, {}],
            )
    timed, untimed, _ = page_queries(NO_FILTER.shape, False, "none")
    assert timed is not None
    with db.read() as conn:
        for statement, params in (
            (timed, {"offset": 0, "limit": 100}),
            (untimed, {"offset": 0, "limit": 100}),
            (timed, {"offset": 2, "limit": 2}),
        ):
            expected = [tuple(r) for r in conn.execute(statement.statement, params)]
            assert statement.rows(conn, params) == expected
        ids = [r[1] for r in conn.execute(timed.statement, {"offset": 0, "limit": 100})]
        get_run = run_with_tasks(conn.dialect.name)
        for run_id in ids:
            params = {"run_id": run_id, "limit": 1001, "task_limit": 1001}
            (row,) = get_run.rows(conn, params)
            (expected_row,) = conn.execute(get_run.statement, params)
            assert row[:-1] == tuple(expected_row)[:-1]  # the run, decoded as SQLAlchemy does
            expected = [tuple(r) for r in conn.execute(TASKS_OF_RUN.statement, params)]
            assert TASKS_OF_RUN.rows(conn, params) == expected
            # Its tasks, packed in one JSON array: the rows of the tasks' own statement.
            assert TASKS_OF_RUN.unpack(conn.dialect, row[-1]) == expected
            assert [t[0] for t in expected] == sorted(t[0] for t in expected)
        # A page of runs in the list's order, with their tasks in theirs.
        records, more = runs.list_runs(conn, limit=4)
    assert not more or len(records) == 4
    assert [r.row.id for r in records] == ids[:4]
    for record in records:
        assert [t._intid for t in record.tasks] == sorted(t._intid for t in record.tasks)


def test_a_page_in_one_statement_is_the_page_of_two(db: Database) -> None:
    """statements.page_with_tasks (a row per run, its tasks packed) reads
    what list_runs reads in a transaction, page by page."""
    with db.write() as s:
        workflow = add_workflow(s)
        for n in range(9):
            add_run(
                s,
                workflow,
                start_time=T0 + timedelta(seconds=n % 4),  # ties broken by _intid
                status=RunStatus.PAUSED if n % 3 == 0 else RunStatus.COMPLETED,
                tasks=[("a", TaskStatus.COMPLETED), ("b", TaskStatus.PAUSED)][: n % 3],
                initial_inputs={"n": n},
                outputs={"n": n} if n % 2 else None,
            )
    after = None
    with db.read() as conn:
        for _ in range(2):
            one = runs.list_runs_in_one_statement(conn, limit=3, after=after)
            assert one is not None  # timed runs only, few tasks: one statement is enough
            two = runs.list_runs(conn, limit=3, after=after)
            assert one == two and one[1]
            last = one[0][-1].row
            after = runs.RunCursor(last.start_time, last._intid)
        # The last page may go on into runs without a start_time: two statements.
        assert runs.list_runs_in_one_statement(conn, limit=3, after=after) is None
        assert len(runs.list_runs(conn, limit=3, after=after)[0]) == 3


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_json_column_stored_as_a_blob_still_reads_on_sqlite(db: Database) -> None:
    """sqlite3 hands a BLOB over as bytes, which load_json parses; SQLite's
    json_array (the packed reads) refuses BLOBs, so those read them as text.
    (PostgreSQL checks json as it stores it.)"""
    with db.write() as s:
        run_id = add_run(s, add_workflow(s), start_time=T0, tasks=[("a", TaskStatus.COMPLETED)])
        s.execute(
            text("UPDATE tasks SET inputs = X'7b2261223a317d' WHERE run_id = :r"), {"r": run_id}
        )
        s.execute(text("UPDATE runs SET outputs = X'5b315d' WHERE id = :r"), {"r": run_id})
    with db.read() as conn:
        record = runs.get_run(conn, run_id)
        (listed,), _ = runs.list_runs(conn, limit=5)
        one = runs.list_runs_in_one_statement(conn, limit=5, filters=runs.NO_FILTER)
    assert record.tasks[0].inputs == {"a": 1} and record.row.outputs == [1]
    assert listed == record
    assert one is None or one[0] == [record]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_single_read_is_sent_alone_and_its_connection_goes_back_transactional(
    migrated_url: str,
) -> None:
    """Database.read_one puts its PostgreSQL connection in autocommit (no
    BEGIN, no ROLLBACK around GetRun's statement) and takes it out again:
    the same pooled connection then serves a read's snapshot and a write
    that rolls back whole."""
    db = Database.from_url(migrated_url, pool_size=1)  # one connection: the same one each time
    try:
        with db.write() as s:
            run_id = add_run(s, add_workflow(s), start_time=T0, tasks=[("a", TaskStatus.COMPLETED)])
        with db.read_one() as conn:
            assert runs.get_run(conn, run_id, single_statement=True).row.id == run_id
            # Nothing open after the statement: it was its own transaction.
            assert conn.exec_driver_sql("SELECT now() = statement_timestamp()").scalar_one()
        with pytest.raises(RuntimeError), db.write() as conn:
            conn.execute(text("UPDATE runs SET status = 'FAILED' WHERE id = :r"), {"r": run_id})
            raise RuntimeError("after the update, before the commit")
        with db.read_one() as conn:
            record = runs.get_run(conn, run_id, single_statement=True)
            assert record.row.status is RunStatus.COMPLETED  # the update rolled back
        with db.read() as conn:
            assert conn.exec_driver_sql("SHOW transaction_isolation").scalar_one() == (
                "repeatable read"
            )
            first = conn.exec_driver_sql("SELECT now()").scalar_one()
            assert conn.exec_driver_sql("SELECT now()").scalar_one() == first  # one transaction
    finally:
        db.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_connection_lost_in_a_single_read_is_its_error_and_not_reused(
    migrated_url: str,
) -> None:
    """The backend of read_one's connection killed under it: the caller gets
    SQLAlchemy's disconnect error (UNAVAILABLE), not a failure to take the
    connection out of autocommit, and the next read gets a new connection."""
    db = Database.from_url(migrated_url, pool_size=1)
    try:
        with db.write() as s:
            run_id = add_run(s, add_workflow(s), start_time=T0)
        with db.read_one() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        admin = Database.from_url(migrated_url, pool_size=1)
        try:
            with admin.read_one() as conn:
                conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        finally:
            admin.dispose()
        with pytest.raises(sa_exc.DBAPIError) as raised, db.read_one() as conn:
            runs.get_run(conn, run_id, single_statement=True)
        assert raised.value.connection_invalidated
        with db.read_one() as conn:
            assert runs.get_run(conn, run_id, single_statement=True).row.id == run_id
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != pid
    finally:
        db.dispose()


def test_a_row_the_inline_decoding_refuses_is_decoded_by_the_processors() -> None:
    """row_decoding.row_decoder decodes a row's enum names, timestamps and JSON
    inline; what those expressions refuse goes through each column's
    processor, which decides as SQLAlchemy's would."""
    decode = TASKS_OF_RUN.compiled(sqlite.dialect()).unpack_row
    assert decode is not None
    stored = [7, "T7", "R7", "n", None, "PAUSED", '{"a": [1, "b"]}', "null", None]
    stored += ["2026-11-02 09:00:00.250000", None, None, '"text"']
    # The common row, inline.
    assert decode(stored) == (
        *stored[:5],
        TaskStatus.PAUSED,
        {"a": [1, "b"]},
        None,
        None,
        T0,
        None,
        None,
        "text",
    )
    # JSON that orjson refuses (Python's json.dumps writes NaN): read as
    # null (engine.load_json).
    nan = decode([*stored[:6], '{"score": NaN}', *stored[7:]])
    assert nan[6] == {"score": None} and nan[9] == T0
    # What no processor reads is DATA_LOSS naming the task and the column:
    # a number in a DATETIME column (SQLite keeps any type),
    with pytest.raises(DataLoss, match=r"^task T7: start_time holds .*\(a int, not a time\)"):
        decode([*stored[:9], 1762074000, *stored[10:]])
    # text that no parser reads (SQLAlchemy's processor raises),
    with pytest.raises(DataLoss, match="start_time holds .*isoformat"):
        decode([*stored[:9], "2026-11-2 9:00:00", *stored[10:]])
    # a status that is no member (SQLAlchemy's Enum raises LookupError).
    with pytest.raises(DataLoss, match="status holds .*'NOT_A_STATUS' is not among"):
        decode([*stored[:5], "NOT_A_STATUS", *stored[6:]])
