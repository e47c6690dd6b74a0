"""`seed` without a number of runs (seed/showcase.py) on real SQLite files
and a real PostgreSQL: on a database that has had runs, the showcase is put
back at R1..R9 as a fresh seed writes it, in one transaction, and nothing
that is not the demo's is written over."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from factories import add_run, add_workflow, all_done
from spur_runs.seed import seed
from spur_runs.store.engine import create_db_engine
from spur_runs.store.models import Run, RunStatus, Task, Workflow

pytestmark = pytest.mark.filterwarnings("ignore:Computed column:sqlalchemy.exc.SAWarning")

SHOWCASE = [f"R{i}" for i in range(1, 10)]


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    engine = create_db_engine(migrated_url, pool_size=2)
    yield engine
    engine.dispose()


def showcase(engine: Engine) -> dict[str, Any]:
    """R1..R9 and their tasks as a reader sees them, times relative to R5's
    start (a seed's times are relative to its now), task ids left out (the
    put-back tasks get new ones)."""
    with engine.connect() as conn:
        runs = {row.id: row for row in conn.execute(select(Run).where(Run.id.in_(SHOWCASE)))}
        tasks = conn.execute(
            select(Task).where(Task.run_id.in_(SHOWCASE)).order_by(Task._intid)
        ).all()
    origin = runs["R5"].start_time

    def at(moment: datetime | None) -> float | None:
        return None if moment is None else (moment - origin).total_seconds()

    shown: dict[str, Any] = {}
    for run_id, run in runs.items():
        shown[run_id] = {
            "run": (
                run._intid, run.workflow_id, run.workflow_version_id, run.parent_run_id,
                run.status, run.run_type, run.initial_inputs, run.input_dataset_id,
                at(run.start_time), at(run.end_time), run.outputs, run.output_file_id,
            ),
            "tasks": [
                (
                    task.node_id, task.parent_task_id, task.status, task.inputs, task.outputs,
                    task.error, at(task.start_time), at(task.end_time), task.subworkflow,
                    task.subworkflow_output,
                )
                for task in tasks
                if task.run_id == run_id
            ],
        }  # fmt: skip
    return shown


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)


def walk_through(engine: Engine) -> None:
    """README's walkthrough's changes, in SQL: R9, R8 and R1 (its children
    with it) deleted, R5 completed, as `spur-runs demo` leaves it."""
    gone = ["R1", "R2", "R3", "R4", "R8", "R9"]
    with engine.begin() as conn:
        conn.execute(delete(Task).where(Task.run_id.in_(gone)))
        conn.execute(delete(Run).where(Run.id.in_(gone[1:])))
        conn.execute(delete(Run).where(Run.id == "R1"))
        conn.execute(update(Run).where(Run.id == "R5").values(status=RunStatus.COMPLETED))


def test_the_showcase_is_put_back_as_a_fresh_seed_has_it(migrated_url: str, engine: Engine) -> None:
    first = seed(migrated_url)
    assert (first.runs, first.first_run_id, first.last_run_id) == (20, "R1", "R20")
    fresh = showcase(engine)
    walk_through(engine)
    again = seed(migrated_url)
    assert (again.runs, again.tasks, again.first_run_id) == (0, 0, None)
    assert again.recreated == ("R1", "R2", "R3", "R4", "R8", "R9")
    assert again.reset == ("R5", "R6", "R7")
    assert (again.batch_run_id, again.batch_child_ids) == ("R1", ("R2", "R3", "R4"))
    assert (again.running_run_id, again.completed_run_id) == ("R5", "R9")
    assert again.workflows_created == 0 and again.workflow_ids == first.workflow_ids
    assert showcase(engine) == fresh
    assert count(engine, Run) == 20 and count(engine, Task) == 120
    assert count(engine, Workflow) == 3


def test_runs_of_other_workflows_are_not_written_over(migrated_url: str, engine: Engine) -> None:
    """R1..R9 are PySpur's own: the first seed adds runs at the next ids, as
    seed always did; the next one writes nothing and says why."""
    with engine.begin() as conn:
        theirs = add_workflow(conn, "someone's")
        for _ in range(3):
            add_run(conn, theirs, tasks=all_done())
    with engine.begin() as conn:  # R2 deleted: a gap is theirs too
        conn.execute(delete(Task).where(Task.run_id == "R2"))
        conn.execute(delete(Run).where(Run.id == "R2"))
    first = seed(migrated_url)
    assert (first.runs, first.first_run_id, first.running_run_id) == (20, "R4", "R8")
    runs, tasks = count(engine, Run), count(engine, Task)
    again = seed(migrated_url)
    assert again.others == ("R1", "R3") and again.runs == 0
    assert not (again.recreated or again.reset or again.running_run_id)
    assert str(again).startswith("seeded nothing: the demo has runs here already, and README's")
    assert (count(engine, Run), count(engine, Task)) == (runs, tasks)


def test_a_put_back_that_fails_changes_nothing(migrated_url: str, engine: Engine) -> None:
    """All or nothing: a task elsewhere that names one of R6's tasks as its
    parent stops the put-back at R6 (its tasks cannot go), and R1..R5,
    re-created or reset by then, are as they were."""
    seed(migrated_url)
    walk_through(engine)
    with engine.begin() as conn:
        parent = conn.scalar(select(Task.id).where(Task.run_id == "R6").limit(1))
        conn.execute(update(Task).where(Task.run_id == "R10").values(parent_task_id=parent))
    before = showcase(engine), count(engine, Run), count(engine, Task)
    with pytest.raises(IntegrityError):
        seed(migrated_url)
    assert (showcase(engine), count(engine, Run), count(engine, Task)) == before
    assert set(showcase(engine)) == {"R5", "R6", "R7"}
