"""Responses whose runs are wire bytes, written in C from their rows.

GetRun, GetRunStatus, ListRuns and GetChildRuns answer runs with their tasks
and workflow versions. Building those messages field by field through
protobuf's Python API was the largest part of a GetRun's own work (a Python
object made for every Value, Struct and Timestamp touched: docs/performance.md,
"Twenty-seventh step"); copying each run's workflow version (a few kB, the
same for every run of that version) into it and serializing it once more was
about a tenth of a list page ("Seventh step"). So, when runtime/server.py asks
the servicer for it (`RunService(splice=True)`), each run is an `EncodedRun`:
the Run message's bytes, written by api/_wire_src/ (C) from the run's row, its task
rows and its version's bytes, encoded once per version (versions.VersionCache).
A `Spliced` answer is those runs beside the response message's own fields.

rpc/encode.py serializes it for gRPC: the runs' bytes, then the message's
(the runs are field 1, first on the wire, as protobuf writes them). The
gateway parses the runs into the message without their versions, renders it,
and puts each version's JSON, rendered once per version, in its run
(gateway/render.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError

from spur.runs.v1 import run_pb2

# The run (GetRunResponse.run) or runs (ListRunsResponse.runs,
# GetChildRunsResponse.runs): field 1, length-delimited, first on the wire.
_RUNS_TAG = b"\x0a"
_VERSION_FIELD = run_pb2.Run.WORKFLOW_VERSION_FIELD_NUMBER


def version_field(version: run_pb2.WorkflowVersion) -> bytes:
    """`version` encoded as a Run's workflow_version field: tag, length, bytes."""
    data = version.SerializeToString()
    return _varint((_VERSION_FIELD << 3) | 2) + _varint(len(data)) + data


class EncodedRun(NamedTuple):
    """A Run message as bytes, and what the gateway needs of it."""

    # The Run's bytes, with its workflow version's field at `cut` if any.
    data: bytes
    cut: int
    # The version in `data` (message, its version_field bytes), or None.
    version: tuple[run_pb2.WorkflowVersion, bytes] | None
    # Fills an empty Run message with the same run, its version left out
    # (convert.fill_run): for a run too deeply nested for protobuf's parser
    # (upb stops at 100 levels of messages: ~33 levels of JSON objects),
    # which the gateway still renders.
    build: Callable[[run_pb2.Run], Any]

    def without_version(self) -> bytes:
        if self.version is None:
            return self.data
        return self.data[: self.cut] + self.data[self.cut + len(self.version[1]) :]


def encoded(
    message: run_pb2.Run,
    version: tuple[run_pb2.WorkflowVersion, bytes] | None,
    build: Callable[[run_pb2.Run], Any],
) -> EncodedRun:
    """An EncodedRun of a Run message built without its version (the rare
    run that api/_wire_src/ does not write: wire.encode_run)."""
    data = message.SerializeToString()
    if version is None:
        return EncodedRun(data, 0, None, build)
    cut = _fields_below(data, _VERSION_FIELD)
    return EncodedRun(data[:cut] + version[1] + data[cut:], cut, version, build)


class Spliced:
    """A response message without its runs, and its runs as EncodedRuns, in
    order."""

    __slots__ = ("message", "runs", "_data", "_parsed")

    def __init__(self, message: Any, runs: Sequence[EncodedRun]) -> None:
        self.message = message
        self.runs = list(runs)
        self._data: bytes | None = None
        self._parsed = False

    @property
    def versions(self) -> list[tuple[run_pb2.WorkflowVersion, bytes] | None]:
        """Each run's version (the gateway renders it apart)."""
        return [run.version for run in self.runs]

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name: serializers call it
        """The whole message's wire bytes, made once: rpc/encode.py measures
        them before grpc's serializer sends them."""
        if self._data is None:
            parts: list[bytes] = []
            for run in self.runs:
                parts += (_RUNS_TAG, _varint(len(run.data)), run.data)
            parts.append(self.message.SerializeToString())  # its own fields, after the runs
            self._data = b"".join(parts)
        return self._data

    def ByteSize(self) -> int:  # noqa: N802 - protobuf's name
        return len(self.SerializeToString())

    def for_render(self) -> Any:
        """The message with its runs parsed in, without their versions: what
        the gateway renders (putting each version's JSON in its run)."""
        self._parse(with_versions=False)
        return self.message

    def materialize(self) -> Any:
        """The whole message, versions included."""
        self._parse(with_versions=True)
        return self.message

    def _parse(self, *, with_versions: bool) -> None:
        if self._parsed:
            if with_versions:
                for target, run in zip(self._targets(), self.runs, strict=True):
                    if run.version is not None:
                        target.workflow_version.CopyFrom(run.version[0])
            return
        self.SerializeToString()  # from the runs' bytes, before the message holds them
        self._parsed = True
        for target, run in zip(self._targets(), self.runs, strict=True):
            try:
                target.MergeFromString(run.data if with_versions else run.without_version())
            except DecodeError:
                target.Clear()
                run.build(target)
                if with_versions and run.version is not None:
                    target.workflow_version.CopyFrom(run.version[0])

    def _targets(self) -> list[run_pb2.Run]:
        """The message's run fields, one per run (made if need be)."""
        message = self.message
        if not hasattr(message, "runs"):
            return [message.run]
        runs = message.runs
        while len(runs) < len(self.runs):
            runs.add()
        return list(runs)


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
