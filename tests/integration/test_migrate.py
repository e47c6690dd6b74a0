"""`spur-runs migrate` on real SQLite files and a real PostgreSQL: the schema
it creates on an empty database, and what it does (and does not do) to a
database PySpur made."""

from __future__ import annotations

import importlib
import io
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from databases import new_postgres_database
from pyspur_peer import pyspur_migrations
from spur_runs.store.engine import create_db_engine, normalize_url
from spur_runs.store.migrate import (
    alembic_config,
    current_revision,
    head_revision,
    migrate,
    migrate_sql,
)
from spur_runs.store.migrations import PYSPUR_REVISIONS, SCRIPT_LOCATION, VERSION_TABLE
from spur_runs.store.models import (
    SERVICE_INDEXES,
    Base,
    Run,
    RunStatus,
    Task,
    TaskStatus,
    Workflow,
    WorkflowVersion,
)
from spur_runs.store.schema_check import missing_indexes
from tools import ROOT

# create_all() of PySpur's models and ours on PostgreSQL: "Computed column ...
# is being created as 'STORED'" (what PySpur gets too, up to PostgreSQL 17).
pytestmark = pytest.mark.filterwarnings("ignore:Computed column:sqlalchemy.exc.SAWarning")

OUR_TABLES = {"workflows", "workflow_versions", "runs", "tasks"}
SERVICE_INDEX_NAMES = {str(index.name) for index in SERVICE_INDEXES}
PYSPUR_MODULES = [
    "run_model",
    "task_model",
    "workflow_model",
    "workflow_version_model",
    "dataset_model",
    "output_file_model",
    "user_session_model",
    "eval_run_model",
    "dc_and_vi_model",
]


def plain_engine(url: str) -> Engine:
    return create_engine(normalize_url(url))


def snapshot(url: str, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Everything about the schema that a migration could change."""
    engine = plain_engine(url)
    try:
        inspector = inspect(engine)
        tables: dict[str, Any] = {}
        for table in sorted(set(inspector.get_table_names()) - exclude):
            columns = [
                (
                    column["name"],
                    column["type"].compile(dialect=engine.dialect),
                    column["nullable"],
                    str(column.get("default")),
                    tuple(sorted((column.get("computed") or {}).items())),
                )
                for column in inspector.get_columns(table)
            ]
            tables[table] = {
                "columns": columns,
                "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
                "foreign_keys": sorted(
                    (
                        tuple(fk["constrained_columns"]),
                        fk["referred_table"],
                        tuple(fk["referred_columns"]),
                    )
                    for fk in inspector.get_foreign_keys(table)
                ),
                "unique": sorted(
                    tuple(unique["column_names"])
                    for unique in inspector.get_unique_constraints(table)
                ),
                "indexes": sorted(
                    (str(index["name"]), tuple(index["column_names"]), bool(index["unique"]))
                    for index in inspector.get_indexes(table)
                ),
            }
        enums = {}
        if engine.dialect.name == "postgresql":
            enums = {enum["name"]: tuple(enum["labels"]) for enum in inspector.get_enums()}
        return {"tables": tables, "enums": enums}
    finally:
        engine.dispose()


def index_names(schema: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (table, index[0]) for table, facts in schema["tables"].items() for index in facts["indexes"]
    }


@pytest.fixture
def reference_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second empty database of the same kind as `database_url`."""
    if make_url(database_url).get_backend_name() == "sqlite":
        yield f"sqlite:///{tmp_path / 'reference.db'}"
        return
    with new_postgres_database() as url:
        yield url


def pyspur_database(url: str, revision: str = "010") -> None:
    """The schema PySpur's own models create, plus PySpur's Alembic version
    (0.1.18's newest, unless `revision`)."""
    pyspur_base = pytest.importorskip("pyspur.models.base_model")
    for module in PYSPUR_MODULES:
        importlib.import_module(f"pyspur.models.{module}")
    engine = plain_engine(url)
    try:
        pyspur_base.BaseModel.metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(
                text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
            )
            connection.execute(text("INSERT INTO alembic_version VALUES (:r)"), {"r": revision})
    finally:
        engine.dispose()


# --- an empty database -------------------------------------------------------


def test_empty_database_gets_the_pyspur_tables(database_url: str) -> None:
    assert current_revision(database_url) is None
    migrate(database_url)

    schema = snapshot(database_url)
    assert set(schema["tables"]) == OUR_TABLES | {VERSION_TABLE}
    assert "alembic_version" not in schema["tables"]  # PySpur's, not ours
    assert current_revision(database_url) == head_revision() == "0004"
    runs = schema["tables"]["runs"]
    assert [c[0] for c in runs["columns"]] == [c.name for c in Run.__table__.columns]
    assert ("parent_run_id",) in {fk[0] for fk in runs["foreign_keys"]}
    assert ("id",) in runs["unique"]
    # PySpur's own indexes, named as SQLAlchemy names them from the models.
    assert {
        ("runs", "ix_runs_start_time"),
        ("runs", "ix_runs_parent_run_id"),
        ("runs", "ix_runs_workflow_id"),
        ("workflow_versions", "ix_workflow_versions_workflow_id"),
        ("workflows", "ix_workflows_created_at"),
    } <= index_names(schema)
    if make_url(database_url).get_backend_name() == "postgresql":
        assert schema["enums"] == {
            "runstatus": tuple(status.value for status in RunStatus),
            "taskstatus": tuple(status.value for status in TaskStatus),
        }


@pytest.mark.slow
def test_schema_is_the_models_schema(database_url: str, reference_url: str) -> None:
    """Migrations and `Base.metadata.create_all` make the same tables."""
    migrate(database_url)
    engine = plain_engine(reference_url)
    try:
        Base.metadata.create_all(engine)
    finally:
        engine.dispose()
    migrated = snapshot(database_url, exclude=frozenset({VERSION_TABLE}))
    reference = snapshot(reference_url)
    assert migrated == reference


def test_ids_are_computed_by_the_database(database_url: str) -> None:
    migrate(database_url)
    engine = create_db_engine(database_url, pool_size=1)
    try:
        with Session(engine) as session, session.begin():
            workflow = Workflow(name="w", definition={"nodes": [], "links": []})
            session.add(workflow)
            session.flush()
            version = WorkflowVersion(
                version=1,
                workflow_id=workflow.id,
                name="w",
                definition={},
                definition_hash="h",
            )
            session.add(version)
            session.flush()
            run = Run(
                workflow_id=workflow.id,
                workflow_version_id=version.id,
                status=RunStatus.PAUSED,
                run_type="interactive",
                start_time=datetime(2026, 11, 20, 8, 30),
            )
            session.add(run)
            session.flush()
            session.add(Task(run_id=run.id, node_id="input_node", status=TaskStatus.PAUSED))
        with Session(engine) as session:
            assert session.scalars(select(Workflow.id)).one() == "S1"
            assert session.scalars(select(WorkflowVersion.id)).one() == "SV1"
            assert session.execute(select(Run.id, Run.status)).one() == ("R1", RunStatus.PAUSED)
            assert session.execute(select(Task.id, Task.run_id)).one() == ("T1", "R1")
    finally:
        engine.dispose()


@pytest.mark.slow
def test_service_indexes_are_created(database_url: str) -> None:
    migrate(database_url)
    schema = snapshot(database_url)
    for index in SERVICE_INDEXES:
        assert index.table is not None
        found = {
            name: columns for name, columns, _ in schema["tables"][index.table.name]["indexes"]
        }
        assert found[str(index.name)] == tuple(column.name for column in index.columns)
    engine = plain_engine(database_url)
    try:
        assert missing_indexes(engine) == []
    finally:
        engine.dispose()


@pytest.mark.slow
def test_migrate_twice_changes_nothing(database_url: str) -> None:
    migrate(database_url)
    before = snapshot(database_url)
    migrate(database_url)
    assert snapshot(database_url) == before
    assert current_revision(database_url) == "0004"
    engine = plain_engine(database_url)
    try:
        with engine.connect() as connection:
            versions = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
            assert versions.scalars().all() == ["0004"]
    finally:
        engine.dispose()


@pytest.mark.slow
def test_downgrade_drops_only_our_indexes_and_stops_at_pyspur_tables(
    database_url: str,
) -> None:
    migrate(database_url)
    config = alembic_config(database_url)

    command.downgrade(config, "0001")
    schema = snapshot(database_url)
    assert set(schema["tables"]) == OUR_TABLES | {VERSION_TABLE}
    assert not {name for _, name in index_names(schema)} & SERVICE_INDEX_NAMES
    assert current_revision(database_url) == "0001"

    with pytest.raises(RuntimeError, match="will not downgrade below 0001"):
        command.downgrade(config, "base")
    assert set(snapshot(database_url)["tables"]) >= OUR_TABLES
    assert current_revision(database_url) == "0001"

    migrate(database_url)  # and back up: the indexes return
    assert SERVICE_INDEX_NAMES <= {name for _, name in index_names(snapshot(database_url))}


def test_refuses_a_database_with_some_of_the_tables_but_no_runs(database_url: str) -> None:
    engine = plain_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE workflows (_intid INTEGER PRIMARY KEY)"))
    finally:
        engine.dispose()
    with pytest.raises(RuntimeError, match="no `runs` table"):
        migrate(database_url)
    assert set(snapshot(database_url)["tables"]) == {"workflows"}
    assert current_revision(database_url) is None


def test_migration_indexes_are_the_models_service_indexes() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    frozen = set()
    for number in ("0002", "0003", "0004"):  # the revisions that add SERVICE_INDEXES
        revision = script.get_revision(number)
        assert revision is not None
        frozen |= {(name, table, columns) for name, table, columns in revision.module.INDEXES}
    declared = {
        (str(index.name), index.table.name, tuple(column.name for column in index.columns))
        for index in SERVICE_INDEXES
        if index.table is not None
    }
    assert frozen == declared


def test_migrations_ship_with_the_package() -> None:
    setuptools = pytest.importorskip("setuptools")
    packages = setuptools.find_packages(where=str(ROOT / "server"))
    assert {"spur_runs.store.migrations", "spur_runs.store.migrations.versions"} <= set(packages)
    assert (SCRIPT_LOCATION / "script.py.mako").is_file()
    assert (SCRIPT_LOCATION / "env.py").is_file()
    assert [path.name for path in sorted((SCRIPT_LOCATION / "versions").glob("0*.py"))] == [
        "0001_pyspur_schema.py",
        "0002_service_indexes.py",
        "0003_filter_indexes.py",
        "0004_task_parent_index.py",
    ]


# --- a database PySpur made --------------------------------------------------


@pytest.mark.slow
def test_pyspur_database_gets_only_indexes_and_our_version(database_url: str) -> None:
    pyspur_database(database_url)
    before = snapshot(database_url)
    assert "runs" in before["tables"]
    assert "messages" in before["tables"]  # PySpur's other tables are there too

    migrate(database_url)
    after = snapshot(database_url)

    # One new table: our version. PySpur's Alembic version is untouched.
    assert set(after["tables"]) == set(before["tables"]) | {VERSION_TABLE}
    assert current_revision(database_url) == "0004"
    engine = plain_engine(database_url)
    try:
        with engine.connect() as connection:
            pyspur_version = connection.execute(text("SELECT version_num FROM alembic_version"))
            assert pyspur_version.scalars().all() == ["010"]
    finally:
        engine.dispose()

    # No PySpur table, column, key or enum changed...
    for table, facts in before["tables"].items():
        changed = after["tables"][table]
        for part in ("columns", "primary_key", "foreign_keys", "unique"):
            assert changed[part] == facts[part], (table, part)
    assert after["enums"] == before["enums"]
    # ...and the only new indexes are ours.
    added = index_names(after) - index_names(before)
    assert {name for _, name in added} == SERVICE_INDEX_NAMES
    assert index_names(before) <= index_names(after)

    # Running it again is a no-op.
    migrate(database_url)
    assert snapshot(database_url) == after


@pytest.mark.slow
def test_indexes_lost_after_migrate_are_added_by_the_next(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PySpur's start-up on SQLite, when its create_all fails ("out of
    sync"), drops and creates all its tables: our indexes go, our recorded
    revision stays. The server's warning says to run migrate, which said
    "nothing to do"; it adds them again, and changes nothing else."""
    pyspur_database(database_url)
    migrate(database_url)
    migrated = snapshot(database_url)
    pyspur_base = importlib.import_module("pyspur.models.base_model")
    engine = plain_engine(database_url)
    try:
        pyspur_base.BaseModel.metadata.drop_all(engine)
        pyspur_base.BaseModel.metadata.create_all(engine)
        assert set(missing_indexes(engine)) == SERVICE_INDEX_NAMES
    finally:
        engine.dispose()
    caplog.set_level(logging.INFO)
    migrate(database_url)
    assert snapshot(database_url) == migrated
    assert current_revision(database_url) == head_revision()
    assert any("indexes added again" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_pyspurs_own_migrations_run_after_ours(postgres_url: str) -> None:
    """On PostgreSQL PySpur makes its schema with its own Alembic revisions
    (`pyspur serve`), not create_all. Our migrate on a PySpur at 007, then
    PySpur upgrading itself to 010, gives exactly the schema of our migrate
    run after PySpur's 010: neither side's revisions get in the other's way."""
    pytest.importorskip("pyspur")
    pyspur_migrations(postgres_url, "007")
    migrate(postgres_url)
    pyspur_migrations(postgres_url)
    with new_postgres_database() as reference:
        pyspur_migrations(reference)
        made_by_pyspur = snapshot(reference)
        migrate(reference)
        assert snapshot(postgres_url) == snapshot(reference)
    # Ours added only our indexes and version table to what PySpur made.
    assert set(snapshot(postgres_url, frozenset({VERSION_TABLE}))["tables"]) == set(
        made_by_pyspur["tables"]
    )
    added = index_names(snapshot(postgres_url)) - index_names(made_by_pyspur)
    assert {name for _, name in added} == SERVICE_INDEX_NAMES


@pytest.mark.slow
def test_pyspur_still_writes_after_migrate(database_url: str) -> None:
    pyspur_database(database_url)
    migrate(database_url)

    from pyspur.models.run_model import RunModel
    from pyspur.models.run_model import RunStatus as PyspurRunStatus
    from pyspur.models.task_model import TaskModel
    from pyspur.models.task_model import TaskStatus as PyspurTaskStatus
    from pyspur.models.workflow_model import WorkflowModel
    from pyspur.models.workflow_version_model import WorkflowVersionModel

    engine = plain_engine(database_url)
    try:
        with Session(engine) as session:
            workflow = WorkflowModel(name="support-bot", definition={"nodes": [], "links": []})
            session.add(workflow)
            session.flush()
            version = WorkflowVersionModel(
                version=1,
                workflow_id=workflow.id,
                name="support-bot",
                definition={},
                definition_hash="abc",
            )
            session.add(version)
            session.flush()
            run = RunModel(
                workflow_id=workflow.id,
                workflow_version_id=version.id,
                status=PyspurRunStatus.RUNNING,
                run_type="interactive",
                initial_inputs={"input_node": {"q": "hi"}},
            )
            session.add(run)
            session.flush()
            session.add(
                TaskModel(run_id=run.id, node_id="input_node", status=PyspurTaskStatus.COMPLETED)
            )
            session.commit()
            stored = session.scalars(select(RunModel)).one()
            assert (stored.id, [task.id for task in stored.tasks]) == ("R1", ["T1"])
    finally:
        engine.dispose()


# --- revisions this build does not know --------------------------------------------


def _set_our_revision(url: str, revision: str) -> None:
    engine = plain_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(f"UPDATE {VERSION_TABLE} SET version_num = :r"), {"r": revision}
            )
    finally:
        engine.dispose()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.slow
def test_a_revision_of_ours_this_build_does_not_know_is_left_as_it_is(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A newer spur-runs migrated the database (0005), and this older one's
    migrate runs on it (a rollback): nothing to do, one warning naming the
    revision found and this build's newest; not Alembic's "Can't locate
    revision" and exit 1, which failed the rollback."""
    migrate(database_url)
    _set_our_revision(database_url, "0005")
    before = snapshot(database_url)
    caplog.set_level(logging.INFO)
    migrate(database_url)
    assert snapshot(database_url) == before
    assert current_revision(database_url) == "0005"
    [warning] = _warnings(caplog)
    assert "spur-runs schema revision 0005 is unknown to this build, whose newest is 0004" in (
        warning
    )
    assert "nothing to do" in warning
    script = io.StringIO()
    migrate_sql(database_url, script)
    assert script.getvalue().endswith("at revision 0005, unknown to this build: nothing to run\n")


@pytest.mark.slow
@pytest.mark.parametrize("revision", ["010", "011"])
def test_a_newer_pyspur_revision_is_named_and_migrated_all_the_same(
    database_url: str, caplog: pytest.LogCaptureFixture, revision: str
) -> None:
    """PySpur migrates its database forward by itself: a revision beyond
    0.1.18's is named in a warning, and our indexes are added all the same
    (they are on columns every PySpur revision has)."""
    pyspur_database(database_url, revision)
    caplog.set_level(logging.INFO)
    migrate(database_url)
    assert current_revision(database_url) == head_revision()
    warnings = _warnings(caplog)
    if revision in PYSPUR_REVISIONS:
        assert warnings == []
        return
    [warning] = warnings
    assert "PySpur schema revision 011 is unknown to this build, whose newest is 010" in warning


def test_pyspurs_revisions_are_those_of_the_pyspur_the_tests_install() -> None:
    """PYSPUR_REVISIONS is PySpur 0.1.18's chain, oldest first."""
    alembic_dir = Path(pytest.importorskip("pyspur").__file__).parent / "models/management/alembic"
    script = ScriptDirectory(str(alembic_dir))
    chain = [revision.revision for revision in script.walk_revisions()]
    assert tuple(reversed(chain)) == PYSPUR_REVISIONS
