"""ListRuns filters and total_size (issue 7), over gRPC and HTTP, on SQLite
and PostgreSQL: every filter alone and combined returns exactly the matching
runs, each once, in order, whether paged by token or by number; a token only
serves the filters it was issued for; total_size counts what the filters
match. Views (RUN_VIEW_BASIC reads no task rows): test_views.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import grpc
import pytest
from google.protobuf import timestamp_pb2

from calls import bad_request_field, call_error
from factories import add_run, add_workflow
from http_client import Http, start_http_server
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database
from spur_runs.store.models import RunStatus

T0 = datetime(2026, 11, 2, 9, 0, 0)
STATUSES = [
    RunStatus.COMPLETED,
    RunStatus.FAILED,
    RunStatus.PAUSED,
    RunStatus.RUNNING,
    RunStatus.CANCELED,
    RunStatus.COMPLETED,
]


@dataclass(frozen=True)
class Seeded:
    id: str
    workflow_id: str
    status: RunStatus
    run_type: str
    parent_run_id: str | None
    start_time: datetime | None

    @property
    def intid(self) -> int:
        return int(self.id[1:])


@dataclass
class World:
    server: RunsServer
    stub: RunServiceStub
    http: Http
    runs: list[Seeded]
    workflows: tuple[str, str]
    parent: str


@pytest.fixture
def world(db: Database, migrated_url: str) -> Iterator[World]:
    """36 runs of two workflows, in every status, two run types, some child
    runs, some without a start_time, start times shared by pairs of runs (so
    that ties are broken by _intid), and one server serving gRPC and HTTP."""
    runs: list[Seeded] = []
    with db.write() as s:
        first, second = add_workflow(s, "first"), add_workflow(s, "second")
        parent = ""
        for i in range(36):
            workflow = first if i % 3 else second
            fields: dict[str, Any] = {
                "status": STATUSES[i % len(STATUSES)],
                "run_type": "batch" if i % 4 == 0 else "interactive",
                "start_time": None if i % 7 == 6 else T0 + timedelta(minutes=i // 2),
                "parent_run_id": parent if i % 5 == 4 else None,
            }
            run_id = add_run(s, workflow, **fields)
            parent = parent or run_id
            runs.append(Seeded(id=run_id, workflow_id=workflow[0], **fields))
    server = start_http_server(migrated_url)
    assert server.http_port is not None
    http = Http(server.http_port)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield World(server, RunServiceStub(channel), http, runs, (first[0], second[0]), parent)
    finally:
        channel.close()
        http.close()
        server.stop(grace=1)


def expected(runs: list[Seeded], **filters: Any) -> list[str]:
    """The ids ListRuns must return for `filters`, computed here in Python:
    newest start_time first, ties by _intid, runs without one last."""
    after, before = filters.get("after"), filters.get("before")
    if after is not None and filters.get("after_nanos"):
        # Stored times have microseconds: t >= after + 1ns is t >= after + 1us.
        after += timedelta(microseconds=1)

    def matches(run: Seeded) -> bool:
        if "workflow_id" in filters and run.workflow_id != filters["workflow_id"]:
            return False
        if "status" in filters and run.status not in filters["status"]:
            return False
        if "run_type" in filters and run.run_type != filters["run_type"]:
            return False
        if filters.get("parent_only") and run.parent_run_id is not None:
            return False
        if after is not None or before is not None:
            if run.start_time is None:
                return False
            if after is not None and run.start_time < after:
                return False
            if before is not None and run.start_time >= before:
                return False
        return True

    chosen = [r for r in runs if matches(r)]
    timed = sorted((r for r in chosen if r.start_time), key=lambda r: (r.start_time, r.intid))
    untimed = sorted((r for r in chosen if not r.start_time), key=lambda r: r.intid)
    return [r.id for r in reversed(timed)] + [r.id for r in reversed(untimed)]


def stamp(value: datetime, nanos: int = 0) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    message.nanos += nanos
    return message


PB_STATUS = {s: run_pb2.Run.Status.Value(s.name) for s in RunStatus}


def request_fields(**filters: Any) -> dict[str, Any]:
    """ListRunsRequest fields of the filters `expected` takes."""
    fields: dict[str, Any] = {}
    for key, value in filters.items():
        if key == "status":
            fields["status"] = [PB_STATUS[s] for s in value]
        elif key in ("after", "before"):
            fields[f"start_time_{key}"] = stamp(value, filters.get(f"{key}_nanos", 0))
        elif not key.endswith("_nanos"):
            fields[key] = value
    # `expected` lists child runs unless asked not to; ListRuns, as PySpur's
    # router, lists top-level runs when parent_only is unset.
    fields.setdefault("parent_only", False)
    return fields


def cases(world: World) -> dict[str, dict[str, Any]]:
    first, second = world.workflows
    at = T0 + timedelta(minutes=5)  # the start_time of two runs
    return {
        "none": {},
        "workflow_id": {"workflow_id": second},
        "one status": {"status": [RunStatus.FAILED]},
        "statuses": {"status": [RunStatus.PAUSED, RunStatus.FAILED]},
        "run_type": {"run_type": "batch"},
        "parent_only": {"parent_only": True},
        "after (inclusive)": {"after": at},
        "before (exclusive)": {"before": at},
        "time range": {"after": T0 + timedelta(minutes=2), "before": T0 + timedelta(minutes=9)},
        # A nanosecond past the runs at `at` leaves them out.
        "after, to the nanosecond": {"after": at, "after_nanos": 1},
        "combined": {
            "workflow_id": first,
            "status": [RunStatus.COMPLETED, RunStatus.RUNNING],
            "parent_only": True,
        },
        "all of them": {
            "workflow_id": first,
            "status": [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.RUNNING],
            "run_type": "interactive",
            "parent_only": True,
            "after": T0 + timedelta(minutes=1),
            "before": T0 + timedelta(minutes=15),
        },
        "matches nothing": {"workflow_id": first, "run_type": "openai"},
    }


def walk(stub: RunServiceStub, page_size: int, **fields: Any) -> list[str]:
    """Every run of a listing, following next_page_token."""
    seen: list[str] = []
    token = ""
    while True:
        page = stub.ListRuns(pb.ListRunsRequest(page_size=page_size, page_token=token, **fields))
        seen.extend(r.id for r in page.runs)
        token = page.next_page_token
        if not token:
            return seen
        assert len(seen) < 100, "the listing does not end"


# --- filters over gRPC --------------------------------------------------------


@pytest.mark.slow
def test_each_filter_alone_and_combined_pages_exactly_the_matching_runs(world: World) -> None:
    for name, filters in cases(world).items():
        want = expected(world.runs, **filters)
        fields = request_fields(**filters)
        assert walk(world.stub, 4, **fields) == want, name
        # Page numbers (PySpur's paging) agree with the tokens.
        numbered = [
            r.id
            for page in range(1, len(want) // 4 + 2)
            for r in world.stub.ListRuns(pb.ListRunsRequest(page=page, page_size=4, **fields)).runs
        ]
        assert numbered == want, name
        # total_size: the count with the same filters, on any page.
        reply = world.stub.ListRuns(
            pb.ListRunsRequest(page_size=2, include_total_size=True, **fields)
        )
        assert reply.HasField("total_size") and reply.total_size == len(want), name
        assert not world.stub.ListRuns(pb.ListRunsRequest(**fields)).HasField("total_size")
    # The cases are not vacuous: each filter leaves some runs out and keeps some.
    total = len(world.runs)
    sizes = {n: len(expected(world.runs, **f)) for n, f in cases(world).items()}
    assert sizes["none"] == total
    assert all(0 < sizes[n] < total for n in sizes if n not in ("none", "matches nothing"))
    assert sizes["matches nothing"] == 0
    assert sizes["after, to the nanosecond"] == sizes["after (inclusive)"] - 2


@pytest.mark.slow
def test_filters_of_the_same_set_share_their_tokens_and_page_size_and_view_may_change(
    world: World,
) -> None:
    statuses = [
        PB_STATUS[RunStatus.FAILED],
        PB_STATUS[RunStatus.PAUSED],
        PB_STATUS[RunStatus.FAILED],
    ]
    want = expected(world.runs, status=[RunStatus.FAILED, RunStatus.PAUSED])
    first = world.stub.ListRuns(pb.ListRunsRequest(page_size=2, status=statuses, parent_only=False))
    # The same set of statuses in another order, another page size and view.
    rest = world.stub.ListRuns(
        pb.ListRunsRequest(
            page_size=50,
            page_token=first.next_page_token,
            status=list(reversed(statuses[:2])),
            view=run_pb2.RUN_VIEW_BASIC,
            parent_only=False,
        )
    )
    assert [r.id for r in first.runs] + [r.id for r in rest.runs] == want
    assert not rest.next_page_token


@pytest.mark.slow
def test_token_reused_with_other_filters_is_invalid_argument(world: World) -> None:
    first, second = world.workflows
    issued = {
        "workflow": ({"workflow_id": first}, {"workflow_id": second}),
        "status": (
            {"status": [PB_STATUS[RunStatus.COMPLETED]]},
            {"status": [PB_STATUS[RunStatus.FAILED]]},
        ),
        "status added": (
            {"status": [PB_STATUS[RunStatus.COMPLETED]]},
            {"status": [PB_STATUS[RunStatus.COMPLETED], PB_STATUS[RunStatus.FAILED]]},
        ),
        "dropped": ({"parent_only": True}, {"parent_only": False}),
        "added": ({"parent_only": False}, {"parent_only": False, "run_type": "batch"}),
        "time": ({"start_time_after": stamp(T0)}, {"start_time_after": stamp(T0, 1000)}),
    }
    for name, (original, other) in issued.items():
        token = world.stub.ListRuns(pb.ListRunsRequest(page_size=1, **original)).next_page_token
        assert token, name
        error = call_error(
            world.stub.ListRuns, pb.ListRunsRequest(page_size=1, page_token=token, **other)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert bad_request_field(error) == "page_token", name
        assert "filter" in (error.details() or ""), name
    # A GetChildRuns token is no ListRuns token either.
    token = world.stub.GetChildRuns(
        pb.GetChildRunsRequest(run_id=world.parent, page_size=1)
    ).next_page_token
    error = call_error(world.stub.ListRuns, pb.ListRunsRequest(page_token=token))
    assert bad_request_field(error) == "page_token"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"status": [0]}, "status"),  # STATUS_UNSPECIFIED
        ({"status": [PB_STATUS[RunStatus.FAILED], 42]}, "status"),  # not a RunStatus
        ({"workflow_id": "X3"}, "workflow_id"),
        ({"workflow_id": "S3; DROP TABLE runs"}, "workflow_id"),
        ({"run_type": "b" * 101}, "run_type"),
        ({"run_type": "batch\x00"}, "run_type"),  # PostgreSQL text cannot hold NUL
        ({"start_time_after": stamp(T0), "start_time_before": stamp(T0)}, "start_time_before"),
        ({"start_time_after": stamp(T0, 1), "start_time_before": stamp(T0)}, "start_time_before"),
        ({"start_time_after": timestamp_pb2.Timestamp(seconds=2**62)}, "start_time_after"),
        ({"start_time_before": timestamp_pb2.Timestamp(seconds=0, nanos=-1)}, "start_time_before"),
        ({"view": 7}, "view"),
    ],
)
def test_bad_filters_are_invalid_argument_naming_the_field(
    stub: RunServiceStub, fields: dict[str, Any], field: str
) -> None:
    error = call_error(stub.ListRuns, pb.ListRunsRequest(**fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_field(error) == field


# --- filters over HTTP --------------------------------------------------------


def query_of(enum_by_number: bool = False, **filters: Any) -> list[tuple[str, str]]:
    """Query parameters of the filters `expected` takes, as grpc-gateway
    reads them: enums by name (or number), times in RFC 3339."""
    params: list[tuple[str, str]] = []
    for key, value in filters.items():
        if key == "status":
            params += [("status", str(PB_STATUS[s]) if enum_by_number else s.name) for s in value]
        elif key in ("after", "before"):
            nanos = filters.get(f"{key}_nanos", 0)
            text = value.strftime("%Y-%m-%dT%H:%M:%S") + (f".{nanos:09d}" if nanos else "") + "Z"
            params.append((f"start_time_{key}", text))
        elif isinstance(value, bool):
            params.append((key, "true" if value else "false"))
        elif not key.endswith("_nanos"):
            params.append((key, str(value)))
    if "parent_only" not in filters:
        params.append(("parent_only", "false"))  # as request_fields
    return params


@pytest.mark.slow
def test_parent_only_is_true_when_unset_as_in_pyspurs_router(world: World) -> None:
    """PySpur's router lists top-level runs unless told `parent_only=false`;
    so do ListRuns and GET /run/."""
    top = walk(world.stub, 4, parent_only=True)
    assert walk(world.stub, 4) == top == expected(world.runs, parent_only=True)
    assert len(walk(world.stub, 4, parent_only=False)) > len(top)
    assert [r["id"] for r in world.http.get("/run/?page_size=100").json()] == top


def walk_http(http: Http, params: list[tuple[str, str]]) -> tuple[list[str], int]:
    seen: list[str] = []
    total = -1
    token = ""
    while True:
        extra = [("page_token", token)] if token else [("include_total_size", "true")]
        reply = http.get("/v1/runs?" + urlencode([("page_size", "3"), *params, *extra]))
        assert reply.status == 200, reply.body
        document = reply.json()
        if not token:
            total = document["total_size"]
        else:
            assert document["total_size"] is None  # not asked for
        seen.extend(r["id"] for r in document["runs"])
        token = document["next_page_token"]
        if not token:
            return seen, total
        assert len(seen) < 100


@pytest.mark.slow
def test_filters_over_http(world: World) -> None:
    for name, filters in cases(world).items():
        want = [
            r.id
            for r in world.stub.ListRuns(
                pb.ListRunsRequest(page_size=100, **request_fields(**filters))
            ).runs
        ]
        for by_number in (False, True):
            seen, total = walk_http(world.http, query_of(by_number, **filters))
            assert seen == want and total == len(want), (name, by_number)
    # As a client would spell it: names and numbers, a zone offset (%2B is +).
    first, _ = world.workflows
    reply = world.http.get(
        f"/v1/runs?status=FAILED&status=5&parent_only=true&workflow_id={first}"
        "&start_time_after=2026-11-02T09:00:00Z&start_time_before=2026-11-02T10:12:00%2B01:00"
        "&view=RUN_VIEW_BASIC&include_total_size=true&page_size=2"
    )
    assert reply.status == 200, reply.body
    document = reply.json()
    want = expected(
        world.runs,
        workflow_id=first,
        status=[RunStatus.FAILED, RunStatus.PAUSED],
        parent_only=True,
        after=T0,
        before=T0 + timedelta(minutes=12),
    )
    assert len(want) > 2
    assert [r["id"] for r in document["runs"]] == want[:2] and document["total_size"] == len(want)
    assert all(
        r["tasks"] == [] and r["workflow_version"]["definition"] is None for r in document["runs"]
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("status=BOGUS", "status"),
        ("status=42", "status"),
        ("status=STATUS_UNSPECIFIED", "status"),  # a name, but no run has it
        ("start_time_after=yesterday", "start_time_after"),
        ("start_time_after=2026-01-01T00:00:00+01:00", "start_time_after"),  # '+' unescaped
        ("start_time_after=2026-01-01T00:00:00%2B99:99", "start_time_after"),  # no such offset
        ("start_time_after=2026-01-01T00:00:00-00:60", "start_time_after"),
        ("start_time_before=2026-01-01", "start_time_before"),
        (
            "start_time_after=2026-01-02T00:00:00Z&start_time_before=2026-01-01T00:00:00Z",
            "start_time_before",
        ),
        ("parent_only=maybe", "parent_only"),
        ("include_total_size=2", "include_total_size"),
        ("view=RUN_VIEW_HUGE", "view"),
        ("view=9", "view"),
        ("workflow_id=R1", "workflow_id"),
        ("run_type=" + "x" * 101, "run_type"),
        ("run_type=%00", "run_type"),
    ],
)
def test_bad_filter_parameters_are_400_naming_the_parameter(
    world: World, query: str, parameter: str
) -> None:
    reply = world.http.get(f"/run?{query}")
    assert reply.status == 400, reply.body
    (detail,) = reply.error(3)["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert detail["field_violations"][0]["field"] == parameter


@pytest.mark.slow
def test_token_reused_with_other_filters_over_http_is_400(world: World) -> None:
    reply = world.http.get("/v1/runs?page_size=1&status=COMPLETED")
    token = reply.json()["next_page_token"]
    assert token
    again = world.http.get(f"/v1/runs?page_size=1&status=COMPLETED&page_token={token}")
    assert again.status == 200
    # The seed's path takes it too, and its bare list links to the next page.
    seed = world.http.get(f"/run/?page_size=1&status=COMPLETED&page_token={token}")
    assert seed.status == 200
    assert [r["id"] for r in seed.json()] == [r["id"] for r in again.json()["runs"]]
    assert "page_token=" in seed.headers["Link"] and "status=COMPLETED" in seed.headers["Link"]
    other = world.http.get(f"/run?page_size=1&status=FAILED&page_token={token}")
    assert other.status == 400
    (detail,) = other.error(3)["details"]
    assert detail["field_violations"][0]["field"] == "page_token"
