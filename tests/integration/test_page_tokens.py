"""Forged page tokens (issue 16, "Bad data and bad values").

Tokens are unsigned cursors (paging.py): their checksum's key is in the
source, so anyone can make one that passes it, as these tests do. What a
forged token may not do is reach the database with a value it cannot
compare: an id of 10**30 or 2**63 answered INTERNAL, with a traceback in the
log, on both databases. Every RPC that takes a token, over gRPC, on SQLite
and PostgreSQL: out-of-range positions get INVALID_ARGUMENT naming
page_token, the extreme positions that are in range page normally, and the
server logs no failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from http_client import Http, Seeded, seed_runs, start_http_server
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.api import paging, service

BIG = 2**63 - 1  # the largest position a token may hold
INT4 = 2**31  # past PySpur's 32-bit keys on PostgreSQL, but a valid position

# Run cursors: [start_time or None, _intid]. Each is refused.
BAD_RUN_POSITIONS: list[list[Any]] = [
    [None, 10**30],
    [None, 2**63],
    ["2026-11-02T09:00:00", 2**63],
    ["2026-11-02T09:00:00", -(2**63) - 1],
    ["2026-11-02T09:00:00", 1.5],
    ["2026-11-02T09:00:00", True],
    ["2026-11-02T09:00:00", "5"],
    ["2026-11-02T09:00:00", None],
    ["+10000-01-01T00:00:00", 5],  # beyond year 9999
    ["-0001-01-01T00:00:00", 5],  # before year 1
    ["2026-11-02T09:00:00+00:00", 5],  # we issue naive UTC only
    ["9999-12-31T23:59:59-23:59", 5],
    [1e308, 5],
    [-(10**30), 5],
    ["not a time", 5],
    [None],
    [None, 5, 6],
    [],
]
# Extreme positions that are in range: a page (maybe empty), no error.
GOOD_RUN_POSITIONS: list[list[Any]] = [
    [None, 1],
    [None, 0],  # ids PySpur never gives, which another tool's rows may have
    [None, -(2**63)],
    [None, BIG],
    [None, INT4],
    ["0001-01-01T00:00:00", BIG],
    ["9999-12-31T23:59:59.999999", BIG],
    ["9999-12-31T23:59:59.999999", 1],
    ["1970-01-01T00:00:00", INT4],
]
BAD_TASK_POSITIONS: list[list[Any]] = [
    [10**30],
    [2**63],
    [-(2**63) - 1],
    [1.0],
    [False],
    ["1"],
    [None],
    [1, 2],
]
GOOD_TASK_POSITIONS: list[list[Any]] = [[1], [0], [-1], [INT4], [BIG]]


@pytest.fixture
def served(
    migrated_url: str, caplog: pytest.LogCaptureFixture
) -> Iterator[tuple[RunServiceStub, Seeded, Http]]:
    caplog.set_level(logging.INFO)
    seeded = seed_runs(migrated_url)
    server = start_http_server(migrated_url)
    http = Http(server.http_port or 0, timeout=10)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield RunServiceStub(channel), seeded, http
    http.close()
    server.stop(grace=1)
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert failures == [], [r.getMessage() for r in failures]
    assert "Traceback" not in caplog.text


def _calls(stub: RunServiceStub, seeded: Seeded) -> dict[str, tuple[str, Callable[[str], Any]]]:
    """RPC name -> (the scope its tokens are bound to, a call with a token)."""
    parent = seeded.parent
    return {
        # Child runs too (parent_only is true when unset), under the scope
        # the service binds such a listing's tokens to.
        "ListRuns": (
            service.list_query(pb.ListRunsRequest(parent_only=False)).scope,
            lambda token: stub.ListRuns(
                pb.ListRunsRequest(page_token=token, parent_only=False), timeout=10
            ),
        ),
        "GetChildRuns": (
            f"children:{parent}",
            lambda token: stub.GetChildRuns(
                pb.GetChildRunsRequest(run_id=parent, page_token=token), timeout=10
            ),
        ),
        "GetRunTasks": (
            f"tasks:{parent}",
            lambda token: stub.GetRunTasks(
                pb.GetRunTasksRequest(run_id=parent, page_token=token), timeout=10
            ),
        ),
    }


def _refused_field(call: Callable[[str], Any], token: str) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        call(token)
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert "page_token" in (error.details() or "")
    # Refused for its position, not for a checksum that did not match.
    assert "damaged" not in (error.details() or ""), error.details()
    return str(bad.field_violations[0].field)


@pytest.mark.slow
def test_forged_positions_out_of_range_are_invalid_arguments(
    served: tuple[RunServiceStub, Seeded, Http],
) -> None:
    stub, seeded, http = served
    for name, (scope, call) in _calls(stub, seeded).items():
        bad = BAD_TASK_POSITIONS if name == "GetRunTasks" else BAD_RUN_POSITIONS
        for position in bad:
            token = paging.encode(scope, position)
            assert _refused_field(call, token) == "page_token", (name, position)
    # The HTTP gateway's routes take the same tokens: 400, not 500.
    scope = service.list_query(pb.ListRunsRequest()).scope  # (parent_only unset)
    for position in ([None, 10**30], [None, 2**63]):
        document = http.get(f"/run?page_token={paging.encode(scope, position)}").error(3)
        assert "page_token" in document["message"] and "damaged" not in document["message"]
    tasks = paging.encode(f"tasks:{seeded.parent}", [2**63])
    message = http.get(f"/run/{seeded.parent}/tasks?page_token={tasks}").error(3)["message"]
    assert "page_token" in message and "damaged" not in message


@pytest.mark.slow
def test_forged_positions_at_the_edges_of_the_range_page(
    served: tuple[RunServiceStub, Seeded, Http],
) -> None:
    """Positions no run has (past the last id, before year 1, at year 9999)
    are positions all the same: the listing resumes after them."""
    stub, seeded, _http = served
    calls = _calls(stub, seeded)
    scope, list_runs = calls["ListRuns"]
    # Runs with a start_time come first, newest first: resuming after
    # (9999-12-31, BIG) is the whole listing; after (None, BIG), only the
    # two runs without a start_time (the children) are left.
    assert len(list_runs(paging.encode(scope, ["9999-12-31T23:59:59.999999", BIG])).runs) == 10
    untimed = list_runs(paging.encode(scope, [None, BIG])).runs
    assert sorted(run.id for run in untimed) == sorted(seeded.children)
    assert list_runs(paging.encode(scope, [None, 1])).runs == []
    for name, (scope, call) in calls.items():
        good = GOOD_TASK_POSITIONS if name == "GetRunTasks" else GOOD_RUN_POSITIONS
        for position in good:
            call(paging.encode(scope, position))  # no error
    scope, tasks = calls["GetRunTasks"]
    assert len(tasks(paging.encode(scope, [1])).tasks) == 5  # all but the first, T1
    assert tasks(paging.encode(scope, [BIG])).tasks == []
