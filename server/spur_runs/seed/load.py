"""What both loaders share: the templates as rows, the INSERT ... SELECT that
expands the plan in the database, the progress bar and the plan's prefetch."""

import logging
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .content import TASKS_PER_RUN
from .plan import Catalog

log = logging.getLogger(__name__)

_T = TypeVar("_T")


# ---------------------------------------------------------------------------
# Loading: plan and templates into temporary tables, expanded by the database


RUN_TEMPLATE_COLUMNS = (
    "tpl, workflow_id, workflow_version_id, status, initial_inputs, outputs, end_off"
)
TASK_TEMPLATE_COLUMNS = "tpl, k, node_id, status, inputs, outputs, error, start_off, end_off"


def template_rows(catalog: Catalog) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    runs = [
        (n, t.workflow_id, t.version_id, t.status, t.initial_inputs, t.outputs, t.end_off)
        for n, t in enumerate(catalog.templates)
    ]
    tasks = [
        (n, k.k, k.node_id, k.status, k.inputs, k.outputs, k.error, k.start_off, k.end_off)
        for n, t in enumerate(catalog.templates)
        for k in t.tasks
    ]
    return runs, tasks


def expand_sql(ts: Callable[[str], str], run_base: int, task_base: int) -> tuple[str, str]:
    """INSERT ... SELECT statements that turn the plan into runs and tasks.

    The plan is the outer loop (SQLite's CROSS JOIN keeps that order), so rows
    go in in _intid order without a sort: appends to the table's B-tree.

    `ts(ms)` is the dialect's expression for a naive UTC timestamp from
    milliseconds since the epoch (NULL in, NULL out).
    """
    runs = f"""
        INSERT INTO runs (_intid, workflow_id, workflow_version_id, parent_run_id, status,
                          run_type, initial_inputs, start_time, end_time, outputs)
        SELECT {run_base} + p.i, r.workflow_id, r.workflow_version_id,
               'R' || ({run_base} + p.parent), r.status, p.run_type, r.initial_inputs,
               {ts("p.t0")}, {ts("p.t0 + r.end_off")}, r.outputs
        FROM seed_plan p CROSS JOIN seed_run_tpl r
        WHERE r.tpl = p.tpl
    """
    tasks = f"""
        INSERT INTO tasks (_intid, run_id, node_id, status, inputs, outputs, error,
                           start_time, end_time)
        SELECT {task_base} + (p.i - 1) * {TASKS_PER_RUN} + t.k + 1, 'R' || ({run_base} + p.i),
               t.node_id, t.status, t.inputs, t.outputs, t.error,
               {ts("p.t0 + t.start_off")}, {ts("p.t0 + t.end_off")}
        FROM seed_plan p CROSS JOIN seed_task_tpl t
        WHERE t.tpl = p.tpl
    """
    return runs, tasks


def sqlite_ts(ms: str) -> str:
    # SQLAlchemy's own text format for DateTime on SQLite: microseconds always.
    return f"(datetime(({ms}) / 1000, 'unixepoch') || printf('.%03d000', ({ms}) % 1000))"


def postgres_ts(ms: str) -> str:
    return f"(TIMESTAMP '1970-01-01 00:00:00' + ({ms}) * INTERVAL '1 millisecond')"


class Progress:
    def __init__(self, total: int, show: bool) -> None:
        self._bar: Any = None
        if show:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="run", unit_scale=True, desc="seed", file=sys.stderr)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def prefetch(items: Iterator[_T], depth: int = 2) -> Iterator[_T]:
    """`items`, computed by a thread ahead of the consumer.

    The plan is pure Python; SQLite expands the previous chunk meanwhile with
    the GIL released (one long sqlite3_step per INSERT ... SELECT), so the two
    cores each do half the work.
    """
    ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as error:  # handed to the consumer
            put(_Failure(error))

    worker = threading.Thread(target=produce, name="seed-plan", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()


@dataclass(frozen=True)
class _Failure:
    error: BaseException
