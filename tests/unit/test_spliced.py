"""api/spliced.py: a response whose runs are bytes (each with its workflow
version spliced in) serializes to the whole message's very bytes, and gives
the gateway the message without the versions, whatever else the runs and
the response hold."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import struct_pb2

from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur_runs.api.spliced import EncodedRun, Spliced, encoded, version_field


def _version(n: int) -> run_pb2.WorkflowVersion:
    version = run_pb2.WorkflowVersion(
        id=f"SV{n}", workflow_id="S1", version=n, name="flow", definition_hash="h" * 40
    )
    version.definition.update({"nodes": [{"id": f"node{i}", "config": {"n": i}} for i in range(n)]})
    version.created_at.seconds = 1_700_000_000 + n
    return version


def _run(n: int, *, version_id: bool = True, tail: bool = True) -> run_pb2.Run:
    """A run with fields on both sides of workflow_version (field 4)."""
    run = run_pb2.Run(id=f"R{n}", workflow_id="S1" if n % 3 else "")
    if version_id:
        run.workflow_version_id = f"SV{n}"
    if tail:
        run.status = run_pb2.Run.Status.RUNNING
        run.tasks.add(id=f"T{n}", run_id=f"R{n}", node_id="a").inputs.struct_value.update(
            {"q": "x" * 300}
        )
        run.outputs.CopyFrom(struct_pb2.Value(string_value="é" * n))
        run.task_count = n
        run.duration = 1.5
    return run


def _never(run: run_pb2.Run) -> None:
    raise AssertionError("the bytes parse: no run is built")


def _check(message: Any, runs: list[run_pb2.Run], versions: list[Any]) -> None:
    whole = type(message)()
    whole.CopyFrom(message)
    targets = list(whole.runs) if hasattr(whole, "runs") else [whole.run]
    if hasattr(whole, "runs"):
        whole.runs.extend(runs)
        targets = list(whole.runs)
    else:
        whole.run.CopyFrom(runs[0])
        targets = [whole.run]
    for target, version in zip(targets, versions, strict=True):
        if version is not None:
            target.workflow_version.CopyFrom(version)
    rendered = type(whole)()
    rendered.CopyFrom(whole)
    for target in list(rendered.runs) if hasattr(rendered, "runs") else [rendered.run]:
        target.ClearField("workflow_version")
    answer = Spliced(
        message,
        [
            encoded(run, None if v is None else (v, version_field(v)), _never)
            for run, v in zip(runs, versions, strict=True)
        ],
    )
    data = answer.SerializeToString()
    assert type(whole).FromString(data) == whole
    # Each version where protobuf itself puts it, the response's own fields
    # after the runs: every message's fields in number order, as protobuf
    # writes them. (Not compared as bytes: upb writes a map's entries in an
    # order of its own hashing, which changes from one process to another.)
    assert _in_order(data)
    assert len(data) == len(whole.SerializeToString())
    assert answer.ByteSize() == len(data)
    assert answer.for_render() == rendered
    assert answer.for_render() == rendered  # parsed once
    assert answer.materialize() == whole
    assert answer.SerializeToString() == data  # the runs are not sent twice


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _in_order(data: bytes, depth: int = 2) -> bool:
    """Whether the fields of `data` come in number order (repeated ones
    together), and those of its runs (depth 2: the response and its runs)."""
    pos, last = 0, 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        if tag >> 3 < last:
            return False
        last = tag >> 3
        kind = tag & 7
        if kind == 2:
            length, pos = _varint(data, pos)
            if depth > 1 and last == 1 and not _in_order(data[pos : pos + length], depth - 1):
                return False
            pos += length
        elif kind == 0:
            pos = _varint(data, pos)[1]
        else:
            pos += 8 if kind == 1 else 4
    return True


def test_in_order_sees_a_field_out_of_order() -> None:
    late = run_pb2.Run(id="R1").SerializeToString() + run_pb2.Run(status=1).SerializeToString()
    assert _in_order(late)
    assert not _in_order(run_pb2.Run(status=1).SerializeToString() + late)


@pytest.mark.parametrize("tail", [True, False], ids=["fields-after", "nothing-after"])
@pytest.mark.parametrize("version_id", [True, False])
def test_get_run_response(tail: bool, version_id: bool) -> None:
    _check(pb.GetRunResponse(), [_run(7, version_id=version_id, tail=tail)], [_version(7)])
    _check(pb.GetRunResponse(), [_run(7, version_id=version_id, tail=tail)], [None])


def test_a_list_with_runs_with_and_without_versions_and_its_own_fields() -> None:
    runs = [_run(n, version_id=n % 2 == 0, tail=n % 3 != 0) for n in range(1, 9)]
    versions = [_version(n) if n % 4 else None for n in range(1, 9)]
    for message in (
        pb.ListRunsResponse(next_page_token="tok", total_size=42),
        pb.GetChildRunsResponse(next_page_token="next"),
        pb.ListRunsResponse(),
    ):
        _check(message, runs, list(versions))
    _check(pb.ListRunsResponse(next_page_token="empty page"), [], [])


def test_large_runs_need_longer_lengths() -> None:
    """A run of more than 2**14 bytes: its length takes more bytes."""
    run = _run(3)
    for i in range(300):
        run.tasks.add(id=f"T{i}", run_id="R3", node_id="n").outputs.struct_value.update(
            {"x": "y" * 100}
        )
    _check(pb.ListRunsResponse(next_page_token="t"), [run], [_version(200)])


def test_a_run_too_deep_to_parse_is_built_for_the_gateway() -> None:
    """upb parses 100 levels of messages; the run is then built by its
    `build` (convert.fill_run), and the versions still come apart."""
    deep: dict[str, Any] = {}
    for _ in range(60):
        deep = {"a": deep}
    run = _run(2)
    run.outputs.struct_value.update(deep)
    version = _version(2)
    built: list[int] = []

    def build(target: run_pb2.Run) -> None:
        built.append(1)
        target.CopyFrom(run)

    answer = Spliced(pb.GetRunResponse(), [encoded(run, (version, version_field(version)), build)])
    data = answer.SerializeToString()
    assert answer.for_render().run == run
    assert built == [1]
    assert answer.materialize().run.workflow_version == version
    assert answer.SerializeToString() == data


def test_without_version_cuts_the_version_out() -> None:
    run = _run(4)
    version = _version(4)
    encoded_run = encoded(run, (version, version_field(version)), _never)
    assert isinstance(encoded_run, EncodedRun)
    assert run_pb2.Run.FromString(encoded_run.without_version()) == run
    assert run_pb2.Run.FromString(encoded_run.data).workflow_version == version
