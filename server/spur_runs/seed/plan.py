"""Run templates (everything about a run but its ids and start time, a few
hundred of them, pre-serialized) and the plan: which template each new run
uses, when it starts and its parent, a few numbers per run."""

import json
import logging
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..store.models import RunStatus, TaskStatus
from .content import TASKS_PER_RUN, WINDOW, Demo, Sample

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Run templates: everything about a run but its ids and start time


COMPLETED, FAILED_FIRST, FAILED_SECOND, PAUSED, CANCELED, RUNNING = (
    "completed",
    "failed_first",
    "failed_second",
    "paused",
    "canceled",
    "running",
)
SCENARIOS = (COMPLETED, FAILED_FIRST, FAILED_SECOND, PAUSED, CANCELED, RUNNING)
VARIANTS = 3  # timing variants of each (workflow, sample, scenario)

_ERRORS = (
    "Traceback (most recent call last):\n"
    '  File "/pyspur/backend/pyspur/execution/workflow_executor.py", line 627, in _execute_node\n'
    "    output = await node_instance(node_input)\n"
    '  File "/pyspur/backend/pyspur/nodes/llm/single_llm_call.py", line 243, in run\n'
    "    assistant_message_str = await generate_text(\n"
    "litellm.exceptions.RateLimitError: litellm.RateLimitError: OpenAIException - Rate limit "
    "reached for gpt-4o in organization org-demo on tokens per min (TPM): Limit 30000, "
    "Used 29870, Requested 1245.\n",
    "Traceback (most recent call last):\n"
    '  File "/pyspur/backend/pyspur/execution/workflow_executor.py", line 627, in _execute_node\n'
    "    output = await node_instance(node_input)\n"
    '  File "/pyspur/backend/pyspur/nodes/llm/single_llm_call.py", line 243, in run\n'
    "    assistant_message_str = await generate_text(\n"
    "litellm.exceptions.Timeout: litellm.Timeout: Connection timed out after 60.0 seconds.\n",
    "Traceback (most recent call last):\n"
    '  File "/pyspur/backend/pyspur/execution/workflow_executor.py", line 627, in _execute_node\n'
    "    output = await node_instance(node_input)\n"
    '  File "/pyspur/backend/pyspur/nodes/base.py", line 212, in __call__\n'
    "    self.output = self.output_model.model_validate(output)\n"
    "pydantic_core._pydantic_core.ValidationError: 1 validation error for Output\n"
    "  Field required [type=missing, input_value={'note': 'n/a'}, input_type=dict]\n",
)
_DECLINE = {"decision": "DECLINE", "declined_by": "maria.lopez"}


@dataclass(frozen=True)
class _TaskTemplate:
    k: int
    node_id: str
    status: str
    inputs: str | None
    outputs: str | None
    error: str | None
    start_off: int | None  # milliseconds after the run's start
    end_off: int | None


@dataclass(frozen=True)
class RunTemplate:
    workflow_id: str
    version_id: str
    status: str
    initial_inputs: str
    outputs: str | None
    end_off: int | None
    last_off: int  # the latest time any of its timestamps is after the start
    tasks: tuple[_TaskTemplate, ...]


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _durations(rng: random.Random, node_types: Sequence[str]) -> list[int]:
    """Milliseconds each node takes, by its type."""
    spans = {
        "InputNode": (2, 9),
        "SingleLLMCallNode": (700, 7_000),
        "RouterNode": (1, 6),
        "HumanInterventionNode": (40_000, 3 * 3_600_000),  # waiting for a person
        "OutputNode": (1, 5),
    }
    return [rng.randint(*spans[node_type]) for node_type in node_types]


def _template(
    demo: Demo, ids: tuple[str, str], sample: Sample, scenario: str, rng: random.Random
) -> RunTemplate:
    node_ids = demo.node_ids
    titles = [node[2] for node in demo.nodes]
    node_outputs: list[dict[str, Any]] = [
        sample.inputs,
        sample.first_llm,
        {sample.route: sample.first_llm},
        sample.approval,
        sample.second_llm,
        sample.output,
    ]
    # PySpur records no inputs for the InputNode, and for the others their
    # predecessor's output under its title.
    node_inputs: list[dict[str, Any]] = [{}] + [
        {titles[k - 1]: node_outputs[k - 1]} for k in range(1, TASKS_PER_RUN)
    ]
    statuses = [TaskStatus.COMPLETED.value] * TASKS_PER_RUN
    run_status = RunStatus.COMPLETED.value
    error: str | None = None
    if scenario in (FAILED_FIRST, FAILED_SECOND):
        stop = 1 if scenario == FAILED_FIRST else 4  # an LLM call fails
        statuses[stop] = TaskStatus.FAILED.value
        statuses[stop + 1 :] = [TaskStatus.CANCELED.value] * (TASKS_PER_RUN - stop - 1)
        run_status = RunStatus.FAILED.value
        error = rng.choice(_ERRORS)
    elif scenario == PAUSED:
        statuses[3] = TaskStatus.PAUSED.value
        statuses[4:] = [TaskStatus.PENDING.value] * 2
        run_status = RunStatus.PAUSED.value
    elif scenario == CANCELED:
        statuses[3:] = [TaskStatus.CANCELED.value] * 3
        node_outputs[3] = _DECLINE
        run_status = RunStatus.CANCELED.value
    elif scenario == RUNNING:
        statuses[1] = TaskStatus.RUNNING.value
        statuses[2:] = [TaskStatus.PENDING.value] * 4
        run_status = RunStatus.RUNNING.value

    durations = _durations(rng, [node[1] for node in demo.nodes])
    tasks = []
    clock = 0  # ms after the run's start

    def ran(k: int) -> tuple[int, int]:
        nonlocal clock
        start, end = clock, clock + durations[k]
        clock = end + rng.randint(3, 40)
        return start, end

    for k in range(TASKS_PER_RUN):
        status = statuses[k]
        start: int | None = None
        end: int | None = None
        inputs: Any = node_inputs[k]
        outputs: Any = None
        task_error: str | None = None
        if status == TaskStatus.COMPLETED.value:
            start, end = ran(k)
            outputs = node_outputs[k]
        elif status == TaskStatus.FAILED.value:
            start, end = ran(k)
            task_error = error
        elif status in (TaskStatus.PAUSED.value, TaskStatus.RUNNING.value):
            start = clock  # still waiting, or still running
        elif status == TaskStatus.CANCELED.value and scenario == CANCELED and k == 3:
            start, end = ran(k)  # the approver declined
            outputs = node_outputs[k]
        elif status == TaskStatus.CANCELED.value:
            # Never ran: PySpur stamps the time it gave up on the node.
            start = end = clock
            inputs = None
            task_error = None if scenario == CANCELED else "Upstream failure"
        else:  # PENDING behind a pause or a running node
            inputs = None
        tasks.append(
            _TaskTemplate(
                k, node_ids[k], status, _dump(inputs), _dump(outputs), task_error, start, end
            )
        )
    last = max(t for task in tasks for t in (task.start_off, task.end_off, 0) if t is not None)
    finished = run_status in (
        RunStatus.COMPLETED.value,
        RunStatus.FAILED.value,
        RunStatus.CANCELED.value,
    )
    run_end = last if finished else None
    run_outputs = {node_ids[-1]: sample.output} if run_status == RunStatus.COMPLETED.value else None
    return RunTemplate(
        workflow_id=ids[0],
        version_id=ids[1],
        status=run_status,
        initial_inputs=_dump({node_ids[0]: sample.inputs}) or "{}",
        outputs=_dump(run_outputs),
        end_off=run_end,
        last_off=last,
        tasks=tuple(tasks),
    )


class Catalog:
    """All templates, and the ones to pick from by workflow and scenario."""

    def __init__(self, demos: Sequence[tuple[Demo, tuple[str, str]]]) -> None:
        rng = random.Random("spur-runs demo templates")
        self.templates: list[RunTemplate] = []
        self.by: dict[tuple[int, str], list[int]] = {}
        # The same (workflow, sample, variant) in each scenario: to swap a
        # run's scenario for one that fits before `now`.
        self.twin: dict[tuple[int, str], int] = {}
        for w, (demo, ids) in enumerate(demos):
            for sample in demo.samples:
                for _variant in range(VARIANTS):
                    group = {}
                    for scenario in SCENARIOS:
                        index = len(self.templates)
                        self.templates.append(_template(demo, ids, sample, scenario, rng))
                        self.by.setdefault((w, scenario), []).append(index)
                        group[scenario] = index
                    for index in group.values():
                        for scenario, other in group.items():
                            self.twin[(index, scenario)] = other
        self.workflows = len(demos)


# ---------------------------------------------------------------------------
# The plan: which template each new run uses, when it starts, its parent

# Scenario weights of a run of the random part, in percent.
# None RUNNING: the random part ended hours ago (the showcase has the one
# running run, which `spur-runs demo` moves).
_WEIGHTS = {COMPLETED: 85, FAILED_FIRST: 5, FAILED_SECOND: 3, PAUSED: 4, CANCELED: 3}
_SCENARIO_TABLE = [s for s, weight in _WEIGHTS.items() for _ in range(weight)]
BATCH_SHARE = 0.02  # of the groups in the random part
# The random part ends this long before now: the showcase runs, all younger,
# come first in ListRuns (newest first).
RANDOM_PART_ENDS = 12 * 3_600_000

# The showcase: the first runs of every seed, in this order, so that a fresh
# database always has them under the same ids (R1 ... R9), which README's
# examples use: (label, scenario, runs, ms before now). With --runs below 9,
# those that fit, in this order. The agos exceed the longest approval wait
# (3 h) for the runs that have ended after one.
SHOWCASE: tuple[tuple[str, str, int, int], ...] = (
    ("batch", "batch", 4, 8 * 3_600_000),  # a batch run and its 3 children
    ("running", RUNNING, 1, 5_000),
    ("paused", PAUSED, 1, 2 * 3_600_000),
    ("failed", FAILED_SECOND, 1, 5 * 3_600_000),
    ("canceled", CANCELED, 1, 4 * 3_600_000),
    ("completed", COMPLETED, 1, 6 * 3_600_000),
)

# How many runs the showcase is: R1 ... R9 on a fresh database.
SHOWCASE_RUNS = sum(size for _, _, size, _ in SHOWCASE)

PlanRow = tuple[int, int, int, int | None, str]  # (i, template, t0 ms, parent i, run_type)


@dataclass
class _Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    children: int = 0
    showcase: dict[str, int] = field(default_factory=dict)  # plan index by SHOWCASE label
    batch_children: int = 0  # of the showcase's batch run


class Planner:
    def __init__(self, catalog: Catalog, runs: int, now_ms: int) -> None:
        self.catalog = catalog
        self.runs = runs
        self.now_ms = now_ms
        # Seeded by `runs` alone: the same --runs always plans the same runs,
        # and a plain seed's showcase is the same whether written by the
        # bulk load or put back (showcase.py).
        self.rng = random.Random(f"spur-runs seed {runs}")
        self.tally = _Tally()

    def _fit(self, template: int, t0: int) -> int:
        """A template whose timestamps all lie before now: a run that started
        minutes ago is still waiting for its approver, or running."""
        templates = self.catalog.templates
        if t0 + templates[template].last_off <= self.now_ms:
            return template
        for scenario in (PAUSED, RUNNING):
            other = self.catalog.twin[(template, scenario)]
            if t0 + templates[other].last_off <= self.now_ms:
                return other
        return self.catalog.twin[(template, RUNNING)]

    def _row(self, i: int, template: int, t0: int, parent: int | None, run_type: str) -> PlanRow:
        template = self._fit(template, t0)
        self.tally.statuses[self.catalog.templates[template].status] += 1
        if parent is not None:
            self.tally.children += 1
        return (i, template, t0, parent, run_type)

    def _batch(self, i: int, t0: int, children: int, w: int) -> Iterator[PlanRow]:
        by, rng = self.catalog.by, self.rng
        yield self._row(i, rng.choice(by[(w, COMPLETED)]), t0, None, "batch")
        for j in range(1, children + 1):
            scenario = COMPLETED if rng.random() < 0.9 else FAILED_SECOND
            child_t0 = t0 + 1_500 * j + rng.randrange(1_000)
            yield self._row(i + j, rng.choice(by[(w, scenario)]), child_t0, i, "interactive")

    def rows(self) -> Iterator[PlanRow]:
        """Plan rows in _intid order, i = 1..runs: the showcase, then the
        random part. The random generator's seed does not depend on the time,
        so the same --runs always plans the same runs (relative to now)."""
        n, rng, by = self.runs, self.rng, self.catalog.by
        workflows = self.catalog.workflows
        i = 1
        for w, (label, scenario, size, ago) in enumerate(SHOWCASE):
            if size > n - i + 1:
                continue
            t0 = self.now_ms - ago
            self.tally.showcase[label] = i
            if scenario == "batch":
                self.tally.batch_children = size - 1
                yield from self._batch(i, t0, size - 1, w % workflows)
            else:
                yield self._row(i, by[(w % workflows, scenario)][0], t0, None, "interactive")
            i += size
        random_runs = n - i + 1
        start = self.now_ms - int(WINDOW.total_seconds() * 1000)
        step = max(1, (self.now_ms - RANDOM_PART_ENDS - start) // max(random_runs, 1))
        first = i
        while i <= n:
            t0 = start + (i - first) * step + rng.randrange(step)
            w = rng.randrange(workflows)
            left = n - i
            if left >= 3 and rng.random() < BATCH_SHARE:
                children = min(rng.randint(3, 8), left)
                yield from self._batch(i, t0, children, w)
                i += children + 1
                continue
            scenario = _SCENARIO_TABLE[rng.randrange(100)]
            yield self._row(i, rng.choice(by[(w, scenario)]), t0, None, "interactive")
            i += 1


def chunked(rows: Iterator[PlanRow], size: int) -> Iterator[list[PlanRow]]:
    chunk: list[PlanRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
