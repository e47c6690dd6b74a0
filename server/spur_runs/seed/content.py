"""The demo content of `spur-runs seed`: three PySpur workflows (support
tickets, invoices, blog posts), the inputs their runs get, and the sizes of
a seed (tasks per run, the window the runs start in)."""

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)


TASKS_PER_RUN = 6
WINDOW = timedelta(days=14)
CHUNK_RUNS = 50_000
# Above this many runs the progress bar shows by default (on a terminal).
PROGRESS_THRESHOLD = 10_000
# The runs a first plain `spur-runs seed` adds: the showcase and a few more.
DEFAULT_RUNS = 20

EPOCH = datetime(1970, 1, 1)


# ---------------------------------------------------------------------------
# The demo workflows


@dataclass(frozen=True)
class Sample:
    """One realistic input of a demo workflow and what each node made of it."""

    inputs: dict[str, Any]
    first_llm: dict[str, Any]
    route: str
    approval: dict[str, Any]
    second_llm: dict[str, Any]
    output: dict[str, Any]


@dataclass(frozen=True)
class Demo:
    name: str
    description: str
    # (node id, node type, title, config), in execution order
    nodes: tuple[tuple[str, str, str, dict[str, Any]], ...]
    samples: tuple[Sample, ...]

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


def _support_samples() -> tuple[Sample, ...]:
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
        Sample(
            inputs={"ticket_id": ticket_id, "subject": subject},
            first_llm={"category": category, "urgency": urgency, "summary": summary},
            route="route1",
            approval={"decision": "APPROVE", "approved_by": "maria.lopez"},
            second_llm={"reply": reply},
            output={"ticket_id": ticket_id, "reply": reply},
        )
        for ticket_id, subject, category, urgency, summary, reply in tickets
    )


def _invoice_samples() -> tuple[Sample, ...]:
    invoices = [
        ("INV-0318", "Northwind", 12480.0, "EUR", "PO-7781"),
        ("INV-0319", "Contoso", 6120.5, "USD", "PO-7790"),
        ("INV-0320", "Fabrikam", 845.2, "USD", "PO-7794"),
        ("INV-0321", "Tailspin", 23900.0, "EUR", "PO-7802"),
        ("INV-0322", "Adatum", 9800.0, "GBP", "PO-7810"),
    ]
    return tuple(
        Sample(
            inputs={"invoice": number, "vendor": vendor},
            first_llm={"total": total, "currency": currency, "po": po},
            route="route1",
            approval={"decision": "APPROVE", "approved_by": "finance.lead"},
            second_llm={"subject": f"{number} approved: {currency} {total:,.2f}"},
            output={"invoice": number, "approved": True},
        )
        for number, vendor, total, currency, po in invoices
    )


def _blog_samples() -> tuple[Sample, ...]:
    posts = [
        ("Lessons from PostgreSQL 15", "dana", 7, "Five lessons from moving to PG 15"),
        ("Why CI takes 9 minutes", "omar", 6, "From 40 to 9 minutes of CI"),
        ("Keyset pagination", "sofia", 8, "Keyset pagination, gently"),
        ("On-call without burnout", "kenji", 5, "On-call rules that stick"),
        ("Idempotent APIs", "amara", 7, "Idempotent APIs in practice"),
    ]
    return tuple(
        Sample(
            inputs={"title": title, "author": author},
            first_llm={"score": score, "issues": ["long intro"]},
            route="route1",
            approval={"decision": "APPROVE", "approved_by": "editor.ruth"},
            second_llm={"headline": headline},
            output={"headline": headline, "publish": True},
        )
        for title, author, score, headline in posts
    )


def demos() -> tuple[Demo, ...]:
    return (
        Demo(
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
        Demo(
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
        Demo(
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
