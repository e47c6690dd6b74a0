"""`spur-runs seed` on real SQLite files and a real PostgreSQL: demo data of
the right shape, loaded in bulk, that PySpur itself can read and extend."""

from __future__ import annotations

import importlib
import re
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from spur_runs.seed import TASKS_PER_RUN, SeedSummary, seed
from spur_runs.store.engine import create_db_engine, normalize_url
from spur_runs.store.migrate import migrate
from spur_runs.store.models import Run, RunStatus, Task, TaskStatus, Workflow, WorkflowVersion

pytestmark = pytest.mark.filterwarnings("ignore:Computed column:sqlalchemy.exc.SAWarning")


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    engine = create_db_engine(migrated_url, pool_size=2)
    yield engine
    engine.dispose()


def runs_and_tasks(engine: Engine) -> tuple[list[Any], dict[str, list[Any]]]:
    with engine.connect() as connection:
        runs = connection.execute(select(Run.__table__).order_by(Run._intid)).all()
        tasks: dict[str, list[Any]] = defaultdict(list)
        for task in connection.execute(select(Task.__table__).order_by(Task._intid)):
            tasks[task.run_id].append(task)
    return list(runs), tasks


def definitions(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(select(WorkflowVersion.id, WorkflowVersion.definition))
        return {version_id: definition for version_id, definition in rows}


def test_seed_makes_demo_runs_of_the_right_shape(migrated_url: str, engine: Engine) -> None:
    before = datetime.now(UTC).replace(tzinfo=None)
    summary = seed(migrated_url, runs=40)
    after = datetime.now(UTC).replace(tzinfo=None)

    assert isinstance(summary, SeedSummary)
    assert (summary.runs, summary.tasks) == (40, 40 * TASKS_PER_RUN)
    assert summary.workflows_created == len(summary.workflow_ids) == 3
    assert (summary.first_run_id, summary.last_run_id) == ("R1", "R40")
    assert sum(count for _, count in summary.status_counts) == 40

    runs, tasks = runs_and_tasks(engine)
    specs = definitions(engine)
    assert len(runs) == 40
    assert [run.id for run in runs] == [f"R{n}" for n in range(1, 41)]
    assert len(specs) == 3
    by_id = {run.id: run for run in runs}

    for run in runs:
        spec = specs[run.workflow_version_id]
        nodes = [node["id"] for node in spec["nodes"]]
        # One task per node of the run's version, in the version's order.
        assert [task.node_id for task in tasks[run.id]] == nodes
        assert run.run_type in ("interactive", "batch")
        assert run.start_time is not None and run.start_time.tzinfo is None
        assert before - timedelta(days=15) <= run.start_time <= after
        if run.end_time is not None:
            assert run.start_time <= run.end_time <= after
        # The input node's task ran in every case and passed the inputs on.
        assert run.initial_inputs == {"input_node": tasks[run.id][0].outputs}

    statuses = Counter(run.status for run in runs)
    assert statuses[RunStatus.COMPLETED] >= 20
    assert statuses[RunStatus.FAILED] >= 1
    assert statuses[RunStatus.PAUSED] >= 1
    assert statuses[RunStatus.RUNNING] >= 1

    for run in runs:
        run_tasks = tasks[run.id]
        task_statuses = [task.status for task in run_tasks]
        if run.status is RunStatus.COMPLETED:
            assert set(task_statuses) == {TaskStatus.COMPLETED}
            assert run.end_time is not None and run.outputs
        if run.status is RunStatus.FAILED:
            failed = [task for task in run_tasks if task.status is TaskStatus.FAILED]
            assert len(failed) == 1 and "Traceback" in failed[0].error
            assert run.end_time is not None
        if run.status is RunStatus.RUNNING:
            assert run.end_time is None
            assert TaskStatus.RUNNING in task_statuses
        if run.status is RunStatus.PAUSED:
            assert run.end_time is None
            spec = specs[run.workflow_version_id]
            types = {node["id"]: node["node_type"] for node in spec["nodes"]}
            paused = [n for n, task in enumerate(run_tasks) if task.status is TaskStatus.PAUSED]
            assert len(paused) == 1
            assert types[run_tasks[paused[0]].node_id] == "HumanInterventionNode"
            assert all(t.status is TaskStatus.COMPLETED for t in run_tasks[: paused[0]])
            assert all(t.status is TaskStatus.PENDING for t in run_tasks[paused[0] + 1 :])
            assert run_tasks[paused[0]].end_time is None

    # Batch runs and their interactive children.
    children = [run for run in runs if run.parent_run_id is not None]
    assert len(children) == summary.child_runs >= 2
    for child in children:
        parent = by_id[child.parent_run_id]
        assert parent.run_type == "batch" and child.run_type == "interactive"
        assert parent.workflow_id == child.workflow_id
        assert parent._intid < child._intid
    assert summary.batch_run_id in {child.parent_run_id for child in children}
    assert by_id[summary.paused_run_id].status is RunStatus.PAUSED
    assert by_id[summary.failed_run_id].status is RunStatus.FAILED


def test_definitions_are_pyspur_workflows(migrated_url: str, engine: Engine) -> None:
    seed(migrated_url, runs=3)
    for spec in definitions(engine).values():
        assert spec["spur_type"] == "workflow" and spec["test_inputs"]
        types = [node["node_type"] for node in spec["nodes"]]
        assert types == [
            "InputNode",
            "SingleLLMCallNode",
            "RouterNode",
            "HumanInterventionNode",
            "SingleLLMCallNode",
            "OutputNode",
        ]
        assert all(node["parent_id"] is None and node["config"] for node in spec["nodes"])
        ids = [node["id"] for node in spec["nodes"]]
        assert [(link["source_id"], link["target_id"]) for link in spec["links"]] == list(
            zip(ids, ids[1:], strict=False)
        )


@pytest.mark.slow
def test_definitions_pass_pyspur_validation(migrated_url: str, engine: Engine) -> None:
    # Needs PySpur with its dependencies (pydantic); CI installs it --no-deps.
    schema = pytest.importorskip("pyspur.schemas.workflow_schemas", exc_type=ImportError)
    seed(migrated_url, runs=0)
    for spec in definitions(engine).values():
        schema.WorkflowDefinitionSchema.model_validate(spec)


@pytest.mark.slow
def test_seed_again_reuses_the_workflows_and_adds_runs(migrated_url: str, engine: Engine) -> None:
    first = seed(migrated_url, runs=12)
    second = seed(migrated_url, runs=8)
    assert first.workflow_ids == second.workflow_ids
    assert (first.workflows_created, second.workflows_created) == (3, 0)
    assert (second.first_run_id, second.last_run_id) == ("R13", "R20")
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Workflow)) == 3
        assert connection.scalar(select(func.count()).select_from(WorkflowVersion)) == 3
        assert connection.scalar(select(func.count()).select_from(Run)) == 20
        assert connection.scalar(select(func.count()).select_from(Task)) == 20 * TASKS_PER_RUN
        per_run = connection.execute(select(Task.run_id, func.count()).group_by(Task.run_id)).all()
    assert {count for _, count in per_run} == {TASKS_PER_RUN} and len(per_run) == 20


@pytest.mark.slow
def test_later_inserts_continue_after_the_seeded_ids(migrated_url: str, engine: Engine) -> None:
    """Explicit _intids on PostgreSQL leave the SERIAL sequence behind unless
    seed moves it: the next run PySpur inserts must not collide."""
    summary = seed(migrated_url, runs=15)
    with Session(engine) as session, session.begin():
        version = session.scalars(select(WorkflowVersion).limit(1)).one()
        run = Run(
            workflow_id=version.workflow_id,
            workflow_version_id=version.id,
            status=RunStatus.PENDING,
            run_type="interactive",
        )
        session.add(run)
        session.flush()
        task = Task(run_id=run.id, node_id="input_node", status=TaskStatus.PENDING)
        session.add(task)
        session.flush()
        assert (run.id, task.id) == ("R16", f"T{summary.tasks + 1}")


def test_zero_runs_makes_only_the_workflows(migrated_url: str, engine: Engine) -> None:
    summary = seed(migrated_url, runs=0)
    assert (summary.runs, summary.first_run_id, summary.paused_run_id) == (0, None, None)
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Workflow)) == 3
        assert connection.scalar(select(func.count()).select_from(Run)) == 0


def test_sqlite_load_keeps_keys_and_formats(sqlite_url: str) -> None:
    migrate(sqlite_url)
    seed(sqlite_url, runs=60)
    engine = create_db_engine(sqlite_url, pool_size=1)
    try:
        with engine.connect() as connection:
            # The load ran without foreign-key checks: every key must hold.
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            # SQLAlchemy's own text format for DateTime, so that comparisons
            # with bound datetimes (keyset pagination) order correctly.
            stamps = connection.exec_driver_sql(
                "SELECT start_time FROM runs UNION ALL SELECT end_time FROM tasks "
                "WHERE end_time IS NOT NULL"
            ).scalars()
            pattern = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
            assert all(pattern.fullmatch(stamp) for stamp in stamps)
            assert (
                connection.exec_driver_sql("SELECT count(*) FROM sqlite_temp_master").scalar() == 0
            )
    finally:
        engine.dispose()


def test_progress_bar(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    migrate(sqlite_url)
    seed(sqlite_url, runs=5)  # small, not a terminal: no bar
    assert "run/s" not in capsys.readouterr().err
    seed(sqlite_url, runs=5, progress=True)
    assert "5.00/5.00" in capsys.readouterr().err


@pytest.mark.slow
def test_seed_a_pyspur_database_and_read_it_with_pyspur(database_url: str) -> None:
    """On a database PySpur made (then `spur-runs migrate`), seeded rows are
    rows PySpur's own ORM reads, and PySpur's next insert fits after them."""
    pyspur_base = pytest.importorskip("pyspur.models.base_model")
    for module in (
        "run_model",
        "task_model",
        "workflow_model",
        "workflow_version_model",
        "dataset_model",
        "output_file_model",
        "user_session_model",
        "eval_run_model",
        "dc_and_vi_model",
    ):
        importlib.import_module(f"pyspur.models.{module}")
    from pyspur.models.run_model import RunModel
    from pyspur.models.run_model import RunStatus as PyspurRunStatus

    engine = create_engine(normalize_url(database_url))
    try:
        pyspur_base.BaseModel.metadata.create_all(engine)
        migrate(database_url)
        summary = seed(database_url, runs=25)
        with Session(engine) as session:
            runs = session.scalars(select(RunModel).order_by(RunModel._intid)).all()
            assert len(runs) == 25
            assert all(len(run.tasks) == TASKS_PER_RUN for run in runs)
            assert {run.status for run in runs} >= {
                PyspurRunStatus.COMPLETED,
                PyspurRunStatus.PAUSED,
                PyspurRunStatus.FAILED,
            }
            batch = next(run for run in runs if run.id == summary.batch_run_id)
            assert batch.subruns and all(sub.parent_run_id == batch.id for sub in batch.subruns)
            new = RunModel(
                workflow_id=runs[0].workflow_id,
                workflow_version_id=runs[0].workflow_version_id,
                status=PyspurRunStatus.PENDING,
                run_type="interactive",
            )
            session.add(new)
            session.commit()
            assert new.id == "R26"
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM tasks")).scalar() == 150
    finally:
        engine.dispose()


def test_seed_while_another_connection_has_the_file_open(sqlite_url: str) -> None:
    """The journal cannot leave WAL mode then (the server may be reading):
    the load goes through the write-ahead log instead, and readers go on."""
    migrate(sqlite_url)
    other = sqlite3.connect(make_url(sqlite_url).database or "")
    try:
        assert other.execute("SELECT count(*) FROM runs").fetchone() == (0,)
        seed(sqlite_url, runs=30)
        assert other.execute("SELECT count(*) FROM runs").fetchone() == (30,)
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        other.close()


@pytest.mark.slow
def test_ids_of_deleted_runs(migrated_url: str, engine: Engine) -> None:
    """PostgreSQL's sequence never hands an id out twice, and seed keeps it so;
    SQLite (no AUTOINCREMENT, as PySpur declares it) reuses the id of a
    deleted last row, and so does seed, like PySpur's own next insert."""
    seed(migrated_url, runs=0)
    with Session(engine) as session, session.begin():
        version = session.scalars(select(WorkflowVersion).limit(1)).one()
        run = Run(
            workflow_id=version.workflow_id,
            workflow_version_id=version.id,
            status=RunStatus.COMPLETED,
            run_type="interactive",
        )
        session.add(run)
        session.flush()
        assert run.id == "R1"
        session.delete(run)
    summary = seed(migrated_url, runs=3)
    expected = "R1" if engine.dialect.name == "sqlite" else "R2"
    assert summary.first_run_id == expected


@pytest.mark.slow
def test_an_edited_demo_workflow_gets_a_new_version(migrated_url: str, engine: Engine) -> None:
    """Someone changed a demo version's definition: seeding adds a version
    with the demo's definition (as PySpur does on a run) rather than writing
    tasks for nodes the edited version does not have."""
    seed(migrated_url, runs=0)
    with engine.begin() as connection:
        connection.execute(
            WorkflowVersion.__table__.update()
            .where(WorkflowVersion.workflow_id == "S1")
            .values(definition={"nodes": [], "links": []}, definition_hash="edited")
        )
    summary = seed(migrated_url, runs=12)
    specs = definitions(engine)
    runs, tasks = runs_and_tasks(engine)
    assert len(specs) == 4
    with engine.connect() as connection:
        versions = connection.execute(
            select(WorkflowVersion.workflow_id, WorkflowVersion.version).order_by(
                WorkflowVersion._intid
            )
        ).all()
    assert ("S1", 2) in versions
    for run in runs:
        nodes = [node["id"] for node in specs[run.workflow_version_id]["nodes"]]
        assert [task.node_id for task in tasks[run.id]] == nodes
    assert summary.workflows_created == 0
