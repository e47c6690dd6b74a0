"""`spur-runs seed` without --runs on a database that has had runs: the
demo's showcase put back under README's ids, R1 ... R9.

README's walkthrough uses the ids a fresh database's seed gives the
showcase (plan.SHOWCASE: batch run R1 with children R2..R4, running R5,
paused R6, failed R7, canceled R8, completed R9), and changes them: it
deletes R9, R8 and R1 (with R2..R4), and `spur-runs demo` completes R5.
Whoever runs README's first command again (the server stopped, then
started the same way) expects the walkthrough to work again, not a second
showcase at R21..R29 beside the remains of the first. So plain `seed` writes
those nine runs anew as a fresh database's seed makes them (the same
templates: statuses, tasks, children; start times from now, so that R5 is
again the newest run, RUNNING, for `spur-runs demo` to move), and adds
nothing else:

- an id among R1..R9 that holds a run of a demo workflow is rewritten in
  place (an UPDATE: a run elsewhere that names it as parent keeps it), its
  tasks replaced by the template's, under new task ids;
- a missing one is inserted under its id (PostgreSQL's sequence is past it
  already, so no later insert collides with it);
- if any of them holds a run of another workflow, nothing is written: that
  run is not the demo's to change. Where no run of a demo workflow exists
  yet (PySpur's own database, seeded for the first time), seed adds runs at
  the next ids instead, as it always did; else it says why it did nothing.

One transaction holds it all: the check, the workflows, the runs, the tasks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from sqlalchemy import Engine, delete, exists, insert, null, select, text, update
from sqlalchemy.orm import Session

from ..store.engine import WRITE_OPTION
from ..store.models import Run, RunStatus, Task, TaskStatus
from .content import DEFAULT_RUNS, EPOCH
from .plan import SHOWCASE_RUNS, Catalog, Planner
from .postgres import issued
from .workflows import demo_workflow_ids, workflows_in

IDS = tuple(f"R{i}" for i in range(1, SHOWCASE_RUNS + 1))


@dataclass(frozen=True)
class PutBack:
    """What a plain seed did instead of adding runs."""

    workflow_ids: tuple[str, ...]
    workflows_created: int
    recreated: tuple[str, ...] = ()  # were missing
    reset: tuple[str, ...] = ()  # were there, runs of the demo
    # Hold runs of other workflows: then nothing was written.
    others: tuple[str, ...] = ()
    showcase: dict[str, int] = field(default_factory=dict)  # run index by SHOWCASE label
    batch_children: int = 0


def _load(value: str | None) -> Any:
    # SQL NULL where the template has none, as the bulk load writes it (None
    # would be written as JSON's null).
    return null() if value is None else json.loads(value)


def _time(t0: int, offset: int | None = 0) -> datetime | None:
    return None if offset is None else EPOCH + timedelta(milliseconds=t0 + offset)


def put_back(engine: Engine, now: datetime, now_ms: int) -> PutBack | None:
    """The showcase written anew at R1..R9; None where runs are to be added
    instead (a database that never had a run, where the bulk load puts the
    showcase at R1..R9 itself; or R1..R9 taken and no demo run yet)."""
    writer = engine.execution_options(**{WRITE_OPTION: True})
    # (SQLite: a write transaction is BEGIN IMMEDIATE, db.py: nobody writes
    # between the checks and the writes.)
    with Session(writer, expire_on_commit=False) as session, session.begin():
        if engine.dialect.name == "postgresql":
            # As the bulk load: readers go on, writers (PySpur, DeleteRun)
            # wait, so that what is checked below holds until the commit.
            session.execute(text("LOCK TABLE runs, tasks IN SHARE ROW EXCLUSIVE MODE"))
            psycopg: Any = session.connection().connection.driver_connection
            with psycopg.cursor() as cur:  # (in this transaction)
                ever = issued(cur, "runs")[0]
        else:
            ever = session.scalar(select(Run._intid).order_by(Run._intid.desc()).limit(1)) or 0
        if not ever:
            return None
        ours = demo_workflow_ids(session)
        chosen = select(Run.id, Run.workflow_id).where(Run.id.in_(IDS))
        held = {run_id: workflow_id for run_id, workflow_id in session.execute(chosen)}
        others = tuple(run_id for run_id in IDS if run_id in held and held[run_id] not in ours)
        if others:
            if not ours or not session.scalar(select(exists().where(Run.workflow_id.in_(ours)))):
                return None  # no demo here yet: a first seed
            return PutBack(tuple(ours), 0, others=others)
        demos, created = workflows_in(session, now)
        planner = Planner(Catalog(demos), DEFAULT_RUNS, now_ms)
        # The first rows of a fresh database's plain seed: the showcase.
        rows = list(islice(planner.rows(), SHOWCASE_RUNS))
        templates = planner.catalog.templates
        for i, tpl, t0, parent, run_type in rows:  # parents first (plan order)
            run = templates[tpl]
            values = {
                "workflow_id": run.workflow_id,
                "workflow_version_id": run.version_id,
                "parent_run_id": None if parent is None else f"R{parent}",
                "status": RunStatus(run.status),
                "run_type": run_type,
                "initial_inputs": _load(run.initial_inputs),
                "input_dataset_id": None,
                "start_time": _time(t0),
                "end_time": _time(t0, run.end_off),
                "outputs": _load(run.outputs),
                "output_file_id": None,
            }
            if f"R{i}" in held:
                session.execute(update(Run).where(Run._intid == i).values(**values))
                session.execute(delete(Task).where(Task.run_id == f"R{i}"))
            else:
                session.execute(insert(Run).values(_intid=i, **values))
            for task in run.tasks:  # (their ids: the table's next ones)
                session.execute(
                    insert(Task).values(
                        run_id=f"R{i}",
                        node_id=task.node_id,
                        status=TaskStatus(task.status),
                        inputs=_load(task.inputs),
                        outputs=_load(task.outputs),
                        error=task.error,
                        start_time=_time(t0, task.start_off),
                        end_time=_time(t0, task.end_off),
                    )
                )
        return PutBack(
            tuple(ids[0] for _, ids in demos),
            created,
            recreated=tuple(run_id for run_id in IDS if run_id not in held),
            reset=tuple(run_id for run_id in IDS if run_id in held),
            showcase=dict(planner.tally.showcase),
            batch_children=planner.tally.batch_children,
        )
