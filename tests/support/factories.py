"""Rows for tests, written through our SQLAlchemy models (tests/integration/test_pyspur_compat.py
writes them with PySpur's own classes instead)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from spur_runs.store.models import Run, RunStatus, Task, TaskStatus, Workflow, WorkflowVersion

# A chain of six nodes: input -> llm -> router -> pause -> summarize -> output,
# plus a side branch router -> side that does not pass through the pause.
NODES = [
    ("input_node", "InputNode"),
    ("llm", "SingleLLMCallNode"),
    ("router", "RouterNode"),
    ("approval", "HumanInterventionNode"),
    ("summarize", "SingleLLMCallNode"),
    ("output", "OutputNode"),
]
LINKS = [
    ("input_node", "llm"),
    ("llm", "router"),
    ("router", "approval"),
    ("approval", "summarize"),
    ("summarize", "output"),
]


def definition(
    nodes: Sequence[tuple[str, str]] = NODES, links: Sequence[tuple[str, str]] = LINKS
) -> dict[str, Any]:
    return {
        "nodes": [
            {"id": i, "node_type": t, "title": i, "parent_id": None, "config": {}} for i, t in nodes
        ],
        "links": [{"source_id": s, "target_id": t} for s, t in links],
        "test_inputs": [],
        "spur_type": "workflow",
    }


def add_workflow(
    conn: Connection, name: str = "demo", spec: dict[str, Any] | None = None
) -> tuple[str, str]:
    """A workflow and one version of it; returns (workflow_id, version_id)."""
    with Session(bind=conn) as session:
        return _add_workflow(session, name, spec)


def _add_workflow(session: Session, name: str, spec: dict[str, Any] | None) -> tuple[str, str]:
    spec = spec or definition()
    now = datetime(2026, 11, 1, 12, 0, 0)
    workflow = Workflow(name=name, definition=spec, created_at=now, updated_at=now)
    session.add(workflow)
    session.flush()
    version = WorkflowVersion(
        version=1,
        workflow_id=workflow.id,
        name=name,
        description=f"{name} v1",
        definition=spec,
        definition_hash=hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(),
        created_at=now,
        updated_at=now,
    )
    session.add(version)
    session.flush()
    return workflow.id, version.id


def add_run(conn: Connection, workflow: tuple[str, str], **fields: Any) -> str:
    """A run (and its tasks) in the caller's transaction; returns its id."""
    with Session(bind=conn) as session:
        return _add_run(session, workflow, **fields)


def _add_run(
    session: Session,
    workflow: tuple[str, str],
    *,
    status: RunStatus = RunStatus.COMPLETED,
    start_time: datetime | None = datetime(2026, 11, 2, 9, 0, 0),
    end_time: datetime | None = None,
    parent_run_id: str | None = None,
    run_type: str = "interactive",
    tasks: Sequence[tuple[str, TaskStatus]] = (),
    initial_inputs: Any = None,
    outputs: Any = None,
) -> str:
    workflow_id, version_id = workflow
    run = Run(
        workflow_id=workflow_id,
        workflow_version_id=version_id,
        parent_run_id=parent_run_id,
        status=status,
        run_type=run_type,
        start_time=start_time,
        end_time=end_time,
        initial_inputs=initial_inputs,
        outputs=outputs,
    )
    session.add(run)
    session.flush()
    for n, (node_id, task_status) in enumerate(tasks):
        session.add(
            Task(
                run_id=run.id,
                node_id=node_id,
                status=task_status,
                inputs={"n": n},
                outputs={"node": node_id} if task_status is TaskStatus.COMPLETED else None,
                error="boom" if task_status is TaskStatus.FAILED else None,
                start_time=start_time + timedelta(seconds=n) if start_time else None,
            )
        )
    session.flush()
    return run.id


def all_done(nodes: Sequence[tuple[str, str]] = NODES) -> list[tuple[str, TaskStatus]]:
    return [(node_id, TaskStatus.COMPLETED) for node_id, _ in nodes]
