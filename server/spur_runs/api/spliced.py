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

The servicer answers these when runtime/server.py asks it to: rpc/encode.py
serializes them for gRPC; the gateway renders the message and puts each
version's JSON, rendered once per version, in its run (gateway/render.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spur.runs.v1 import run_pb2

# The run (GetRunResponse.run) or runs (ListRunsResponse.runs,
# GetChildRunsResponse.runs): field 1, length-delimited, first on the wire.
_RUNS_TAG = 0x0A
_VERSION_FIELD = run_pb2.Run.WORKFLOW_VERSION_FIELD_NUMBER


def version_field(version: run_pb2.WorkflowVersion) -> bytes:
    """`version` encoded as a Run's workflow_version field: tag, length, bytes."""
    data = version.SerializeToString()
    return _varint((_VERSION_FIELD << 3) | 2) + _varint(len(data)) + data


class Spliced:
    """A response message whose runs lack their workflow version, and per
    run (in order) the version to put in it: (message, its version_field
    bytes), or None for a run that has none to add."""

    __slots__ = ("message", "versions", "_data")

    def __init__(
        self, message: Any, versions: Sequence[tuple[run_pb2.WorkflowVersion, bytes] | None]
    ) -> None:
        self.message = message
        self.versions = versions
        self._data: bytes | None = None

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
        for version in self.versions:
            if data[pos] != _RUNS_TAG:
                raise ValueError("a spliced response must start with its runs")
            length, start = _read_varint(data, pos + 1)
            end = start + length
            if version is None:
                parts.append(data[pos:end])
            else:
                run = data[start:end]
                at = _fields_below(run, _VERSION_FIELD)
                field = version[1]
                parts.append(bytes((_RUNS_TAG,)) + _varint(length + len(field)))
                parts += (run[:at], field, run[at:])
            pos = end
        parts.append(data[pos:])  # the response's own fields after its runs
        return b"".join(parts)

    def ByteSize(self) -> int:  # noqa: N802 - protobuf's name
        """The serialized size, or at most 5 bytes per run more (a run's
        length prefix may grow by that much): for bounds."""
        added = sum(len(version[1]) + 5 for version in self.versions if version is not None)
        return int(self.message.ByteSize()) + added

    def runs(self) -> list[Any]:
        """The response's run messages, in order (each with its entry of
        `versions`)."""
        message = self.message
        return list(message.runs) if hasattr(message, "runs") else [message.run]

    def materialize(self) -> Any:
        """The whole message: each version copied into its run."""
        for run, version in zip(self.runs(), self.versions, strict=True):
            if version is not None:
                run.workflow_version.CopyFrom(version[0])
        self.versions = [None] * len(self.versions)
        return self.message


def _fields_below(message: bytes, number: int) -> int:
    """The offset of the first field numbered `number` or more in `message`."""
    pos = 0
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
