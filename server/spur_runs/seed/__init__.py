"""`spur-runs seed`: demo workflows and runs, quickly, in bulk.

Three demo workflows (support tickets, invoices, blog posts), each with one
version whose definition is a six-node PySpur workflow:

    InputNode -> SingleLLMCallNode -> RouterNode -> HumanInterventionNode
              -> SingleLLMCallNode -> OutputNode

and runs of them with one task per node: mostly COMPLETED, some FAILED (the
failing task holds a traceback, the ones after it are CANCELED, as PySpur's
executor leaves them), some PAUSED at the human-approval node (the tasks after
it PENDING), some CANCELED (the approver declined), and "batch" runs whose
"interactive" children point at them through parent_run_id. Every seed starts
with the same showcase (SHOWCASE: a batch run with three children, a running
run, a paused, a failed, a canceled and a completed one), which a fresh
database therefore always gets as R1 ... R9, the ids README's examples use;
the rest is planned from a random generator seeded by --runs alone. Start
times are naive UTC datetimes: the showcase's in the last 8 hours, the rest
spread over the 14 days before. Seeding again reuses the demo workflows
(found by their unique names) and adds more runs.

Speed: a million runs (six million tasks) load in well under a minute on
SQLite. Python builds only a *plan*, a few numbers per run (template, start
time, parent), in a thread, and a few hundred pre-serialized run/task
*templates*; the database expands them with one INSERT ... SELECT per chunk of
50,000 runs, in C, writing explicit `_intid` values from which the ids ("R…",
"T…") are computed; everything in one transaction. The plan reaches SQLite as
one JSON array per chunk (json_each), PostgreSQL through COPY. On SQLite the
load skips the per-row foreign-key checks and, when no other connection has
the file open, leaves WAL mode for its duration (each page is then written
once, not twice). On PostgreSQL the `_intid` sequences (SERIAL) are then moved
past the new rows, so PySpur's next insert does not collide.

The package, one job a module: content.py (the demo workflows and sizes),
plan.py (run templates and the plan), workflows.py (the demo workflows in the
database), load.py (what both loaders share), sqlite.py and postgres.py (the
loaders), this module (the entry point), and demo.py (`spur-runs demo`, which
moves seeded runs as PySpur would).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..store.db import create_db_engine
from .content import EPOCH, PROGRESS_THRESHOLD, TASKS_PER_RUN, definition_hash
from .load import Progress
from .plan import Catalog, Planner
from .postgres import load_postgres
from .sqlite import load_sqlite
from .workflows import ensure_workflows

log = logging.getLogger(__name__)

__all__ = ["TASKS_PER_RUN", "SeedSummary", "definition_hash", "ensure_workflows", "seed"]


# ---------------------------------------------------------------------------
# The entry point


@dataclass(frozen=True)
class SeedSummary:
    """What one seed() call added."""

    workflow_ids: tuple[str, ...]  # the demo workflows (created or reused)
    workflows_created: int
    runs: int
    tasks: int
    child_runs: int
    status_counts: tuple[tuple[str, int], ...]  # runs added, by status
    first_run_id: str | None
    last_run_id: str | None
    # The showcase (SHOWCASE), None for those a small --runs left out. On a
    # fresh database: R1 (children R2..R4), R5, R6, R7, R8, R9.
    batch_run_id: str | None  # a "batch" run with children
    batch_child_ids: tuple[str, ...]
    running_run_id: str | None
    paused_run_id: str | None
    failed_run_id: str | None
    canceled_run_id: str | None
    completed_run_id: str | None
    seconds: float

    def __str__(self) -> str:
        statuses = ", ".join(f"{count} {status}" for status, count in self.status_counts)
        reused = len(self.workflow_ids) - self.workflows_created
        lines = [
            f"seeded {self.runs} runs ({self.tasks} tasks, {self.child_runs} of them child "
            f"runs) in {self.seconds:.1f} s",
            f"demo workflows: {', '.join(self.workflow_ids)} "
            f"({self.workflows_created} created, {reused} reused)",
        ]
        if self.runs:
            lines.append(f"runs: {self.first_run_id} .. {self.last_run_id}: {statuses}")
        if self.batch_run_id:
            children = self.batch_child_ids
            lines.append(f"batch run: {self.batch_run_id} (children {children[0]}..{children[-1]})")
        for label, run_id in (
            ("running", self.running_run_id),
            ("paused", self.paused_run_id),
            ("failed", self.failed_run_id),
            ("canceled", self.canceled_run_id),
            ("completed", self.completed_run_id),
        ):
            if run_id:
                lines.append(f"{label} run: {run_id}")
        return "\n".join(lines)


def seed(database_url: str, runs: int = 20, *, progress: bool | None = None) -> SeedSummary:
    """Add the demo workflows (unless there) and `runs` new runs of them."""
    return _seed(database_url, runs, progress=progress)


def _seed(
    database_url: str,
    runs: int,
    *,
    progress: bool | None = None,
    now: datetime | None = None,
) -> SeedSummary:
    if runs < 0:
        raise ValueError(f"runs must be >= 0, not {runs}")
    began = time.perf_counter()
    now = now or datetime.now(UTC).replace(tzinfo=None)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    now_ms = (now - EPOCH) // timedelta(milliseconds=1)
    show = progress if progress is not None else runs >= PROGRESS_THRESHOLD and sys.stderr.isatty()
    engine = create_db_engine(database_url, pool_size=1)
    try:
        demos, created = ensure_workflows(engine, now)
        catalog = Catalog(demos)
        backend = engine.dialect.name
        planner = Planner(catalog, runs, now_ms)
        bar = Progress(runs, show)
        try:
            if backend == "sqlite":
                run_base, _ = load_sqlite(engine, catalog, planner, bar)
            elif backend == "postgresql":
                run_base, _ = load_postgres(engine, catalog, planner, bar)
            else:
                raise RuntimeError(f"seed supports SQLite and PostgreSQL, not {backend}")
        finally:
            bar.close()
    finally:
        engine.dispose()

    tally = planner.tally

    def run_id(label: str) -> str | None:
        index = tally.showcase.get(label)
        return None if index is None else f"R{run_base + index}"

    batch = tally.showcase.get("batch")
    summary = SeedSummary(
        workflow_ids=tuple(ids[0] for _, ids in demos),
        workflows_created=created,
        runs=runs,
        tasks=runs * TASKS_PER_RUN,
        child_runs=tally.children,
        status_counts=tuple(sorted(tally.statuses.items(), key=lambda item: -item[1])),
        first_run_id=f"R{run_base + 1}" if runs else None,
        last_run_id=f"R{run_base + runs}" if runs else None,
        batch_run_id=run_id("batch"),
        batch_child_ids=()
        if batch is None
        else tuple(f"R{run_base + batch + j}" for j in range(1, tally.batch_children + 1)),
        running_run_id=run_id("running"),
        paused_run_id=run_id("paused"),
        failed_run_id=run_id("failed"),
        canceled_run_id=run_id("canceled"),
        completed_run_id=run_id("completed"),
        seconds=time.perf_counter() - began,
    )
    log.debug("seed: %s", str(summary).replace("\n", "; "))
    return summary
