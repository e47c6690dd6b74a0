# api/_wire_src/ (C): task rows and JSON values to protobuf wire bytes.
from collections.abc import Sequence
from typing import Any

class Refused(ValueError): ...

def encode_tasks(
    rows: Sequence[Any],
    node_types: dict[str, str],
    downstream: frozenset[str],
    statuses: tuple[Any, ...],
) -> bytes: ...
def encode_value(value: Any) -> bytes: ...
def encode_run(
    row: Sequence[Any],
    status: int,
    version: bytes | None,
    tasks: bytes,
    task_count: int,
    percentage: float,
    duration: float | None,
) -> tuple[bytes, int]: ...
