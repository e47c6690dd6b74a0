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
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import random
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from ..store.db import WRITE_OPTION, create_db_engine
from ..store.models import RunStatus, TaskStatus, Workflow, WorkflowVersion

log = logging.getLogger(__name__)

TASKS_PER_RUN = 6
WINDOW = timedelta(days=14)
CHUNK_RUNS = 50_000
# Above this many runs the progress bar shows by default (on a terminal).
PROGRESS_THRESHOLD = 10_000

_EPOCH = datetime(1970, 1, 1)
_T = TypeVar("_T")


# ---------------------------------------------------------------------------
# The demo workflows


@dataclass(frozen=True)
class _Sample:
    """One realistic input of a demo workflow and what each node made of it."""

    inputs: dict[str, Any]
    first_llm: dict[str, Any]
    route: str
    approval: dict[str, Any]
    second_llm: dict[str, Any]
    output: dict[str, Any]


@dataclass(frozen=True)
class _Demo:
    name: str
    description: str
    # (node id, node type, title, config), in execution order
    nodes: tuple[tuple[str, str, str, dict[str, Any]], ...]
    samples: tuple[_Sample, ...]

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(node[0] for node in self.nodes)

    def definition(self) -> dict[str, Any]:
        ids = self.node_ids
        router = ids[2]
        route = next(iter(self.nodes[2][3]["route_map"]))
        links = []
        for source, target in zip(ids, ids[1:], strict=False):
            link: dict[str, Any] = {
                "source_id": source,
                "target_id": target,
                "source_handle": source,
                "target_handle": source,
            }
            if source == router:
                link["source_handle"] = route
                link["target_handle"] = f"{router}.{route}"
            links.append(link)
        return {
            "nodes": [
                {
                    "id": node_id,
                    "node_type": node_type,
                    "title": title,
                    "parent_id": None,
                    "config": config,
                    "coordinates": {"x": 380 * n, "y": 0},
                }
                for n, (node_id, node_type, title, config) in enumerate(self.nodes)
            ],
            "links": links,
            "test_inputs": [{"id": 1, **self.samples[0].inputs}],
            "spur_type": "workflow",
        }


def _llm(title: str, system: str, user: str, schema: dict[str, str]) -> dict[str, Any]:
    properties = {name: {"type": kind} for name, kind in schema.items()}
    return {
        "title": title,
        "llm_info": {"model": "openai/gpt-4o", "max_tokens": 1024, "temperature": 0.2, "top_p": 1},
        "system_message": system,
        "user_message": user,
        "few_shot_examples": None,
        "output_schema": schema,
        "output_json_schema": json.dumps({"type": "object", "properties": properties}),
        "has_fixed_output": False,
    }


def _router(title: str, variable: str, operator: str, value: Any) -> dict[str, Any]:
    return {
        "title": title,
        "route_map": {
            "route1": {
                "conditions": [
                    {
                        "variable": variable,
                        "operator": operator,
                        "value": value,
                        "logicalOperator": "AND",
                    }
                ]
            }
        },
    }


def _human(title: str, message: str) -> dict[str, Any]:
    return {"title": title, "message": message, "block_only_dependent_nodes": True}


def _input(schema: dict[str, str]) -> dict[str, Any]:
    return {"output_schema": schema, "has_fixed_output": False, "enforce_schema": False}


def _output(mapping: dict[str, str]) -> dict[str, Any]:
    return {
        "title": "Output",
        "output_schema": {key: "string" for key in mapping},
        "output_map": mapping,
    }


def _support_samples() -> tuple[_Sample, ...]:
    tickets = [
        (
            "TCK-1042",
            "Charged twice for order 5521",
            "refund",
            "high",
            "Double charge on order 5521",
            "Hi Ana, we refunded the duplicate $49 charge.",
        ),
        (
            "TCK-1043",
            "Cannot log in after reset",
            "account",
            "medium",
            "Login fails after password reset",
            "Hi John, please sign in again; we reset it.",
        ),
        (
            "TCK-1044",
            "Mug arrived broken",
            "refund",
            "medium",
            "Damaged item, photo attached",
            "Hi Mei, a replacement ships today.",
        ),
        (
            "TCK-1045",
            "Wrong VAT number on invoice",
            "billing",
            "low",
            "Needs corrected invoice",
            "Hi Petr, the corrected invoice is attached.",
        ),
        (
            "TCK-1046",
            "Cancel my subscription",
            "account",
            "low",
            "Cancel at renewal",
            "Hi Léa, your plan ends on 2026-12-01.",
        ),
    ]
    return tuple(
        _Sample(
            inputs={"ticket_id": ticket_id, "subject": subject},
            first_llm={"category": category, "urgency": urgency, "summary": summary},
            route="route1",
            approval={"decision": "APPROVE", "approved_by": "maria.lopez"},
            second_llm={"reply": reply},
            output={"ticket_id": ticket_id, "reply": reply},
        )
        for ticket_id, subject, category, urgency, summary, reply in tickets
    )


def _invoice_samples() -> tuple[_Sample, ...]:
    invoices = [
        ("INV-0318", "Northwind", 12480.0, "EUR", "PO-7781"),
        ("INV-0319", "Contoso", 6120.5, "USD", "PO-7790"),
        ("INV-0320", "Fabrikam", 845.2, "USD", "PO-7794"),
        ("INV-0321", "Tailspin", 23900.0, "EUR", "PO-7802"),
        ("INV-0322", "Adatum", 9800.0, "GBP", "PO-7810"),
    ]
    return tuple(
        _Sample(
            inputs={"invoice": number, "vendor": vendor},
            first_llm={"total": total, "currency": currency, "po": po},
            route="route1",
            approval={"decision": "APPROVE", "approved_by": "finance.lead"},
            second_llm={"subject": f"{number} approved: {currency} {total:,.2f}"},
            output={"invoice": number, "approved": True},
        )
        for number, vendor, total, currency, po in invoices
    )


def _blog_samples() -> tuple[_Sample, ...]:
    posts = [
        ("Lessons from PostgreSQL 15", "dana", 7, "Five lessons from moving to PG 15"),
        ("Why CI takes 9 minutes", "omar", 6, "From 40 to 9 minutes of CI"),
        ("Keyset pagination", "sofia", 8, "Keyset pagination, gently"),
        ("On-call without burnout", "kenji", 5, "On-call rules that stick"),
        ("Idempotent APIs", "amara", 7, "Idempotent APIs in practice"),
    ]
    return tuple(
        _Sample(
            inputs={"title": title, "author": author},
            first_llm={"score": score, "issues": ["long intro"]},
            route="route1",
            approval={"decision": "APPROVE", "approved_by": "editor.ruth"},
            second_llm={"headline": headline},
            output={"headline": headline, "publish": True},
        )
        for title, author, score, headline in posts
    )


def _demos() -> tuple[_Demo, ...]:
    return (
        _Demo(
            name="Demo: Support ticket triage",
            description="Classifies a support ticket, asks a human to approve refunds, "
            "drafts the reply.",
            nodes=(
                (
                    "input_node",
                    "InputNode",
                    "input_node",
                    _input({"ticket_id": "string", "subject": "string"}),
                ),
                (
                    "classify_ticket",
                    "SingleLLMCallNode",
                    "ClassifyTicket",
                    _llm(
                        "ClassifyTicket",
                        "You triage customer support tickets. Answer with the category "
                        "(refund, account, billing), the urgency and a one-line summary.",
                        "Ticket {{input_node.ticket_id}}: {{input_node.subject}}",
                        {"category": "string", "urgency": "string", "summary": "string"},
                    ),
                ),
                (
                    "route_by_category",
                    "RouterNode",
                    "RouteByCategory",
                    _router("RouteByCategory", "ClassifyTicket.category", "is_not_empty", ""),
                ),
                (
                    "approve_reply",
                    "HumanInterventionNode",
                    "ApproveReply",
                    _human("ApproveReply", "Check the category before we answer the customer"),
                ),
                (
                    "draft_reply",
                    "SingleLLMCallNode",
                    "DraftReply",
                    _llm(
                        "DraftReply",
                        "You write short, friendly replies to customers.",
                        "Ticket summary: {{ClassifyTicket.summary}}",
                        {"reply": "string"},
                    ),
                ),
                (
                    "output_node",
                    "OutputNode",
                    "Output",
                    _output({"ticket_id": "input_node.ticket_id", "reply": "DraftReply.reply"}),
                ),
            ),
            samples=_support_samples(),
        ),
        _Demo(
            name="Demo: Invoice approval",
            description="Extracts the fields of a vendor invoice, routes large amounts to a "
            "manager, notifies accounts payable.",
            nodes=(
                (
                    "input_node",
                    "InputNode",
                    "input_node",
                    _input({"invoice": "string", "vendor": "string"}),
                ),
                (
                    "extract_fields",
                    "SingleLLMCallNode",
                    "ExtractFields",
                    _llm(
                        "ExtractFields",
                        "Extract the total, currency and PO number from the invoice.",
                        "Invoice {{input_node.invoice}} from {{input_node.vendor}}",
                        {"total": "number", "currency": "string", "po": "string"},
                    ),
                ),
                (
                    "check_amount",
                    "RouterNode",
                    "CheckAmount",
                    _router("CheckAmount", "ExtractFields.total", "greater_than", 500),
                ),
                (
                    "manager_approval",
                    "HumanInterventionNode",
                    "ManagerApproval",
                    _human("ManagerApproval", "Invoices over 500 need a manager's approval"),
                ),
                (
                    "notify_payables",
                    "SingleLLMCallNode",
                    "NotifyPayables",
                    _llm(
                        "NotifyPayables",
                        "Write the subject line of a note to accounts payable.",
                        "{{input_node.invoice}}: {{ExtractFields.total}} "
                        "{{ExtractFields.currency}}",
                        {"subject": "string"},
                    ),
                ),
                (
                    "output_node",
                    "OutputNode",
                    "Output",
                    _output(
                        {"invoice": "input_node.invoice", "approved": "ManagerApproval.decision"}
                    ),
                ),
            ),
            samples=_invoice_samples(),
        ),
        _Demo(
            name="Demo: Blog post review",
            description="Reviews a blog draft, sends it to an editor for sign-off, writes the "
            "headline and teaser.",
            nodes=(
                (
                    "input_node",
                    "InputNode",
                    "input_node",
                    _input({"title": "string", "author": "string"}),
                ),
                (
                    "critique_draft",
                    "SingleLLMCallNode",
                    "CritiqueDraft",
                    _llm(
                        "CritiqueDraft",
                        "You are a technical editor. Score the draft from 1 to 10 and list issues.",
                        "{{input_node.title}} by {{input_node.author}}",
                        {"score": "integer", "issues": "array"},
                    ),
                ),
                (
                    "route_by_score",
                    "RouterNode",
                    "RouteByScore",
                    _router("RouteByScore", "CritiqueDraft.score", "greater_than", 4),
                ),
                (
                    "editor_signoff",
                    "HumanInterventionNode",
                    "EditorSignoff",
                    _human("EditorSignoff", "An editor signs off before publishing"),
                ),
                (
                    "write_teaser",
                    "SingleLLMCallNode",
                    "WriteTeaser",
                    _llm(
                        "WriteTeaser",
                        "Write a headline for the post.",
                        "{{input_node.title}}; issues: {{CritiqueDraft.issues}}",
                        {"headline": "string"},
                    ),
                ),
                (
                    "output_node",
                    "OutputNode",
                    "Output",
                    _output(
                        {"headline": "WriteTeaser.headline", "publish": "EditorSignoff.decision"}
                    ),
                ),
            ),
            samples=_blog_samples(),
        ),
    )


def definition_hash(definition: dict[str, Any]) -> str:
    """As PySpur computes it (pyspur.utils.workflow_version_utils)."""
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode("utf-8")).hexdigest()


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
class _RunTemplate:
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
    demo: _Demo, ids: tuple[str, str], sample: _Sample, scenario: str, rng: random.Random
) -> _RunTemplate:
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
    return _RunTemplate(
        workflow_id=ids[0],
        version_id=ids[1],
        status=run_status,
        initial_inputs=_dump({node_ids[0]: sample.inputs}) or "{}",
        outputs=_dump(run_outputs),
        end_off=run_end,
        last_off=last,
        tasks=tuple(tasks),
    )


class _Catalog:
    """All templates, and the ones to pick from by workflow and scenario."""

    def __init__(self, demos: Sequence[tuple[_Demo, tuple[str, str]]]) -> None:
        rng = random.Random("spur-runs demo templates")
        self.templates: list[_RunTemplate] = []
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

PlanRow = tuple[int, int, int, int | None, str]  # (i, template, t0 ms, parent i, run_type)


@dataclass
class _Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    children: int = 0
    showcase: dict[str, int] = field(default_factory=dict)  # plan index by SHOWCASE label
    batch_children: int = 0  # of the showcase's batch run


class _Planner:
    def __init__(self, catalog: _Catalog, runs: int, now_ms: int, seed: str) -> None:
        self.catalog = catalog
        self.runs = runs
        self.now_ms = now_ms
        self.rng = random.Random(seed)
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


def _chunks(rows: Iterator[PlanRow], size: int) -> Iterator[list[PlanRow]]:
    chunk: list[PlanRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---------------------------------------------------------------------------
# Loading: plan and templates into temporary tables, expanded by the database


_RUN_TEMPLATE_COLUMNS = (
    "tpl, workflow_id, workflow_version_id, status, initial_inputs, outputs, end_off"
)
_TASK_TEMPLATE_COLUMNS = "tpl, k, node_id, status, inputs, outputs, error, start_off, end_off"


def _template_rows(catalog: _Catalog) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
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


def _expand_sql(ts: Callable[[str], str], run_base: int, task_base: int) -> tuple[str, str]:
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


def _sqlite_ts(ms: str) -> str:
    # SQLAlchemy's own text format for DateTime on SQLite: microseconds always.
    return f"(datetime(({ms}) / 1000, 'unixepoch') || printf('.%03d000', ({ms}) % 1000))"


def _postgres_ts(ms: str) -> str:
    return f"(TIMESTAMP '1970-01-01 00:00:00' + ({ms}) * INTERVAL '1 millisecond')"


class _Progress:
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


def _prefetch(items: Iterator[_T], depth: int = 2) -> Iterator[_T]:
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


def _pragma(db: Any, pragma: str) -> str:
    cursor = db.execute(f"PRAGMA {pragma}")
    try:
        return str(cursor.fetchone()[0])
    finally:
        cursor.close()


def _sqlite_journal(db: Any, mode: str) -> str | None:
    """Switch the journal mode if no other connection is in the way; returns
    the mode it had, or None when it could not be switched."""
    db.execute("PRAGMA busy_timeout=0")
    try:
        previous = _pragma(db, "journal_mode")
        if previous.lower() == mode.lower():
            return None
        now = _pragma(db, f"journal_mode={mode}")
        return previous if now.lower() == mode.lower() else None
    except sqlite3.OperationalError:  # another connection has the database open
        return None
    finally:
        db.execute("PRAGMA busy_timeout=5000")


_SQLITE_PLAN_INSERT = """
    INSERT INTO seed_plan (i, tpl, t0, parent, run_type)
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
           json_extract(value, '$[2]'), json_extract(value, '$[3]'),
           json_extract(value, '$[4]')
    FROM json_each(?)
"""


def _load_sqlite(
    engine: Engine, catalog: _Catalog, planner: _Planner, progress: _Progress
) -> tuple[int, int]:
    raw = engine.raw_connection()
    try:
        db: Any = raw.driver_connection  # sqlite3.Connection, autocommit (db.py)
        # The plan's rows reference only rows it writes itself or that exist:
        # skip the per-row foreign-key lookups for the load (a test runs
        # PRAGMA foreign_key_check afterwards), and do not fsync mid-load.
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA cache_size=-262144")  # 256 MiB for this connection
        db.execute("PRAGMA temp_store=MEMORY")
        # In WAL mode every page would be written twice (to the log, then
        # into the database at the checkpoint). A rollback journal copies only
        # the pages that existed before, and a bulk load mostly adds new ones.
        # Possible only while no other connection has the database open.
        previous_journal = _sqlite_journal(db, "DELETE")
        db.execute("BEGIN IMMEDIATE")
        try:
            run_base = db.execute("SELECT COALESCE(MAX(_intid), 0) FROM runs").fetchone()[0]
            task_base = db.execute("SELECT COALESCE(MAX(_intid), 0) FROM tasks").fetchone()[0]
            db.execute("DROP TABLE IF EXISTS temp.seed_plan")
            db.execute("DROP TABLE IF EXISTS temp.seed_run_tpl")
            db.execute("DROP TABLE IF EXISTS temp.seed_task_tpl")
            db.execute(
                "CREATE TEMP TABLE seed_plan (i INTEGER PRIMARY KEY, tpl INTEGER NOT NULL, "
                "t0 INTEGER NOT NULL, parent INTEGER, run_type TEXT NOT NULL)"
            )
            db.execute(
                "CREATE TEMP TABLE seed_run_tpl (tpl INTEGER PRIMARY KEY, workflow_id TEXT, "
                "workflow_version_id TEXT, status TEXT, initial_inputs TEXT, outputs TEXT, "
                "end_off INTEGER)"
            )
            db.execute(
                "CREATE TEMP TABLE seed_task_tpl (tpl INTEGER NOT NULL, k INTEGER NOT NULL, "
                "node_id TEXT, status TEXT, inputs TEXT, outputs TEXT, error TEXT, "
                "start_off INTEGER, end_off INTEGER, PRIMARY KEY (tpl, k)) WITHOUT ROWID"
            )
            run_rows, task_rows = _template_rows(catalog)
            db.executemany(f"INSERT INTO seed_run_tpl VALUES ({', '.join('?' * 7)})", run_rows)
            db.executemany(f"INSERT INTO seed_task_tpl VALUES ({', '.join('?' * 9)})", task_rows)
            runs_sql, tasks_sql = _expand_sql(_sqlite_ts, run_base, task_base)
            # The thread plans the next chunk (and serializes it) while
            # SQLite expands this one.
            planned = ((chunk, json.dumps(chunk)) for chunk in _chunks(planner.rows(), CHUNK_RUNS))
            for chunk, text in _prefetch(planned):
                db.execute("DELETE FROM seed_plan")
                db.execute(_SQLITE_PLAN_INSERT, (text,))
                db.execute(runs_sql)
                db.execute(tasks_sql)
                progress.update(len(chunk))
            db.execute("DROP TABLE temp.seed_plan")
            db.execute("DROP TABLE temp.seed_run_tpl")
            db.execute("DROP TABLE temp.seed_task_tpl")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            if previous_journal is not None:
                _sqlite_journal(db, previous_journal)
        if previous_journal is None:
            # The load went through the write-ahead log: fold it into the
            # database file rather than leave a log of gigabytes behind.
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
        return int(run_base), int(task_base)
    finally:
        raw.invalidate()  # pragmas changed: do not hand this connection out again
        raw.close()


def _load_postgres(
    engine: Engine, catalog: _Catalog, planner: _Planner, progress: _Progress
) -> tuple[int, int]:
    raw = engine.raw_connection()
    try:
        conn: Any = raw.driver_connection  # psycopg.Connection, in a transaction
        with conn.cursor() as cur:
            # Concurrent readers go on; a concurrent writer (PySpur) waits, so
            # that the ids taken below stay free.
            cur.execute("LOCK TABLE runs, tasks IN SHARE ROW EXCLUSIVE MODE")
            bases = []
            for table in ("runs", "tasks"):
                base = cur.execute(f"SELECT COALESCE(MAX(_intid), 0) FROM {table}").fetchone()[0]
                sequence = cur.execute(
                    "SELECT pg_get_serial_sequence(%s, '_intid')", (table,)
                ).fetchone()[0]
                if sequence is not None:
                    # Never hand out again an id the sequence already gave
                    # (its row may have been deleted since).
                    last, called = cur.execute(
                        f"SELECT last_value, is_called FROM {sequence}"
                    ).fetchone()
                    base = max(base, last if called else last - 1)
                bases.append((int(base), sequence))
            (run_base, run_sequence), (task_base, task_sequence) = bases
            cur.execute(
                "CREATE TEMP TABLE seed_plan (i integer PRIMARY KEY, tpl integer NOT NULL, "
                "t0 bigint NOT NULL, parent integer, run_type varchar NOT NULL) ON COMMIT DROP"
            )
            cur.execute(
                "CREATE TEMP TABLE seed_run_tpl (tpl integer PRIMARY KEY, workflow_id varchar, "
                "workflow_version_id varchar, status runstatus, initial_inputs json, "
                "outputs json, end_off bigint) ON COMMIT DROP"
            )
            cur.execute(
                "CREATE TEMP TABLE seed_task_tpl (tpl integer, k integer, node_id varchar, "
                "status taskstatus, inputs json, outputs json, error varchar, "
                "start_off bigint, end_off bigint, PRIMARY KEY (tpl, k)) ON COMMIT DROP"
            )
            run_rows, task_rows = _template_rows(catalog)
            with cur.copy(f"COPY seed_run_tpl ({_RUN_TEMPLATE_COLUMNS}) FROM STDIN") as copy:
                for row in run_rows:
                    copy.write_row(row)
            with cur.copy(f"COPY seed_task_tpl ({_TASK_TEMPLATE_COLUMNS}) FROM STDIN") as copy:
                for row in task_rows:
                    copy.write_row(row)
            runs_sql, tasks_sql = _expand_sql(_postgres_ts, run_base, task_base)
            planned = 0
            for chunk in _chunks(planner.rows(), CHUNK_RUNS):
                cur.execute("TRUNCATE seed_plan")
                with cur.copy("COPY seed_plan (i, tpl, t0, parent, run_type) FROM STDIN") as copy:
                    for row in chunk:
                        copy.write_row(row)
                cur.execute(runs_sql)
                cur.execute(tasks_sql)
                planned += len(chunk)
                progress.update(len(chunk))
            # Our explicit ids did not advance the SERIAL sequences: move them
            # past the new rows, or PySpur's next insert would collide.
            for sequence, last in (
                (run_sequence, run_base + planned),
                (task_sequence, task_base + planned * TASKS_PER_RUN),
            ):
                if sequence is not None and planned:
                    cur.execute("SELECT setval(%s, %s, true)", (sequence, last))
        conn.commit()
        if planned:
            # A bulk load leaves the planner without statistics until
            # autovacuum runs; meanwhile ListRuns' batched task query chose a
            # parallel scan of every task (804 ms a page on 1M runs, 8 ms after).
            with conn.cursor() as cur:
                cur.execute("ANALYZE runs")
                cur.execute("ANALYZE tasks")
            conn.commit()
        return run_base, task_base
    finally:
        raw.close()  # back to the pool, which rolls back what was not committed


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


def _ensure_workflows(
    engine: Engine, now: datetime
) -> tuple[list[tuple[_Demo, tuple[str, str]]], int]:
    """The demo workflows (found by name) and a version of each with the
    demo's definition, made unless there."""
    found = []
    created = 0
    writer = engine.execution_options(**{WRITE_OPTION: True})
    with Session(writer, expire_on_commit=False) as session, session.begin():
        for demo in _demos():
            spec = demo.definition()
            workflow = session.scalars(select(Workflow).where(Workflow.name == demo.name)).first()
            if workflow is None:
                workflow = Workflow(
                    name=demo.name,
                    description=demo.description,
                    definition=spec,
                    created_at=now,
                    updated_at=now,
                )
                session.add(workflow)
                session.flush()
                created += 1
            # The version with the demo's definition, as PySpur picks one
            # (pyspur.utils.workflow_version_utils): by definition hash, else a
            # new version after the latest (someone may have edited the demo).
            digest = definition_hash(spec)
            version = session.scalars(
                select(WorkflowVersion).where(
                    WorkflowVersion.workflow_id == workflow.id,
                    WorkflowVersion.definition_hash == digest,
                )
            ).first()
            if version is None:
                latest = session.scalar(
                    select(func.max(WorkflowVersion.version)).where(
                        WorkflowVersion.workflow_id == workflow.id
                    )
                )
                version = WorkflowVersion(
                    version=(latest or 0) + 1,
                    workflow_id=workflow.id,
                    name=demo.name,
                    description=demo.description,
                    definition=spec,
                    definition_hash=digest,
                    created_at=now,
                    updated_at=now,
                )
                session.add(version)
                session.flush()
            found.append((demo, (workflow.id, version.id)))
    return found, created


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
    now_ms = (now - _EPOCH) // timedelta(milliseconds=1)
    show = progress if progress is not None else runs >= PROGRESS_THRESHOLD and sys.stderr.isatty()
    engine = create_db_engine(database_url, pool_size=1)
    try:
        demos, created = _ensure_workflows(engine, now)
        catalog = _Catalog(demos)
        backend = engine.dialect.name
        planner = _Planner(catalog, runs, now_ms, seed=f"spur-runs seed {runs}")
        bar = _Progress(runs, show)
        try:
            if backend == "sqlite":
                run_base, _ = _load_sqlite(engine, catalog, planner, bar)
            elif backend == "postgresql":
                run_base, _ = _load_postgres(engine, catalog, planner, bar)
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
