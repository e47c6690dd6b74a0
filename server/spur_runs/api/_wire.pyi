# api/_wire.c: task rows and JSON values to protobuf wire bytes.
from collections.abc import Sequence
from typing import Any

def encode_tasks(
    rows: Sequence[Any],
    node_types: dict[str, str],
    downstream: frozenset[str],
    statuses: dict[Any, Any],
) -> bytes: ...
def encode_value(value: Any) -> bytes: ...
