"""`spur-runs migrate` on a live PySpur PostgreSQL blocks none of PySpur's
writes (issue 16, section 3), and an index that an interrupted concurrent
build left INVALID is rebuilt by the next migrate.

The first test is SLOW (marked `slow`, about 30 s): it loads 1,000,000 tasks
(generate_series, in the database, not row by row), because a build must
last long enough for a blocked writer to show. A writer commits every 10 ms,
as PySpur's engine writes (a task inserted, then updated, and its run
updated), under `lock_timeout = 200ms`; a plain CREATE INDEX, built first as
the control, makes it fail; `spur-runs migrate` (a subprocess) must not.
Figures are printed (pytest -s).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection, Engine, create_engine, text

from spur_runs.store.engine import normalize_url
from spur_runs.store.migrate import (
    MIGRATE_LOCK,
    alembic_config,
    current_revision,
    head_revision,
    migrate,
)
from spur_runs.store.models import SERVICE_INDEXES
from spur_runs.store.schema_check import missing_indexes

RUNS = 100_000
TASKS = 1_000_000
SERVICE_INDEX_NAMES = sorted(str(index.name) for index in SERVICE_INDEXES)


def plain_engine(url: str) -> Engine:
    return create_engine(normalize_url(url))


def pyspur_tables(url: str) -> None:
    """PySpur's tables (our revision 0001 makes them exactly as PySpur's
    models do), without our indexes: a database PySpur made."""
    command.upgrade(alembic_config(url), "0001")


def bulk_load(url: str, runs: int, tasks: int) -> None:
    """`runs` runs and `tasks` tasks, made by the database itself. Foreign key
    triggers are skipped while loading (session_replication_role, the
    superuser's bulk-load switch): the ids are right by construction."""
    engine = plain_engine(url)
    try:
        with engine.begin() as c:
            c.execute(text("SET LOCAL session_replication_role = replica"))
            c.execute(
                text(
                    "INSERT INTO workflows (name, definition, created_at, updated_at) "
                    "VALUES ('w', '{}', now(), now())"
                )
            )
            c.execute(
                text(
                    "INSERT INTO workflow_versions (version, workflow_id, name, definition, "
                    "definition_hash, created_at, updated_at) "
                    "VALUES (1, 'S1', 'w', '{}', 'h', now(), now())"
                )
            )
            c.execute(
                text(
                    "INSERT INTO runs (workflow_id, workflow_version_id, status, run_type, "
                    "start_time, end_time, initial_inputs) "
                    "SELECT 'S1', 'SV1', 'COMPLETED', 'interactive', "
                    "now() - g * interval '1 second', now(), '{\"q\": 1}' "
                    "FROM generate_series(1, :runs) g"
                ),
                {"runs": runs},
            )
            c.execute(
                text(
                    "INSERT INTO tasks (run_id, node_id, status, outputs, start_time, end_time) "
                    "SELECT 'R' || (1 + g % :runs), 'node' || (g % 10), 'COMPLETED', "
                    "'{\"y\": 2}', now(), now() FROM generate_series(1, :tasks) g"
                ),
                {"runs": runs, "tasks": tasks},
            )
        with engine.connect() as c:
            c.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    finally:
        engine.dispose()


@dataclass
class Writer:
    """PySpur's engine at work: every 10 ms one transaction inserts a task
    of a run, marks it COMPLETED and updates the run, then commits; under
    lock_timeout 200ms, a write blocked longer than that fails."""

    url: str
    runs: int
    period: float = 0.010
    committed: int = 0
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _write(self, c: Connection, n: int) -> None:
        run_id = f"R{1 + n % self.runs}"
        task_id = c.execute(
            text(
                "INSERT INTO tasks (run_id, node_id, status, start_time) "
                "VALUES (:run, :node, 'RUNNING', now()) RETURNING id"
            ),
            {"run": run_id, "node": f"live{n}"},
        ).scalar_one()
        c.execute(
            text(
                "UPDATE tasks SET status = 'COMPLETED', outputs = '{\"ok\": true}', "
                "end_time = now() WHERE id = :id"
            ),
            {"id": task_id},
        )
        c.execute(
            text("UPDATE runs SET status = 'RUNNING', end_time = now() WHERE id = :run"),
            {"run": run_id},
        )

    def _run(self) -> None:
        engine = plain_engine(self.url)
        try:
            with engine.connect() as c:
                c.execute(text("SET lock_timeout = '200ms'"))
                c.commit()
                n = 0
                while not self._stop.is_set():
                    started = time.monotonic()
                    try:
                        self._write(c, n)
                        c.commit()
                        self.committed += 1
                    except Exception as error:  # noqa: BLE001 - counted, reported
                        c.rollback()
                        self.failures.append(str(error).splitlines()[0])
                    took = time.monotonic() - started
                    self.slowest = max(self.slowest, took)
                    n += 1
                    time.sleep(max(0.0, self.period - took))
        finally:
            engine.dispose()

    @contextmanager
    def running(self) -> Iterator[Writer]:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(0.3)  # a few writes before
        try:
            yield self
        finally:
            time.sleep(0.3)  # and after
            self._stop.set()
            self._thread.join(timeout=10)

    def report(self) -> str:
        return (
            f"{self.committed} writes committed, {len(self.failures)} failed, slowest "
            f"{self.slowest * 1000:.0f} ms"
        )


def invalid_indexes(url: str) -> list[str]:
    engine = plain_engine(url)
    try:
        with engine.connect() as c:
            return list(
                c.execute(
                    text(
                        "SELECT indexrelid::regclass::text FROM pg_index "
                        "WHERE NOT indisvalid OR NOT indisready"
                    )
                ).scalars()
            )
    finally:
        engine.dispose()


def spur_runs_migrate(url: str) -> float:
    """`spur-runs migrate` as an operator runs it; its wall time."""
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "spur_runs", "migrate", "--database-url", url],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return time.monotonic() - started


@pytest.mark.slow
@pytest.mark.timeout(300)  # loading 1M tasks on a busy machine
def test_migrate_blocks_no_write_of_pyspur(postgres_url: str) -> None:
    pyspur_tables(postgres_url)
    started = time.monotonic()
    bulk_load(postgres_url, RUNS, TASKS)
    loaded = time.monotonic() - started

    # The control: a plain CREATE INDEX of the same kind (tasks.run_id) under
    # the same writer. The writer must see it, or it proves nothing below.
    engine = plain_engine(postgres_url)
    try:
        with Writer(postgres_url, RUNS).running() as control:
            build = time.monotonic()
            with engine.begin() as c:
                c.execute(text("CREATE INDEX ix_control ON tasks (run_id, _intid)"))
            plain = time.monotonic() - build
        with engine.begin() as c:
            c.execute(text("DROP INDEX ix_control"))
    finally:
        engine.dispose()
    print(
        f"\n{TASKS:,} tasks, {RUNS:,} runs loaded in {loaded:.1f} s; plain CREATE INDEX "
        f"on tasks (control) {plain:.2f} s: {control.report()}"
    )
    assert control.failures, "a plain CREATE INDEX should have blocked the writer"
    assert all("lock timeout" in failure for failure in control.failures), control.failures

    with Writer(postgres_url, RUNS).running() as writer:
        took = spur_runs_migrate(postgres_url)
    print(f"spur-runs migrate {took:.2f} s (CREATE INDEX CONCURRENTLY): {writer.report()}")
    assert writer.failures == []
    assert writer.committed >= took / 0.010 / 4  # it really wrote throughout
    assert invalid_indexes(postgres_url) == []
    engine = plain_engine(postgres_url)
    try:
        assert missing_indexes(engine) == []
    finally:
        engine.dispose()
    assert current_revision(postgres_url) == head_revision()


@pytest.mark.slow
def test_an_index_left_invalid_is_rebuilt_by_the_next_migrate(postgres_url: str) -> None:
    """A concurrent build that fails leaves its index INVALID, as an
    interrupted `migrate` (cancelled, killed, timed out) does: here a UNIQUE
    build over duplicate run ids under one of our index names. IF NOT EXISTS
    alone would keep it; migrate drops it and builds the right one."""
    pyspur_tables(postgres_url)
    bulk_load(postgres_url, runs=10, tasks=1000)
    name = "ix_spur_runs_tasks_run_id"
    engine = plain_engine(postgres_url)
    try:
        with engine.connect() as c:
            autocommit = c.execution_options(isolation_level="AUTOCOMMIT")
            with pytest.raises(Exception, match="could not create unique index"):
                autocommit.execute(
                    text(f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON tasks (run_id)")
                )
        assert invalid_indexes(postgres_url) == [name]
        migrate(postgres_url)
        assert invalid_indexes(postgres_url) == []
        with engine.connect() as c:
            definition = c.execute(text("SELECT pg_get_indexdef(to_regclass(:n))"), {"n": name})
            assert definition.scalar_one() == (
                f"CREATE INDEX {name} ON public.tasks USING btree (run_id, _intid)"
            )
        assert missing_indexes(engine) == []
        assert current_revision(postgres_url) == head_revision()
    finally:
        engine.dispose()


@pytest.mark.slow
def test_an_interrupted_migrate_leaves_its_revision_to_the_next(postgres_url: str) -> None:
    """A build cancelled mid-way (statement_timeout, as a cancel or a lost
    session would) fails migrate without recording the revision, and leaves
    the INVALID index behind; the next migrate rebuilds it."""
    pyspur_tables(postgres_url)
    bulk_load(postgres_url, runs=1000, tasks=200_000)
    hurried = f"{postgres_url}?options=-c%20statement_timeout%3D50"
    with pytest.raises(Exception, match="statement timeout"):
        migrate(hurried)
    assert current_revision(postgres_url) == "0001"
    assert invalid_indexes(postgres_url) == ["ix_spur_runs_tasks_run_id"]
    engine = plain_engine(postgres_url)
    try:
        # The server's start-up check counts it missing: the planner never uses it.
        assert "ix_spur_runs_tasks_run_id" in missing_indexes(engine)
    finally:
        engine.dispose()
    migrate(postgres_url)
    assert invalid_indexes(postgres_url) == []
    assert current_revision(postgres_url) == head_revision()
    engine = plain_engine(postgres_url)
    try:
        assert missing_indexes(engine) == []
    finally:
        engine.dispose()


@contextmanager
def _second_migrate(url: str) -> Iterator[subprocess.Popen[str]]:
    """`spur-runs migrate` started while a first one holds the lock: it has
    said it waits for it (its first line); killed if still running after."""
    second = subprocess.Popen(
        [sys.executable, "-m", "spur_runs", "migrate", "--database-url", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert second.stderr is not None
        line = second.stderr.readline()
        assert line.rstrip().endswith(
            "another spur-runs migrate is running: waiting for it to end"
        ), line + second.stderr.read()
        yield second
    finally:
        if second.poll() is None:
            second.kill()
            second.communicate()


def test_a_second_migrate_waits_for_the_first(postgres_url: str) -> None:
    """Two migrates at once (two operators, a Job retried while the first
    pod's statements still run, an init container per replica): the second
    found no revision, ran 0001 too and failed on the first's tables with
    "duplicate key value violates unique constraint", exit 1. Now it waits
    for the first's lock (held here, as a running migrate holds it), then
    finds the work done or does it."""
    engine = plain_engine(postgres_url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as first:
            first.execute(text("SELECT pg_advisory_lock(:key)").bindparams(key=MIGRATE_LOCK))
            with _second_migrate(postgres_url) as second:
                assert current_revision(postgres_url) is None  # it ran nothing meanwhile
                first.execute(text("SELECT pg_advisory_unlock(:key)").bindparams(key=MIGRATE_LOCK))
                _out, err = second.communicate(timeout=120)
    finally:
        engine.dispose()
    assert second.returncode == 0, err
    assert current_revision(postgres_url) == head_revision()


def test_a_second_sqlite_migrate_waits_for_the_first(tmp_path: Path) -> None:
    """SQLite has no advisory lock: a second migrate read the revision
    between the first's revisions and failed on the next ("Online migration
    expected to match one row when updating '0002' to '0003'", exit 1).
    Migrates of files in one folder now take turns (flock on the folder,
    held here as a running migrate holds it)."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    folder = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        with _second_migrate(url) as second:
            assert not (tmp_path / "runs.db").exists()  # it ran nothing meanwhile
            fcntl.flock(folder, fcntl.LOCK_UN)
            _out, err = second.communicate(timeout=120)
    finally:
        os.close(folder)
    assert second.returncode == 0, err
    assert current_revision(url) == head_revision()
