"""What the service derives from a workflow definition (the JSON PySpur keeps
in workflow_versions.definition): the type of each node and which nodes are
downstream of others. Versions are immutable, so this is computed once per
version and cached (see api/versions.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WorkflowGraph:
    node_types: dict[str, str] = field(default_factory=dict)
    # node id -> ids of the nodes its links lead to
    successors: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_definition(cls, definition: Any) -> WorkflowGraph:
        if not isinstance(definition, dict):
            return cls()
        node_types: dict[str, str] = {}
        # Lists as PySpur writes them; anything else (a database we did not
        # make) is a graph without nodes or links, not an error.
        nodes = definition.get("nodes")
        for node in nodes if isinstance(nodes, list) else ():
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                node_type = node.get("node_type")
                node_types[node["id"]] = node_type if isinstance(node_type, str) else ""
        successors: dict[str, list[str]] = {}
        links = definition.get("links")
        for link in links if isinstance(links, list) else ():
            if not isinstance(link, dict):
                continue
            source, target = link.get("source_id"), link.get("target_id")
            if isinstance(source, str) and isinstance(target, str):
                successors.setdefault(source, []).append(target)
        return cls(node_types, {k: tuple(v) for k, v in successors.items()})

    def downstream_of(self, sources: Iterable[str]) -> frozenset[str]:
        """Nodes reachable from any of `sources` by following at least one link."""
        seen: set[str] = set()
        stack = [t for s in sources for t in self.successors.get(s, ())]
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(self.successors.get(node, ()))
        return frozenset(seen)
