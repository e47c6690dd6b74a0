"""Bad data in PySpur's tables, and statements that would not end (issue 16,
"Bad data and bad values").

A cycle in runs.parent_run_id (R2 -> R2, R2 -> R3 -> R2) made DeleteRun's
recursive query run forever on SQLite (100% CPU, GBs of memory) and until
statement_timeout on PostgreSQL: now it answers FAILED_PRECONDITION naming
the cycle, and deletes nothing. And no SQLite statement outlives its call's
deadline or --db-timeout-seconds any more (db.py's watchdog), as PostgreSQL's
statement_timeout already ensured there. Real servers on loopback ports,
SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text

from http_client import Http, Seeded, seed_runs, start_http_server
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs import deadline
from spur_runs.rpc import status as errors
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database
from spur_runs.store.models import Run, Task


def _set_parent(url: str, pairs: list[tuple[str, str | None]]) -> None:
    db = Database.from_url(url, pool_size=1)
    try:
        with db.write() as conn:
            for run_id, parent in pairs:
                conn.execute(
                    text("UPDATE runs SET parent_run_id = :parent WHERE id = :id"),
                    {"parent": parent, "id": run_id},
                )
    finally:
        db.dispose()


def _counts(url: str) -> tuple[int, int]:
    db = Database.from_url(url, pool_size=1)
    try:
        with db.read() as conn:
            runs = conn.execute(select(func.count()).select_from(Run)).scalar_one()
            tasks = conn.execute(select(func.count()).select_from(Task)).scalar_one()
        return runs, tasks
    finally:
        db.dispose()


def _failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def served(migrated_url: str) -> Iterator[tuple[RunsServer, Seeded, RunServiceStub]]:
    seeded = seed_runs(migrated_url)
    server = start_http_server(migrated_url)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield server, seeded, RunServiceStub(channel)
    server.stop(grace=1)


def test_a_parent_cycle_is_refused_and_nothing_is_deleted(
    served: tuple[RunsServer, Seeded, RunServiceStub],
    migrated_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """R -> R, and the seeded parent (six tasks, two children) made its own
    grandparent through its first child. Before the fix the SQLite call never
    came back (the deadline below would end it with DEADLINE_EXCEEDED, and
    its thread would spin on); now FAILED_PRECONDITION at once."""
    caplog.set_level(logging.INFO)
    server, seeded, stub = served
    alone = seeded.others[0]
    first, second = seeded.children
    _set_parent(migrated_url, [(alone, alone), (seeded.parent, first)])
    before = _counts(migrated_url)
    cases = {
        alone: f"run {alone} is its own ancestor ({alone} -> {alone})",
        seeded.parent: f"run {seeded.parent} is its own ancestor "
        f"({seeded.parent} -> {first} -> {seeded.parent})",
        first: f"run {first} is its own ancestor ({first} -> {seeded.parent} -> {first})",
    }
    for run_id, message in cases.items():
        with pytest.raises(grpc.RpcError) as raised:
            stub.DeleteRun(pb.DeleteRunRequest(run_id=run_id), timeout=10)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION, raised.value
        assert message in (raised.value.details() or ""), raised.value.details()
        assert "nothing was deleted" in (raised.value.details() or "")
    # The same over HTTP: 400 with the google.rpc.Status of the refusal.
    http = Http(server.http_port or 0, timeout=10)
    try:
        document = http.request("DELETE", f"/run/{alone}/").error(9)
        assert cases[alone] in document["message"]
    finally:
        http.close()
    assert _counts(migrated_url) == before
    # A run below the cycle, but not on it, has a finite tree: deleted.
    stub.DeleteRun(pb.DeleteRunRequest(run_id=second), timeout=10)
    assert _counts(migrated_url) == (before[0] - 1, before[1])
    # Repaired by the operator, the former cycle deletes as a tree.
    _set_parent(migrated_url, [(seeded.parent, None)])
    stub.DeleteRun(pb.DeleteRunRequest(run_id=seeded.parent), timeout=10)
    assert _counts(migrated_url) == (before[0] - 3, before[1] - 6)
    assert _failures(caplog) == []


def test_a_long_cycle_is_named_in_short(
    served: tuple[RunsServer, Seeded, RunServiceStub], migrated_url: str
) -> None:
    """Twelve runs in a ring: the message shows its ends, not all of it."""
    _server, seeded, stub = served
    ring = seeded.others
    _set_parent(migrated_url, [(run, ring[i - 1]) for i, run in enumerate(ring)])
    with pytest.raises(grpc.RpcError) as raised:
        stub.DeleteRun(pb.DeleteRunRequest(run_id=ring[0]), timeout=10)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = raised.value.details() or ""
    upwards = [ring[0], *reversed(ring[1:]), ring[0]]
    shown = " -> ".join(upwards[:4]) + " -> ... (5 more) -> " + " -> ".join(upwards[-4:])
    assert f"run {ring[0]} is its own ancestor ({shown})" in details, details


# A trigger that makes deleting a task take forever: SQLite computes an
# endless recursive query, PostgreSQL sleeps. The "deliberately slow query".
_SLOW_TRIGGER = {
    "sqlite": [
        "CREATE TRIGGER spin BEFORE DELETE ON tasks BEGIN SELECT count(*) FROM "
        "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c); END"
    ],
    "postgresql": [
        "CREATE FUNCTION spin() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(3600); RETURN OLD; END $$",
        "CREATE TRIGGER spin BEFORE DELETE ON tasks FOR EACH ROW EXECUTE FUNCTION spin()",
    ],
}


def _add_slow_trigger(url: str) -> None:
    db = Database.from_url(url, pool_size=1)
    try:
        with db.write() as conn:
            for statement in _SLOW_TRIGGER[conn.dialect.name]:
                conn.execute(text(statement))
    finally:
        db.dispose()


@pytest.mark.slow
def test_a_runaway_statement_ends_at_the_calls_deadline(
    migrated_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """DeleteRun of a run whose tasks' delete never ends, with a 0.5 s
    deadline, three times on a server of two threads: each statement is
    stopped at the deadline, rolled back (nothing deleted) and its thread,
    connection and write lock freed, so that the next calls, writes
    included, are served. Before, on SQLite, the first runaway held the
    write lock for good and the next delete failed after its busy timeout."""
    caplog.set_level(logging.INFO)
    seeded = seed_runs(migrated_url)
    _add_slow_trigger(migrated_url)
    before = _counts(migrated_url)
    server = start_http_server(migrated_url, max_workers=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as raised:
                    stub.DeleteRun(pb.DeleteRunRequest(run_id=seeded.parent), timeout=0.5)
                assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # A run without tasks fires no trigger: it needs the write lock
            # and a thread, within 5 s.
            stub.DeleteRun(pb.DeleteRunRequest(run_id=seeded.others[0]), timeout=5)
            got = stub.GetRun(pb.GetRunRequest(run_id=seeded.parent), timeout=5)
            assert len(got.run.tasks) == 6
    finally:
        server.stop(grace=1)
    assert _counts(migrated_url) == (before[0] - 1, before[1])
    timed_out = [r for r in caplog.records if "database statement timed out" in r.getMessage()]
    assert len(timed_out) >= 1
    assert _failures(caplog) == []


@pytest.mark.slow
def test_a_runaway_statement_ends_at_the_db_timeout(migrated_url: str) -> None:
    """No client deadline: --db-timeout-seconds (1 s) bounds the statement,
    and the server itself answers DEADLINE_EXCEEDED (its own message, not
    grpc's: the client's 60 s deadline is far away)."""
    seeded = seed_runs(migrated_url)
    _add_slow_trigger(migrated_url)
    server = start_http_server(migrated_url, db_timeout_seconds=1.0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.RpcError) as raised:
                RunServiceStub(channel).DeleteRun(
                    pb.DeleteRunRequest(run_id=seeded.parent), timeout=60
                )
    finally:
        server.stop(grace=1)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "the database did not answer within the deadline" in (raised.value.details() or "")


def test_sqlite_reads_are_interrupted_while_rows_are_fetched(sqlite_url: str) -> None:
    """The query DeleteRun used to run (UNION ALL) over a cycle, read in a
    call with a 0.5 s deadline: SQLite produces its endless rows as they are
    fetched, and the watchdog stops it there too, well before memory grows
    (it grew 60 MB/s). rpc/status.py maps the interruption to DEADLINE_EXCEEDED."""
    from spur_runs.store.migrate import migrate

    migrate(sqlite_url)
    seeded = seed_runs(sqlite_url)
    _set_parent(sqlite_url, [(seeded.parent, seeded.parent)])
    endless = text(
        "WITH RECURSIVE tree(id) AS (SELECT id FROM runs WHERE id = :id UNION ALL "
        "SELECT runs.id FROM runs JOIN tree ON runs.parent_run_id = tree.id) SELECT id FROM tree"
    )
    db = Database.from_url(sqlite_url, pool_size=1, timeout_seconds=30)
    deadline.set_remaining(0.5)
    try:
        with pytest.raises(sa_exc.OperationalError) as raised, db.read() as conn:
            conn.execute(endless, {"id": seeded.parent}).scalars().all()
        # The connection is fine for the next call, which has no deadline.
        deadline.clear()
        with db.read() as conn:
            assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 15
    finally:
        deadline.clear()
        db.dispose()
    status = errors.to_status(raised.value)
    assert status.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], status
