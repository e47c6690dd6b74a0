"""PySpur 0.1.18 itself, for tests that put spur-runs beside it: its schema
made by its own models, rows written with its own ORM classes, and its own
Runs router (`pyspur.api.run_management.router`, mounted at `/run` as
PySpur's app mounts it) served by uvicorn on a loopback port.

PySpur is installed `--no-deps` (README's test command); FastAPI, uvicorn and
pydantic come from the dev extra.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from factories import definition
from spur_runs.store.engine import normalize_url


def import_pyspur_models() -> Any:
    """Every PySpur model module, as PySpur's app imports them, so that the
    ORM's relationships resolve. Returns pyspur.models.base_model."""
    import pyspur.models

    for module in pkgutil.walk_packages(pyspur.models.__path__, "pyspur.models."):
        importlib.import_module(module.name)
    return importlib.import_module("pyspur.models.base_model")


def pyspur_schema(url: str) -> None:
    """Create every table exactly as PySpur's models declare them."""
    base = import_pyspur_models()
    engine = create_engine(normalize_url(url))
    base.BaseModel.metadata.create_all(engine)
    engine.dispose()


# env.py for PySpur's own revisions: PySpur's imports pyspur.database, which
# builds its engine from environment variables once per process.
_PYSPUR_ENV = """
from alembic import context

context.configure(connection=context.config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
"""


def pyspur_migrations(url: str, revision: str = "head") -> None:
    """Run PySpur's own Alembic revisions (000 .. 010), as `pyspur serve`
    does on PostgreSQL (pyspur.cli.utils.run_migrations; on SQLite it calls
    create_all, which pyspur_schema does)."""
    import tempfile

    import pyspur
    from alembic import command
    from alembic.config import Config

    versions = Path(pyspur.__file__).parent / "models/management/alembic/versions"
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "env.py").write_text(_PYSPUR_ENV)
        Path(folder, "versions").mkdir()
        for script in versions.glob("*.py"):
            Path(folder, "versions", script.name).write_text(script.read_text())
        config = Config()
        config.set_main_option("script_location", folder)
        engine = create_engine(normalize_url(url))
        try:
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
        finally:
            engine.dispose()


PYSPUR_0_1_5_POSTGRESQL = Path(__file__).with_name("pyspur_0_1_5_postgresql.sql")


def pyspur_0_1_5_schema(url: str) -> None:
    """The schema PySpur 0.1.5's own migrations leave on PostgreSQL (revision
    006), from the snapshot beside this file: no download of an old PySpur.
    pyspur_migrations(url, ...) brings it forward as upgrading PySpur does."""
    engine = create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            # Its own BEGIN and COMMIT: one transaction, as Alembic ran it.
            connection.exec_driver_sql(PYSPUR_0_1_5_POSTGRESQL.read_text())
    finally:
        engine.dispose()


def add_pyspur_workflow(session: Session) -> tuple[Any, Any]:
    """A workflow and its version 1, written by PySpur's own classes
    (factories.definition: six nodes, a pause); returns both rows."""
    import_pyspur_models()
    from pyspur.models.workflow_model import WorkflowModel
    from pyspur.models.workflow_version_model import WorkflowVersionModel

    workflow = WorkflowModel(name="support-bot", definition=definition())
    session.add(workflow)
    session.flush()
    version = WorkflowVersionModel(
        version=1,
        workflow_id=workflow.id,
        name="support-bot",
        definition=definition(),
        definition_hash="abc123",
    )
    session.add(version)
    session.flush()
    return workflow, version


def write_world(url: str) -> dict[str, Any]:
    """Rows written by PySpur's own ORM classes covering what a body can
    hold: a paused batch run with children, a failed run with a failed
    task, a running run, {} and null and [] JSON values, tasks with errors,
    parent tasks and no start time. Returns the ids by role."""
    import_pyspur_models()
    from pyspur.models.run_model import RunModel, RunStatus
    from pyspur.models.task_model import TaskModel, TaskStatus

    start = datetime(2026, 11, 20, 8, 30)
    engine = create_engine(normalize_url(url))
    ids: dict[str, Any] = {}
    with Session(engine) as session:
        workflow, version = add_pyspur_workflow(session)

        def run(minute: int, **fields: Any) -> Any:
            fields.setdefault("start_time", start + timedelta(minutes=minute))
            row = RunModel(workflow_id=workflow.id, workflow_version_id=version.id, **fields)
            session.add(row)
            session.flush()
            return row

        def task(of: Any, node: str, status: Any, second: int | None, **fields: Any) -> Any:
            row = TaskModel(
                run_id=of.id,
                node_id=node,
                status=status,
                start_time=None if second is None else of.start_time + timedelta(seconds=second),
                **fields,
            )
            session.add(row)
            session.flush()
            return row

        batch = run(0, status=RunStatus.PAUSED, run_type="batch", initial_inputs={})
        first = task(batch, "input_node", TaskStatus.COMPLETED, 0, inputs={}, outputs={"q": 1})
        task(batch, "llm", TaskStatus.COMPLETED, 1, inputs=[], outputs={}, parent_task_id=first.id)
        task(batch, "router", TaskStatus.COMPLETED, 2, inputs=None, outputs=None)
        task(batch, "approval", TaskStatus.PAUSED, 3, inputs={"a": {}, "b": []})
        task(batch, "summarize", TaskStatus.PENDING, None)
        children = []
        for n in range(3):
            child = run(
                1 + n,
                status=RunStatus.COMPLETED,
                run_type="interactive",
                parent_run_id=batch.id,
                end_time=start + timedelta(minutes=1 + n, seconds=30),
                initial_inputs={"input_node": {"n": n}},
                outputs={"output": {}} if n else {},
            )
            task(child, "input_node", TaskStatus.COMPLETED, 0, outputs={"n": n})
            children.append(child.id)
        failed = run(
            10,
            status=RunStatus.FAILED,
            run_type="interactive",
            end_time=start + timedelta(minutes=11),
            initial_inputs=None,
            outputs=None,
        )
        task(failed, "input_node", TaskStatus.COMPLETED, 0, inputs={"x": 1.5}, outputs={"x": 1.5})
        task(failed, "llm", TaskStatus.FAILED, 5, error="rate limited: 429", outputs=None)
        running = run(20, status=RunStatus.RUNNING, run_type="interactive")
        task(running, "input_node", TaskStatus.RUNNING, 0)
        canceled = run(
            30,
            status=RunStatus.CANCELED,
            run_type="batch",
            end_time=start + timedelta(minutes=31),
            outputs={"output": {"partial": [1, None, "two", True]}},
        )
        odd = _odd_runs(session, run, task, start + timedelta(days=1))
        session.commit()
        ids.update(
            odd=odd,
            batch=batch.id,
            children=children,
            failed=failed.id,
            running=running.id,
            canceled=canceled.id,
            workflow=workflow.id,
            version=version.id,
        )
    engine.dispose()
    return ids


def _odd_runs(session: Session, run: Any, task: Any, start: datetime) -> list[str]:
    """Odd but legal rows PySpur's classes write: a run of every status
    without tasks, a task of every status, a three-level chain, unicode,
    floats at a double's edges (1e308, 5e-324, -0.0), integers up to 2^53,
    microseconds, a time given with an offset, an end before the start,
    empty strings. Each starts at its own instant (ties are ordered
    differently: api.md). Returns their ids, none a top-level batch run."""
    from pyspur.models.run_model import RunStatus
    from pyspur.models.task_model import TaskStatus

    ids = []
    for n, status in enumerate(RunStatus):
        ids.append(
            run(
                0, status=status, run_type="interactive", start_time=start + timedelta(seconds=n)
            ).id
        )
    edges = {
        "max": 1e308,
        "min": 5e-324,
        "neg0": -0.0,
        "int53": 2**53,
        "neg53": -(2**53),
        "tenth": 0.1,
    }
    text = {
        "q": '日本語 «ünïcødé» 🚀 \u2028 \\ "',
        "": "",
        "nested": [[[{"deep": [None, {}, []]}]]],
    }
    odd = run(
        0,
        status=RunStatus.PAUSED,
        run_type="ünïcødé 🚀",
        start_time=start + timedelta(minutes=1, microseconds=123456),
        end_time=start + timedelta(minutes=1, microseconds=123457),
        initial_inputs={"input_node": {**edges, **text}},
        outputs={"output": {"edges": edges, "bool": False}, "": {}},
    )
    previous = None
    for n, status in enumerate(TaskStatus):
        previous = task(
            odd,
            f"nöde {n} ✓" if n else "",
            status,
            n,
            end_time=odd.start_time + timedelta(days=400, microseconds=n),
            inputs=[edges, "text", 1.5, None][n % 4],
            outputs=[42, "s", True, {"": []}, -1.5e-300, edges][n],
            error="" if status == TaskStatus.FAILED else None,
            parent_task_id=previous.id if previous is not None else None,
            subworkflow_output={"k": {"v": [1, 2.5]}} if n % 2 else None,
        )
    ids.append(odd.id)
    offset = timezone(timedelta(hours=5, minutes=30))
    aware = datetime(2026, 11, 21, 18, 0, 0, 500000, tzinfo=offset)
    ids.append(run(0, status=RunStatus.RUNNING, run_type="interactive", start_time=aware).id)
    backwards = run(
        0,
        status=RunStatus.COMPLETED,
        run_type="",
        start_time=start + timedelta(minutes=3),
        end_time=start + timedelta(minutes=2, seconds=59),
    )
    ids.append(backwards.id)
    parent = None
    for depth in range(3):
        parent = run(
            0,
            status=RunStatus.RUNNING,
            run_type="interactive",
            start_time=start + timedelta(minutes=4 + depth),
            parent_run_id=None if parent is None else parent.id,
        )
        ids.append(parent.id)
    return ids


def _router_app(url: str) -> Any:
    """PySpur's Runs router in a FastAPI app whose sessions use `url`.
    pyspur.database makes its engine from the environment at import; the
    app's own dependency override (FastAPI's documented way) points it at
    this database instead."""
    os.environ.setdefault("SQLITE_OVERRIDE_DATABASE_URL", "sqlite://")
    import_pyspur_models()
    from fastapi import FastAPI
    from pyspur.api.run_management import router
    from pyspur.database import get_db

    engine = create_engine(normalize_url(url))
    sessions = sessionmaker(autocommit=False, autoflush=False, bind=engine)

    def database() -> Iterator[Session]:
        session = sessions()
        try:
            yield session
        finally:
            session.close()

    app = FastAPI()
    app.include_router(router, prefix="/run")
    app.dependency_overrides[get_db] = database
    app.state.engine = engine
    return app


@contextmanager
def serve_pyspur_router(url: str) -> Iterator[int]:
    """PySpur's router under uvicorn on a loopback port; yields the port."""
    import uvicorn

    app = _router_app(url)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        app.state.engine.dispose()
