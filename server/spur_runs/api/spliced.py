"""Responses whose runs' workflow versions are spliced in as cached bytes.

Every run of GetRun, ListRuns and GetChildRuns embeds its workflow version,
whose definition (a few kB) is the same for every run of that version.
Copying the cached message into each run (CopyFrom) and serializing it once
more per run was about a tenth of a list page's server CPU under load
(docs/performance.md, "Seventh step"). A `Spliced` response is the message
without those versions, beside the versions' own wire bytes, encoded once per
version (versions.VersionCache): `SerializeToString` puts each one in its run,
where protobuf's encoding of the whole message would have put it (the
fields of a message in field-number order, as upb writes them), and the
result parses to the same message.

The runs' tasks come the same way, as bytes: api/_wire.c writes a run's
Task messages straight from its task rows (convert.tasks_field), where
building them field by field through protobuf's Python API was the largest
part of a GetRun's own work (docs/performance.md, "Twenty-seventh step").

The servicer answers these when runtime/server.py asks it to: rpc/encode.py
serializes them for gRPC; the gateway parses the tasks into the message,
renders it, and puts each version's JSON, rendered once per version, in its
run (gateway/render.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError

from spur.runs.v1 import run_pb2

# The run (GetRunResponse.run) or runs (ListRunsResponse.runs,
# GetChildRunsResponse.runs): field 1, length-delimited, first on the wire.
_RUNS_TAG = 0x0A
_VERSION_FIELD = run_pb2.Run.WORKFLOW_VERSION_FIELD_NUMBER
_TASKS_FIELD = run_pb2.Run.TASKS_FIELD_NUMBER


class Parts(NamedTuple):
    """What one run's message was built without, as bytes to put in it."""

    # The workflow version: (message, its version_field bytes), or None.
    version: tuple[run_pb2.WorkflowVersion, bytes] | None
    # The run's tasks as Run.tasks fields (api/_wire.c), or b"".
    tasks: bytes
    # Adds the same tasks to a run's tasks as messages (convert.add_tasks):
    # for a run whose tasks are too deeply nested for protobuf's parser
    # (upb stops at 100 levels: ~33 levels of JSON objects), which the
    # gateway still renders.
    build: Callable[[Any], None] | None = None


def version_field(version: run_pb2.WorkflowVersion) -> bytes:
    """`version` encoded as a Run's workflow_version field: tag, length, bytes."""
    data = version.SerializeToString()
    return _varint((_VERSION_FIELD << 3) | 2) + _varint(len(data)) + data


class Spliced:
    """A response message whose runs lack their workflow version or their
    tasks, and per run (in order) the Parts to put in, or None for a run
    that has nothing to add."""

    __slots__ = ("message", "parts", "_data")

    def __init__(self, message: Any, parts: Sequence[Parts | None]) -> None:
        self.message = message
        self.parts = list(parts)
        self._data: bytes | None = None

    @property
    def versions(self) -> list[tuple[run_pb2.WorkflowVersion, bytes] | None]:
        """Each run's version to put in (the gateway renders it apart)."""
        return [None if part is None else part.version for part in self.parts]

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name: serializers call it
        """The whole message's wire bytes, made once: rpc/encode.py measures
        them before grpc's serializer sends them."""
        if self._data is None:
            self._data = self._splice()
        return self._data

    def _splice(self) -> bytes:
        data = self.message.SerializeToString()
        parts: list[bytes] = []
        pos = 0
        for part in self.parts:
            if data[pos] != _RUNS_TAG:
                raise ValueError("a spliced response must start with its runs")
            length, start = _read_varint(data, pos + 1)
            end = start + length
            if part is None:
                parts.append(data[pos:end])
            else:
                # Each where protobuf would have written it: fields in number
                # order, the version (4) before the tasks (10).
                run = data[start:end]
                pieces: list[bytes] = []
                at = 0
                if part.version is not None:
                    cut = _fields_below(run, _VERSION_FIELD)
                    pieces += (run[:cut], part.version[1])
                    at = cut
                if part.tasks:
                    cut = _fields_below(run, _TASKS_FIELD, at)
                    pieces += (run[at:cut], part.tasks)
                    at = cut
                pieces.append(run[at:])
                body = b"".join(pieces)
                parts += (bytes((_RUNS_TAG,)) + _varint(len(body)), body)
            pos = end
        parts.append(data[pos:])  # the response's own fields after its runs
        return b"".join(parts)

    def ByteSize(self) -> int:  # noqa: N802 - protobuf's name
        """The serialized size, or at most 5 bytes per run more (a run's
        length prefix may grow by that much): for bounds."""
        added = 0
        for part in self.parts:
            if part is not None:
                added += len(part.tasks) + 5
                if part.version is not None:
                    added += len(part.version[1])
        return int(self.message.ByteSize()) + added

    def runs(self) -> list[Any]:
        """The response's run messages, in order (each with its entry of
        `parts`)."""
        message = self.message
        return list(message.runs) if hasattr(message, "runs") else [message.run]

    def with_tasks(self) -> Any:
        """The message with its runs' tasks parsed in (their versions still
        apart): what the gateway renders."""
        if any(part is not None and part.tasks for part in self.parts):
            for run, part in zip(self.runs(), self.parts, strict=True):
                if part is not None and part.tasks:
                    try:
                        run.MergeFromString(part.tasks)  # appends to run.tasks
                    except DecodeError:
                        if part.build is None:
                            raise
                        del run.tasks[:]
                        part.build(run.tasks)
            self.parts = [None if p is None else Parts(p.version, b"") for p in self.parts]
        return self.message

    def materialize(self) -> Any:
        """The whole message: each run's tasks and version put in."""
        for run, part in zip(self.runs(), self.parts, strict=True):
            if part is not None and part.version is not None:
                run.workflow_version.CopyFrom(part.version[0])
        self.with_tasks()
        self.parts = [None] * len(self.parts)
        return self.message


def _fields_below(message: bytes, number: int, pos: int = 0) -> int:
    """The offset of the first field numbered `number` or more in `message`,
    from `pos` (the start of a field)."""
    size = len(message)
    while pos < size:
        # A Run's tags are one byte (field numbers below 16), and so are most
        # of its lengths: read those inline, the rest by _read_varint.
        tag = message[pos]
        if tag < 0x80:
            after = pos + 1
        else:
            tag, after = _read_varint(message, pos)
        if tag >> 3 >= number:
            return pos
        kind = tag & 7
        if kind == 2:  # length-delimited
            length = message[after]
            if length < 0x80:
                pos = after + 1 + length
            else:
                length, after = _read_varint(message, after)
                pos = after + length
        elif kind == 0:  # varint
            pos = _read_varint(message, after)[1]
        elif kind == 1:  # 64-bit
            pos = after + 8
        elif kind == 5:  # 32-bit
            pos = after + 4
        else:
            raise ValueError(f"unexpected wire type {kind}")
    return pos


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos`, and the offset after it."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
