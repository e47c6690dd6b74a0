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
spread over the 14 days before. Seeding again with --runs reuses the demo
workflows (found by their unique names) and adds more runs; without it, on a
database that has had runs, it puts the showcase back at R1 ... R9 and adds
nothing (showcase.py), so that README's walkthrough, which deletes and
changes some of them, works again after README's first command is run again.

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
loaders), showcase.py (the showcase put back), this module (the entry point),
and demo.py (`spur-runs demo`, which moves seeded runs as PySpur would).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from ..config import ConfigError
from ..store.engine import create_db_engine, shown_url
from ..store.models import RunStatus
from ..store.runs import run_status_labels
from .content import DEFAULT_RUNS, EPOCH, PROGRESS_THRESHOLD, TASKS_PER_RUN, definition_hash
from .load import Progress
from .plan import Catalog, Planner
from .postgres import load_postgres
from .showcase import IDS, PutBack, put_back
from .sqlite import load_sqlite
from .workflows import ensure_workflows

log = logging.getLogger(__name__)

__all__ = ["TASKS_PER_RUN", "SeedSummary", "definition_hash", "ensure_workflows", "seed"]


# ---------------------------------------------------------------------------
# The entry point


@dataclass(frozen=True)
class SeedSummary:
    """What one seed() call did: the runs it added, or the showcase it put
    back (showcase.py)."""

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
    # A plain seed that added no runs: the showcase's ids it wrote anew
    # (recreated: they were missing), or those that hold runs of other
    # workflows (then it wrote nothing).
    recreated: tuple[str, ...] = ()
    reset: tuple[str, ...] = ()
    others: tuple[str, ...] = ()

    def _did(self) -> str:
        if self.others:
            return (
                f"seeded nothing: the demo has runs here already, and README's ids "
                f"{IDS[0]}..{IDS[-1]} hold runs of other workflows ({', '.join(self.others)}); "
                "`spur-runs seed --runs N` adds N more demo runs"
            )
        if self.recreated or self.reset:
            done = [
                f"{verb} {', '.join(ids)}"
                for verb, ids in (("re-created", self.recreated), ("reset", self.reset))
                if ids
            ]
            return (
                f"put the demo's runs {IDS[0]}..{IDS[-1]} back as seeded in {self.seconds:.1f} s "
                f"({'; '.join(done)}), added no runs"
            )
        return (
            f"seeded {self.runs} runs ({self.tasks} tasks, {self.child_runs} of them child "
            f"runs) in {self.seconds:.1f} s"
        )

    def __str__(self) -> str:
        statuses = ", ".join(f"{count} {status}" for status, count in self.status_counts)
        reused = len(self.workflow_ids) - self.workflows_created
        lines = [
            self._did(),
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


def seed(
    database_url: str, runs: int | None = None, *, progress: bool | None = None
) -> SeedSummary:
    """Add the demo workflows (unless there) and `runs` new runs of them.

    Without `runs` (README's first command): on a database that has had
    runs, put the showcase back at R1..R9 and add none (showcase.py); else
    add DEFAULT_RUNS."""
    return _seed(database_url, runs, progress=progress)


def _seed(
    database_url: str,
    runs: int | None,
    *,
    progress: bool | None = None,
    now: datetime | None = None,
) -> SeedSummary:
    if runs is not None and runs < 0:
        raise ValueError(f"runs must be >= 0, not {runs}")
    began = time.perf_counter()
    now = now or datetime.now(UTC).replace(tzinfo=None)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    now_ms = (now - EPOCH) // timedelta(milliseconds=1)
    engine = create_db_engine(database_url, pool_size=1)
    try:
        _require_every_run_status(engine)
        if runs is None:
            done = put_back(engine, now, now_ms)
            if done is not None:
                return _put_back_summary(done, time.perf_counter() - began)
            runs = DEFAULT_RUNS
        show = (
            progress if progress is not None else runs >= PROGRESS_THRESHOLD and sys.stderr.isatty()
        )
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
    summary = SeedSummary(
        workflow_ids=tuple(ids[0] for _, ids in demos),
        workflows_created=created,
        runs=runs,
        tasks=runs * TASKS_PER_RUN,
        child_runs=tally.children,
        status_counts=tuple(sorted(tally.statuses.items(), key=lambda item: -item[1])),
        first_run_id=f"R{run_base + 1}" if runs else None,
        last_run_id=f"R{run_base + runs}" if runs else None,
        **_showcase_ids(tally.showcase, tally.batch_children, run_base),
        seconds=time.perf_counter() - began,
    )
    log.debug("seed: %s", str(summary).replace("\n", "; "))
    return summary


def _require_every_run_status(engine: Engine) -> None:
    """ConfigError, before anything is written, where the database's
    `runstatus` type lacks a status the demo's runs have: PySpur's own
    migrations make it without CANCELED (run R8), and the load failed part
    way with PostgreSQL's "invalid input value for enum", exit 1, after the
    demo workflows were added. (Served, such a database is fine: store/runs.py.)"""
    if engine.dialect.name != "postgresql":
        return  # SQLite: a plain string column
    with engine.connect() as connection:
        labels = run_status_labels(connection)
    lacking = [status.value for status in RunStatus if status.value not in labels]
    if lacking:
        raise ConfigError(
            f"{shown_url(engine.url)}'s run status type lacks {', '.join(lacking)} (PySpur's own "
            "migrations make it so), which the demo's runs have: seed a database that "
            "`spur-runs migrate` created"
        )


def _showcase_ids(showcase: dict[str, int], batch_children: int, run_base: int) -> dict[str, Any]:
    """SeedSummary's showcase fields, from the plan's index of each label."""

    def run_id(label: str) -> str | None:
        index = showcase.get(label)
        return None if index is None else f"R{run_base + index}"

    batch = showcase.get("batch")
    return {
        "batch_run_id": run_id("batch"),
        "batch_child_ids": ()
        if batch is None
        else tuple(f"R{run_base + batch + j}" for j in range(1, batch_children + 1)),
        **{f"{label}_run_id": run_id(label) for label in _LABELS},
    }


_LABELS = ("running", "paused", "failed", "canceled", "completed")


def _put_back_summary(done: PutBack, seconds: float) -> SeedSummary:
    summary = SeedSummary(
        workflow_ids=done.workflow_ids,
        workflows_created=done.workflows_created,
        runs=0,
        tasks=0,
        child_runs=0,
        status_counts=(),
        first_run_id=None,
        last_run_id=None,
        **_showcase_ids(done.showcase, done.batch_children, 0),
        seconds=seconds,
        recreated=done.recreated,
        reset=done.reset,
        others=done.others,
    )
    log.debug("seed: %s", str(summary).replace("\n", "; "))
    return summary
