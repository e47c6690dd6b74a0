"""The cache of workflow versions, as messages with their parsed graph.

Versions are immutable in PySpur, so a version is read and converted once;
`load` is the one load-through (what is missing is read, then added) that
GetRun, ListRuns, ListTasks and WatchRun share.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Row

from spur.runs.v1 import run_pb2

from ..store import runs
from .convert import definition_problem, graph_of, version_to_message
from .spliced import version_field
from .workflow import WorkflowGraph

# A cached version: its message, its graph, the message encoded as a Run's
# workflow_version field (spliced.py puts those bytes in responses), and why
# its definition cannot be served, if it cannot (convert.definition_problem).
Entry = tuple[run_pb2.WorkflowVersion, WorkflowGraph, bytes, str | None]


class VersionCache:
    """Workflow versions as messages, with their parsed graph, by
    (id, definition_hash). Versions are immutable in PySpur; keying on the
    hash as well means a reused id with another definition is a miss."""

    def __init__(self, capacity: int = 1024) -> None:
        self._entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        # The same versions without their definition (RUN_VIEW_BASIC), built
        # once per version rather than copied and cleared per run.
        # With its bytes as a Run's field (spliced.py), as for the whole one.
        self._basic: dict[tuple[str, str], tuple[run_pb2.WorkflowVersion, bytes]] = {}
        self._capacity = capacity
        self._lock = threading.Lock()

    def missing(self, keys: Iterable[tuple[str, str] | None]) -> list[str]:
        with self._lock:
            return sorted({k[0] for k in keys if k is not None and k not in self._entries})

    def add(self, rows: Sequence[Row[Any]]) -> None:
        built = {(r.id, r.definition_hash): _entry(r) for r in rows}
        with self._lock:
            self._entries.update(built)
            while len(self._entries) > self._capacity:
                evicted, _ = self._entries.popitem(last=False)
                self._basic.pop(evicted, None)

    def get(self, key: tuple[str, str] | None) -> Entry | None:
        if key is None:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        return entry

    def basic(self, key: tuple[str, str] | None) -> run_pb2.WorkflowVersion | None:
        """The version of `key` without its definition, if it is cached."""
        found = self.basic_field(key)
        return None if found is None else found[0]

    def basic_field(
        self, key: tuple[str, str] | None
    ) -> tuple[run_pb2.WorkflowVersion, bytes] | None:
        """The same, with its bytes as a Run's workflow_version field."""
        if key is None:
            return None
        with self._lock:
            found = self._basic.get(key)
            entry = self._entries.get(key)
            if found is None and entry is not None:
                message = run_pb2.WorkflowVersion()
                message.CopyFrom(entry[0])
                message.ClearField("definition")
                found = self._basic[key] = (message, version_field(message))
        return found

    def load(self, conn: Connection, keys: Iterable[tuple[str, str] | None]) -> None:
        """Load-through: read the versions of `keys` that are not cached (one
        statement, none when all are) and cache them."""
        missing = self.missing(keys)
        if missing:
            self.add(runs.get_versions(conn, missing))


def _entry(row: Row[Any]) -> Entry:
    problem = definition_problem(row)  # (walks the definition: once)
    message = version_to_message(row, problem)
    return message, graph_of(row), version_field(message), problem
