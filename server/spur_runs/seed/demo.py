"""`spur-runs demo`: demo runs that move, so that WatchRun has changes to show.

It plays PySpur's engine: its own process, writing the demo workflows' runs
with plain SQL statements on the same database, one change per transaction
(a run starts, a task starts, a task completes, the run completes), a change
every --step-seconds. First it takes over the RUNNING or PENDING runs of the
demo workflows that `spur-runs seed` made (on a fresh database: R5), then it
starts new runs of the demo workflows (PENDING, 6 tasks PENDING), so that
--concurrent runs are always moving. Each run goes

    run PENDING -> RUNNING; per task, in node order: PENDING -> RUNNING ->
    COMPLETED (inputs, outputs, times); run -> COMPLETED (outputs, end_time)

with the inputs and outputs of the seed's completed runs (the approver
approves). It stops on SIGINT or SIGTERM (after the change being written),
after --seconds, or once --runs runs have completed; exit 0.

A separate command rather than `seed --live`: seed adds runs in bulk and
ends, before `serve` starts in README's first command; the demo runs beside
the server, and adds one run at a time, so that the ids `seed` printed stay
what they were.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import OperationalError

from ..store.engine import WRITE_OPTION, create_db_engine
from ..store.models import Run, RunStatus, Task, TaskStatus
from .plan import Catalog, RunTemplate
from .workflows import ensure_workflows

log = logging.getLogger(__name__)

# Writes in a row that may fail (each tried again at the next tick) before
# the demo gives up with the error.
MAX_FAILURES = 10
_ANY = TaskStatus.PENDING  # (no task moves)


def _now() -> datetime:
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _key(workflow_id: str, initial_inputs: Any) -> tuple[str, str]:
    return workflow_id, json.dumps(initial_inputs, sort_keys=True)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass
class _Moving:
    """A run being moved: its tasks' ids and statuses in node order, and
    the completed run whose inputs and outputs it takes on."""

    run_id: str
    status: RunStatus
    tasks: list[tuple[str, TaskStatus]]
    plan: RunTemplate
    title: str


class Demo:
    def __init__(
        self,
        engine: Engine,
        say: Callable[[str], None],
        concurrent: int = 1,
        runs: int = 0,
    ) -> None:
        self.engine = engine
        self.writer = engine.execution_options(**{WRITE_OPTION: True})
        self.say = say
        self.concurrent = concurrent
        self.runs = runs  # stop after this many completed (0: never)
        demos, _created = ensure_workflows(engine, _now())
        catalog = Catalog(demos)
        self.titles = {ids[0]: demo.name for demo, ids in demos}
        # The completed runs of the seed, by (workflow, inputs): what a
        # run of those inputs becomes. New runs take them in turn.
        self.plans = [t for t in catalog.templates if t.status == RunStatus.COMPLETED.value]
        self.by_inputs = {_key(t.workflow_id, _load(t.initial_inputs)): t for t in self.plans}
        self.started = 0
        self.completed = 0
        self.moving: list[_Moving] = []

    # -- choosing runs --------------------------------------------------

    def adopt(self) -> None:
        """Take over the demo workflows' unfinished runs (RUNNING, PENDING),
        oldest first, up to --concurrent: the seed's running run first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Run.id, Run.workflow_id, Run.status, Run.initial_inputs)
                .where(
                    Run.status.in_([RunStatus.RUNNING, RunStatus.PENDING]),
                    Run.workflow_id.in_(list(self.titles)),
                )
                .order_by(Run._intid)
                .limit(100)
            ).all()
            for run_id, workflow_id, status, inputs in rows:
                if len(self.moving) >= self.concurrent:
                    return
                plan = self.by_inputs.get(_key(workflow_id, inputs))
                tasks = self._tasks(conn, run_id)
                if plan is None or [t.node_id for t in plan.tasks] != [n for _, n, _ in tasks]:
                    continue  # not a run of the seed's making: leave it alone
                self.moving.append(
                    _Moving(
                        run_id,
                        status,
                        [(task_id, task_status) for task_id, _, task_status in tasks],
                        plan,
                        self.titles[workflow_id],
                    )
                )
                self.say(f"{run_id}: moving it ({self.titles[workflow_id]}, {status.value})")

    @staticmethod
    def _tasks(conn: Connection, run_id: str) -> list[tuple[str, str, TaskStatus]]:
        rows = conn.execute(
            select(Task.id, Task.node_id, Task.status)
            .where(Task.run_id == run_id)
            .order_by(Task._intid)
        ).all()
        return [(task_id, node_id, status) for task_id, node_id, status in rows]

    def start_run(self) -> None:
        """A new run, as PySpur's run endpoint makes one: PENDING, with its
        inputs and a start time, and a PENDING task per node."""
        plan = self.plans[self.started % len(self.plans)]
        self.started += 1
        with self.writer.begin() as conn:
            run_id = conn.execute(
                insert(Run)
                .values(
                    workflow_id=plan.workflow_id,
                    workflow_version_id=plan.version_id,
                    status=RunStatus.PENDING,
                    run_type="interactive",
                    initial_inputs=_load(plan.initial_inputs),
                    start_time=_now(),
                )
                .returning(Run.id)
            ).scalar_one()
            tasks = []
            for task in plan.tasks:
                tasks.append(
                    conn.execute(
                        insert(Task)
                        .values(run_id=run_id, node_id=task.node_id, status=TaskStatus.PENDING)
                        .returning(Task.id)
                    ).scalar_one()
                )
        title = self.titles[plan.workflow_id]
        self.moving.append(
            _Moving(
                run_id, RunStatus.PENDING, [(t, TaskStatus.PENDING) for t in tasks], plan, title
            )
        )
        self.say(f"{run_id}: started ({title})")

    # -- moving them ----------------------------------------------------

    @staticmethod
    def _next_change(moving: _Moving, now: datetime) -> tuple[Any, RunStatus, int, TaskStatus]:
        """The run's next UPDATE, the run's status after it, and the index
        and status after it of the task it moves (-1: none)."""
        if moving.status is RunStatus.PENDING:
            statement = update(Run).where(Run.id == moving.run_id)
            return statement.values(status=RunStatus.RUNNING), RunStatus.RUNNING, -1, _ANY
        k = next(
            (k for k, (_, status) in enumerate(moving.tasks) if status is not TaskStatus.COMPLETED),
            None,
        )
        if k is None:
            statement = update(Run).where(Run.id == moving.run_id)
            statement = statement.values(
                status=RunStatus.COMPLETED, end_time=now, outputs=_load(moving.plan.outputs)
            )
            return statement, RunStatus.COMPLETED, -1, _ANY
        task_id, status = moving.tasks[k]
        planned = moving.plan.tasks[k]
        if status is TaskStatus.RUNNING:
            new = TaskStatus.COMPLETED
            values = {"status": new, "end_time": now, "outputs": _load(planned.outputs)}
        else:  # PENDING (or PAUSED: the approver approves)
            new = TaskStatus.RUNNING
            values = {"status": new, "start_time": now, "inputs": _load(planned.inputs)}
        return update(Task).where(Task.id == task_id).values(**values), moving.status, k, new

    def step(self, moving: _Moving) -> bool:
        """Write the run's next change, in one transaction; True when the
        run is finished (completed, or deleted meanwhile). What it notes of
        the run changes only once the write has committed: a failed write is
        tried again at the next tick."""
        statement, run_status, k, task_status = self._next_change(moving, _now())
        with self.writer.begin() as conn:
            changed = conn.execute(statement).rowcount
        if not changed:
            self.say(f"{moving.run_id}: gone (deleted?), no longer moving it")
            return True
        moving.status = run_status
        if k >= 0:
            moving.tasks[k] = (moving.tasks[k][0], task_status)
        if moving.status is RunStatus.COMPLETED:
            self.completed += 1
            self.say(f"{moving.run_id}: COMPLETED")
            return True
        return False

    def tick(self, stopping: threading.Event | None = None) -> None:
        """One change to each moving run; new runs in place of finished ones.
        Once `stopping` is set, no further change: each one may wait for the
        write lock (busy_timeout), and a tick of --concurrent of them could
        keep a SIGTERM waiting for many of those waits."""
        for moving in list(self.moving):
            if stopping is not None and stopping.is_set():
                return
            if self.step(moving):
                self.moving.remove(moving)
        while len(self.moving) < self.concurrent and (
            not self.runs or self.completed + len(self.moving) < self.runs
        ):
            if stopping is not None and stopping.is_set():
                return
            self.start_run()

    def done(self) -> bool:
        return bool(self.runs) and self.completed >= self.runs


def run_demo(
    database_url: str,
    *,
    step_seconds: float = 1.0,
    seconds: float = 0.0,
    runs: int = 0,
    concurrent: int = 1,
    stopping: threading.Event | None = None,
    say: Callable[[str], None] = print,
) -> int:
    """Move runs until `stopping` is set, `seconds` have passed (0: no
    bound) or `runs` runs have completed (0: no bound); the number of runs
    it completed."""
    stopping = stopping or threading.Event()
    engine = create_db_engine(database_url, pool_size=1)
    try:
        demo = Demo(engine, say, concurrent=concurrent, runs=runs)
        ends = None if not seconds else time.monotonic() + seconds
        say(
            f"demo: a change every {step_seconds:g} s to {concurrent} run(s) at a time"
            + (f", for {seconds:g} s" if seconds else "")
            + (f", until {runs} run(s) completed" if runs else "")
            + "; Ctrl-C stops"
        )
        demo.adopt()
        failures = 0
        while not stopping.is_set() and not demo.done():
            began = time.monotonic()
            try:
                demo.tick(stopping)
                failures = 0
            except OperationalError as error:
                # A lock held past the busy timeout (SQLite), a dropped
                # connection: try again at the next tick, a few times.
                failures += 1
                if failures >= MAX_FAILURES:
                    raise
                log.warning("demo: a write failed (%s); trying again", error.orig or error)
            if demo.done() or (ends is not None and time.monotonic() >= ends):
                break
            wait = step_seconds - (time.monotonic() - began)
            if ends is not None:
                wait = min(wait, ends - time.monotonic())
            stopping.wait(max(0.0, wait))
        say(f"demo: stopped, {demo.completed} run(s) completed")
        return demo.completed
    finally:
        engine.dispose()
