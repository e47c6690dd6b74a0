"""What the tests of api/_wire (tests/unit/test_wire*.py) share: a task row
in store.statements.TASK_COLUMNS' order, a workflow graph, and what
api/convert.py builds of rows and values through upb, to compare with."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from google.protobuf import struct_pb2

from spur.runs.v1 import run_pb2
from spur_runs.api import convert, wire
from spur_runs.api.workflow import WorkflowGraph
from spur_runs.store.models import TaskStatus

T0 = datetime(2026, 11, 2, 9, 0, 0, 123456)

GRAPH = WorkflowGraph({"node0": "InputNode", "node1": "LLMNode"}, {"node0": ("node1", "node2")})


# JSON documents of every shape: {} and [] at every depth, scalars.
DOCUMENTS: list[Any] = [
    {},
    [],
    {"a": {}},
    {"a": []},
    {"a": [{}]},
    {"a": [[]]},
    [{}, [], [[{}]], {"b": {}}],
    {"a": {"b": {"c": {}}}, "d": [1, "x", None, True, 2.5, {"e": []}]},
    {"input_node": {"ticket_id": "TCK-1", "tags": []}, "n": 0, "f": False},
    "text",
    3,
    None,
    True,
]


def upb_value(document: Any) -> struct_pb2.Value:
    """What convert.set_value builds of a JSON value."""
    value = struct_pb2.Value()
    convert.set_value(value, document)
    return value


def task_row(n: int = 0, **columns: Any) -> tuple[Any, ...]:
    """A task row in store.statements.TASK_COLUMNS' order."""
    row = {
        "_intid": n,
        "id": f"T{n}",
        "run_id": "R1",
        "node_id": f"node{n % 3}",
        "parent_task_id": None,
        "status": TaskStatus.COMPLETED,
        "inputs": {"q": "x", "n": n},
        "outputs": {"a": [1, {}, []]},
        "error": None,
        "start_time": T0,
        "end_time": T0 + timedelta(seconds=n),
        "subworkflow": None,
        "subworkflow_output": None,
    }
    row.update(columns)
    return tuple(row.values())


def upb_tasks(rows: list[tuple[Any, ...]], paused: frozenset[str] = frozenset()) -> bytes:
    """What convert.add_tasks builds, as a Run's tasks fields."""
    run = run_pb2.Run()
    convert.add_tasks(run.tasks, rows, paused, GRAPH)
    return run.SerializeToString()


def wired(rows: list[tuple[Any, ...]], paused: frozenset[str] = frozenset()) -> bytes | None:
    """What api/_wire writes of them (wire.tasks_field), or None if refused."""
    return wire.tasks_field(rows, paused, GRAPH)
