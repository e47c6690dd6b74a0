"""api/spliced.py: a response whose runs' workflow versions are spliced in as
bytes parses to the message with the versions copied in, whatever else the
runs and the response hold."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import struct_pb2

from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur_runs.api.spliced import Parts, Spliced, version_field


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


def _check(
    message: Any, versions: list[run_pb2.WorkflowVersion | None], *, tasks: bool = False
) -> None:
    """`tasks`: the runs' tasks are taken out of `message` too, and spliced
    back in as bytes (what api/_wire.c writes: a Run's tasks fields)."""
    whole = type(message)()
    whole.CopyFrom(message)
    for run, version in zip(_runs(whole), versions, strict=True):
        if version is not None:
            # Parsed from its bytes, not copied: upb may copy a map's
            # entries in another order, which the bytes compared below show.
            run.workflow_version.MergeFromString(version.SerializeToString())
    parts: list[Parts | None] = []
    for run, version in zip(_runs(message), versions, strict=True):
        field = None if version is None else (version, version_field(version))
        taken = b""
        if tasks:
            taken = run_pb2.Run(tasks=run.tasks).SerializeToString()
            del run.tasks[:]
        parts.append(None if field is None and not taken else Parts(field, taken))
    spliced = Spliced(message, parts)
    data = spliced.SerializeToString()
    assert spliced.materialize() == whole
    assert type(message).FromString(data) == whole
    # Each version where protobuf itself puts it (fields in number order):
    # the very bytes of the whole message.
    assert data == whole.SerializeToString()
    # materialize() copied the versions in: serializing again adds none twice.
    assert type(message).FromString(spliced.SerializeToString()) == whole


@pytest.mark.parametrize("tail", [True, False], ids=["fields-after", "nothing-after"])
@pytest.mark.parametrize("version_id", [True, False])
def test_get_run_response(tail: bool, version_id: bool) -> None:
    response = pb.GetRunResponse(run=_run(7, version_id=version_id, tail=tail))
    _check(response, [_version(7)])


def test_a_list_with_runs_with_and_without_versions_and_its_own_fields() -> None:
    runs = [_run(n, version_id=n % 2 == 0, tail=n % 3 != 0) for n in range(1, 9)]
    versions = [_version(n) if n % 4 else None for n in range(1, 9)]
    for message in (
        pb.ListRunsResponse(runs=runs, next_page_token="tok", total_size=42),
        pb.GetChildRunsResponse(runs=runs, next_page_token="next"),
    ):
        _check(message, list(versions))


def test_large_runs_need_longer_lengths() -> None:
    """A run of more than 2**14 bytes: its length grows by a byte or two."""
    run = _run(3)
    for i in range(300):
        run.tasks.add(id=f"T{i}", run_id="R3", node_id="n").outputs.struct_value.update(
            {"x": "y" * 100}
        )
    _check(pb.ListRunsResponse(runs=[run], next_page_token="t"), [_version(200)])


def test_fields_before_the_version_longer_than_127_bytes() -> None:
    """A field before workflow_version whose length takes two bytes (the
    length read that is not inline in _fields_below)."""
    run = _run(5)
    run.workflow_id = "S" * 300
    run.workflow_version_id = "V" * 20_000  # three bytes
    _check(pb.GetRunResponse(run=run), [_version(5)])


def _runs(message: Any) -> list[run_pb2.Run]:
    return list(message.runs) if hasattr(message, "runs") else [message.run]


@pytest.mark.parametrize("tail", [True, False], ids=["fields-after", "nothing-after"])
@pytest.mark.parametrize("version", [True, False], ids=["version", "no-version"])
def test_tasks_spliced_in_as_bytes(tail: bool, version: bool) -> None:
    """Tasks (field 10) go before parent_run_id (11) and after the version
    (4), with or without either around them."""
    response = pb.GetRunResponse(run=_run(5, tail=tail))
    response.run.parent_run_id = "R1"
    _check(response, [_version(5) if version else None], tasks=True)
    runs = [_run(n, version_id=n % 2 == 0, tail=n % 3 != 0) for n in range(1, 9)]
    _check(
        pb.ListRunsResponse(runs=runs, next_page_token="tok"),
        [_version(n) if n % 4 and version else None for n in range(1, 9)],
        tasks=True,
    )


def test_the_gateway_gets_the_tasks_in_the_message() -> None:
    """with_tasks parses them in once; the bytes stay the same after it."""
    response = pb.GetRunResponse(run=_run(4))
    expected = pb.GetRunResponse()
    expected.CopyFrom(response)
    taken = run_pb2.Run(tasks=response.run.tasks).SerializeToString()
    del response.run.tasks[:]
    spliced = Spliced(response, [Parts(None, taken)])
    before = spliced.SerializeToString()
    assert spliced.with_tasks() == expected
    assert spliced.with_tasks() == expected  # not twice
    assert spliced.SerializeToString() == before
    fresh = Spliced(response, list(spliced.parts))  # the message holds them now
    assert pb.GetRunResponse.FromString(fresh.SerializeToString()) == expected
