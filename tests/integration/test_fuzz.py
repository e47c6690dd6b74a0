"""Property-based fuzzing of every RunService RPC (issue 6, "Bad input").

hypothesis sends arbitrary requests (random and over-long strings, unicode,
NUL bytes, huge and negative numbers, random and damaged page tokens, real
tokens replayed on other listings and with other filters) to a real server
on a loopback port, on SQLite and PostgreSQL: one server and database per
engine for the read-only tests (each checks that it changed no row), one of
its own for DeleteRun; never one per example. Most fields of a request are
drawn valid and a few wild, so that odd values get past validation to the
database. Every answer must be OK, INVALID_ARGUMENT (with a
google.rpc.BadRequest naming a field), NOT_FOUND or FAILED_PRECONDITION,
never UNKNOWN or INTERNAL; the read RPCs must leave every row of the
database as it was, and a DeleteRun that fails must delete nothing.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, text

from databases import new_postgres_database
from factories import add_run, add_workflow, all_done
from servers import start_server
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.store.db import Database
from spur_runs.store.models import RunStatus, TaskStatus

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}
TABLES = ("workflows", "workflow_versions", "runs", "tasks")

# One server per test; a bounded number of examples per RPC keeps the suite fast.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- the database under test ---------------------------------------------------


@dataclass
class World:
    url: str
    stub: RunServiceStub
    run_ids: list[str]
    parent: str
    workflow_ids: list[str]
    # Page tokens the server issued, by where they came from.
    list_tokens: list[tuple[int, str]] = field(default_factory=list)  # (filter index, token)
    task_tokens: list[tuple[str, str]] = field(default_factory=list)  # (run id, token)
    child_tokens: list[str] = field(default_factory=list)
    engine: Engine | None = None

    def digest(self) -> str:
        assert self.engine is not None
        return digest(self.engine)

    def tokens(self) -> list[str]:
        return (
            [t for _, t in self.list_tokens] + [t for _, t in self.task_tokens] + self.child_tokens
        )


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


# Filters that select different runs (no two are equivalent): a token issued
# under one of them is INVALID_ARGUMENT under any other.
def _filters(workflow_ids: list[str]) -> list[dict[str, Any]]:
    """Distinct filter sets. parent_only is false unless given: unset, it
    is true (top-level runs, as PySpur's router), the same set as another."""
    return [{"parent_only": False, **f} for f in _filter_sets(workflow_ids)]


def _filter_sets(workflow_ids: list[str]) -> list[dict[str, Any]]:
    return [
        {},
        {"workflow_id": workflow_ids[0]},
        {"workflow_id": workflow_ids[1]},
        {"status": [run_pb2.Run.COMPLETED]},
        {"status": [run_pb2.Run.COMPLETED, run_pb2.Run.FAILED]},
        {"run_type": "batch"},
        {"run_type": "interactive"},
        {"parent_only": True},
        {"start_time_after": _stamp(datetime(2026, 11, 2, 9, 0, 0))},
        {"start_time_before": _stamp(datetime(2026, 11, 2, 9, 5, 0))},
        {"parent_only": True, "status": [run_pb2.Run.COMPLETED]},
        {"workflow_id": workflow_ids[0], "run_type": "interactive"},
    ]


def seed(url: str) -> tuple[list[str], str, list[str]]:
    """Runs of two workflows, several statuses, run types and start times
    (some without one), a parent with children, tasks of every status."""
    db = Database.from_url(url, pool_size=1)
    try:
        with db.write() as s:
            first = add_workflow(s, "first")
            second = add_workflow(s, "second")
            parent = add_run(s, first, run_type="batch", tasks=all_done())
            ids = [parent]
            for n in range(4):
                ids.append(
                    add_run(
                        s,
                        first,
                        parent_run_id=parent,
                        start_time=datetime(2026, 11, 2, 9, n, 0) if n < 3 else None,
                        status=RunStatus.RUNNING if n % 2 else RunStatus.COMPLETED,
                        tasks=[("input_node", TaskStatus.COMPLETED), ("llm", TaskStatus.RUNNING)],
                    )
                )
            statuses = list(RunStatus)
            for n in range(10):
                ids.append(
                    add_run(
                        s,
                        second if n % 2 else first,
                        status=statuses[n % len(statuses)],
                        start_time=datetime(2026, 11, 2, 9, n, 0) if n != 7 else None,
                        tasks=[
                            ("input_node", TaskStatus.COMPLETED),
                            ("llm", TaskStatus.FAILED),
                            ("router", TaskStatus.PAUSED),
                        ],
                    )
                )
    finally:
        db.dispose()
    return ids, parent, [first[0], second[0]]


def digest(engine: Engine) -> str:
    """A digest of every row of the service's tables."""
    hasher = hashlib.sha256()
    with engine.connect() as conn:
        for name in TABLES:
            for row in conn.execute(text(f"SELECT * FROM {name} ORDER BY _intid")):
                hasher.update(repr(tuple(row)).encode())
            hasher.update(b"|")
    return hasher.hexdigest()


def _world(url: str) -> Iterator[World]:
    run_ids, parent, workflow_ids = seed(url)
    server = start_server(url)
    engine = create_engine(url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            found = World(url, stub, run_ids, parent, workflow_ids, engine=engine)
            for index, filters in enumerate(_filters(workflow_ids)):
                token = stub.ListRuns(pb.ListRunsRequest(page_size=1, **filters)).next_page_token
                if token:
                    found.list_tokens.append((index, token))
            for run_id in run_ids[:3]:
                answer = stub.GetRunTasks(pb.GetRunTasksRequest(run_id=run_id, page_size=1))
                found.task_tokens.append((run_id, answer.next_page_token))
            found.child_tokens.append(
                stub.GetChildRuns(
                    pb.GetChildRunsRequest(run_id=parent, page_size=1)
                ).next_page_token
            )
            assert len(found.list_tokens) >= 10 and all(found.tokens())
            yield found
    finally:
        engine.dispose()
        server.stop(grace=1)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """One database and server per engine for all the read-only tests below
    (each checks that it changed no row, so they may share it)."""
    from spur_runs.store.migrate import migrate

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'runs.db'}"
        migrate(url)
        yield from _world(url)
        return
    with new_postgres_database("spur_fuzz") as url:
        migrate(url)
        yield from _world(url)


@pytest.fixture
def own_world(migrated_url: str) -> Iterator[World]:
    """A database and server of its own, for the test that deletes."""
    yield from _world(migrated_url)


# --- strategies -------------------------------------------------------------------

# Any text protobuf can carry (no lone surrogates), with the characters that
# break things (NUL, controls, quotes, bidi and BOM marks, %) drawn often.
CHARS = st.one_of(
    st.sampled_from("\x00\x01\x1f\x7f\x85'\"\\%_\u202e\ufeff\U0001f600é"),
    st.characters(blacklist_categories=("Cs",)),
)
INT32 = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.sampled_from([0, 1, -1, 2, 99, 100, 101, 999, 1000, 1001, 2**31 - 1, -(2**31)]),
)
INT64 = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-62135596800 - 10, 253402300799 + 10),  # around 0001-01-01 .. 9999-12-31
    st.sampled_from([0, -1, -62135596800, 253402300799, 253402300800]),
)


def texts(max_size: int = 60) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(CHARS, max_size=max_size),
        st.text(st.sampled_from("R0123456789-+ \x00%/._~é\u202e\ufeff"), max_size=max_size),
        st.sampled_from(
            [
                "",
                "\x00",
                " ",
                "R",
                "R0",
                "R-1",
                "r1",
                "R1 ",
                " R1",
                "R1\x00",
                "R٣",
                "R１",
                "R1e3",
                "R0x10",
                "R1/tasks",
                "../R1",
                "R'; DROP TABLE runs;--",
            ]
        ),
        # Over-long: far past any id (test_bad_input.py goes up to the size limit).
        st.integers(100, 20_000).map(lambda n: "R" + "9" * n),
        st.integers(1, 5_000).map(lambda n: "\x00é" * n),
    )


def run_ids(world: World) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(world.run_ids),
        st.integers(1, 10**19 - 1).map(lambda n: f"R{n}"),  # well-formed, mostly absent
        st.integers(10**19, 10**40).map(lambda n: f"R{n}"),  # past int64
        st.sampled_from(world.run_ids).flatmap(
            lambda r: st.text(CHARS, min_size=1, max_size=5).map(lambda s: r + s)
        ),
        st.sampled_from(world.workflow_ids + ["SV1", "T1"]),
        texts(),
    )


def tokens(world: World) -> st.SearchStrategy[str]:
    issued = st.sampled_from(world.tokens())
    return st.one_of(
        st.just(""),
        issued,
        # An issued token with one character changed, cut short, or extended.
        st.tuples(issued, st.integers(0, 10_000), CHARS).map(
            lambda t: t[0][: t[1] % len(t[0])] + t[2] + t[0][t[1] % len(t[0]) + 1 :]
        ),
        st.tuples(issued, st.integers(1, 10_000)).map(lambda t: t[0][: t[1] % len(t[0])]),
        issued.map(lambda t: t + "A"),
        st.binary(max_size=200).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
        texts(),
        st.integers(500, 5000).map(lambda n: "A" * n),
    )


def timestamps() -> st.SearchStrategy[timestamp_pb2.Timestamp | None]:
    return st.one_of(
        st.none(),
        st.builds(timestamp_pb2.Timestamp, seconds=INT64, nanos=INT32),
        st.builds(
            timestamp_pb2.Timestamp,
            seconds=st.integers(1_700_000_000, 1_800_000_000),
            nanos=st.integers(0, 999_999_999),
        ),
    )


VIEWS = st.one_of(st.sampled_from([0, 1, 2]), INT32)


def mostly(valid: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`valid` five times in six, else `wild`: most requests then get past
    validation with one or two odd fields, and reach the database with them."""
    # (wild on 5, not 0: hypothesis favours 0, and shrinks towards it)
    return st.integers(0, 5).flatmap(lambda n: wild if n == 5 else valid)


VALID_TIME = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.integers(1_700_000_000, 1_800_000_000),
    nanos=st.integers(0, 999_999_999),
)


def list_requests(world: World) -> st.SearchStrategy[pb.ListRunsRequest]:
    def build(fields: dict[str, Any]) -> pb.ListRunsRequest:
        return pb.ListRunsRequest(**{k: v for k, v in fields.items() if v is not None})

    return st.fixed_dictionaries(
        {},
        optional={
            "page": mostly(st.integers(0, 5), INT32),
            "page_size": mostly(st.integers(0, 100), INT32),
            "page_token": mostly(st.just(""), tokens(world)),
            "workflow_id": mostly(
                st.one_of(
                    st.sampled_from(world.workflow_ids),
                    st.integers(1, 10**19 - 1).map(lambda n: f"S{n}"),
                ),
                texts(),
            ),
            "status": mostly(
                st.lists(st.integers(1, 6), max_size=6),
                st.lists(st.one_of(st.integers(0, 7), INT32), max_size=8),
            ),
            # Any text up to the limit is a valid run type but for controls.
            "run_type": mostly(
                st.one_of(st.sampled_from(["batch", "interactive"]), st.text(CHARS, max_size=100)),
                texts(120),
            ),
            "parent_only": st.booleans(),
            "start_time_after": mostly(st.one_of(st.none(), VALID_TIME), timestamps()),
            "start_time_before": mostly(st.one_of(st.none(), VALID_TIME), timestamps()),
            "view": mostly(st.sampled_from([0, 1, 2]), INT32),
            "include_total_size": st.booleans(),
        },
    ).map(build)


# --- calling and checking ---------------------------------------------------------


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, Any]:
    """The call's code and its answer (None unless OK); the error is checked
    to be one the issue allows, with a BadRequest naming a field for
    INVALID_ARGUMENT and nothing of a traceback."""
    try:
        return grpc.StatusCode.OK, call()
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        details = error.details() or ""  # type: ignore[attr-defined]
        assert code in ALLOWED, f"{code.name}: {details}"
        assert "Traceback" not in details and 'File "' not in details
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
            assert status is not None, details
            violations = []
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    violations.extend(v.field for v in bad.field_violations)
            assert violations and all(violations), details
        return code, None


def check_runs(runs: Any, limit: int) -> None:
    assert len(runs) <= limit
    for run in runs:
        assert run.id.startswith("R")
        assert run.task_count >= len(run.tasks)


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_get_run(world: World, data: st.DataObject) -> None:
    before = world.digest()
    run_id = data.draw(run_ids(world))
    view = data.draw(VIEWS)
    code, answer = code_of(
        lambda: world.stub.GetRun(pb.GetRunRequest(run_id=run_id, view=view), timeout=10)
    )
    if code is grpc.StatusCode.OK:
        assert answer.run.id == run_id
        assert view in (0, 1, 2)
    if run_id in world.run_ids and view in (0, 1, 2):
        assert code is grpc.StatusCode.OK
    assert world.digest() == before


@pytest.mark.slow
@settings(FUZZ, max_examples=300)  # the most fields
@given(data=st.data())
def test_list_runs(world: World, data: st.DataObject) -> None:
    before = world.digest()
    request = data.draw(list_requests(world))
    code, answer = code_of(lambda: world.stub.ListRuns(request, timeout=10))
    if code is grpc.StatusCode.OK:
        check_runs(answer.runs, request.page_size or 10)
        assert answer.HasField("total_size") == request.include_total_size
        if request.include_total_size:
            assert answer.total_size >= len(answer.runs)
    else:
        assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert world.digest() == before


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_get_run_tasks(world: World, data: st.DataObject) -> None:
    before = world.digest()
    run_id = data.draw(run_ids(world))
    issued = [""] + [t for r, t in world.task_tokens if r == run_id]
    request = pb.GetRunTasksRequest(
        run_id=run_id,
        page_size=data.draw(mostly(st.integers(0, 1000), INT32)),
        page_token=data.draw(mostly(st.sampled_from(issued), tokens(world))),
    )
    code, answer = code_of(lambda: world.stub.GetRunTasks(request, timeout=10))
    if code is grpc.StatusCode.OK:
        assert len(answer.tasks) <= (request.page_size or 1000)
        assert all(task.run_id == request.run_id for task in answer.tasks)
    assert world.digest() == before


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_get_child_runs(world: World, data: st.DataObject) -> None:
    before = world.digest()
    run_id = data.draw(st.one_of(st.just(world.parent), run_ids(world)))
    issued = [""] + (world.child_tokens if run_id == world.parent else [])
    request = pb.GetChildRunsRequest(
        run_id=run_id,
        page_size=data.draw(mostly(st.integers(0, 100), INT32)),
        page_token=data.draw(mostly(st.sampled_from(issued), tokens(world))),
        view=data.draw(VIEWS),
    )
    code, answer = code_of(lambda: world.stub.GetChildRuns(request, timeout=10))
    if code is grpc.StatusCode.OK:
        check_runs(answer.runs, request.page_size or 100)
        assert all(run.parent_run_id == request.run_id for run in answer.runs)
    assert world.digest() == before


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_watch_run(world: World, data: st.DataObject) -> None:
    """The first message or the error, then the client cancels."""
    before = world.digest()
    run_id = data.draw(run_ids(world))
    stream = world.stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=10)
    try:
        code, first = code_of(lambda: next(stream))
    finally:
        stream.cancel()
    if code is grpc.StatusCode.OK:
        assert first.run.id == run_id
    if run_id in world.run_ids:
        assert code is grpc.StatusCode.OK
    assert world.digest() == before


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_delete_run(own_world: World, data: st.DataObject) -> None:
    """A DeleteRun that fails deletes nothing; one that succeeds deletes the
    run (the seeded runs go one by one, with their children)."""
    world = own_world
    before = world.digest()
    run_id = data.draw(run_ids(world))
    code, _ = code_of(lambda: world.stub.DeleteRun(pb.DeleteRunRequest(run_id=run_id), timeout=10))
    if code is grpc.StatusCode.OK:
        assert run_id in world.run_ids
        missing, _ = code_of(lambda: world.stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10))
        assert missing is grpc.StatusCode.NOT_FOUND
    else:
        assert world.digest() == before


# --- page tokens replayed elsewhere -----------------------------------------------


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_list_token_is_bound_to_its_filters(world: World, data: st.DataObject) -> None:
    """A ListRuns token passed with other filters is INVALID_ARGUMENT naming
    page_token; with its own filters (any page size or view) it pages on."""
    filters = _filters(world.workflow_ids)
    origin, token = data.draw(st.sampled_from(world.list_tokens))
    other = data.draw(st.integers(0, len(filters) - 1))
    request = pb.ListRunsRequest(
        page_token=token,
        page_size=data.draw(st.integers(1, 100)),
        view=data.draw(st.sampled_from([0, 1, 2])),
        include_total_size=data.draw(st.booleans()),
        **filters[other],
    )
    code, answer = code_of(lambda: world.stub.ListRuns(request, timeout=10))
    if other == origin:
        assert code is grpc.StatusCode.OK
        assert answer.runs
    else:
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        try:
            world.stub.ListRuns(request, timeout=10)
        except grpc.RpcError as error:
            assert "page_token" in (error.details() or "")  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["list", "tasks", "children"])
def test_tokens_do_not_cross_listings(world: World, kind: str) -> None:
    """Every issued token, replayed on every other listing (another RPC, or
    the same RPC for another run), is INVALID_ARGUMENT."""
    stub = world.stub
    calls: list[tuple[str, Callable[[str], Any]]] = []
    for run_id in world.run_ids[:3]:
        calls.append(
            (
                f"tasks:{run_id}",
                lambda t, r=run_id: stub.GetRunTasks(pb.GetRunTasksRequest(run_id=r, page_token=t)),
            )
        )
    for run_id in (world.parent, world.run_ids[-1]):
        calls.append(
            (
                f"children:{run_id}",
                lambda t, r=run_id: stub.GetChildRuns(
                    pb.GetChildRunsRequest(run_id=r, page_token=t)
                ),
            )
        )
    calls.append(
        ("list", lambda t: stub.ListRuns(pb.ListRunsRequest(page_token=t, parent_only=False)))
    )
    issued: list[tuple[str, str]] = {
        "list": [("list", t) for i, t in world.list_tokens if i == 0],
        "tasks": [(f"tasks:{r}", t) for r, t in world.task_tokens],
        "children": [(f"children:{world.parent}", t) for t in world.child_tokens],
    }[kind]
    assert issued
    for origin, token in issued:
        for where, call in calls:
            code, _ = code_of(lambda: call(token))  # noqa: B023
            expected = grpc.StatusCode.OK if where == origin else grpc.StatusCode.INVALID_ARGUMENT
            assert code is expected, (origin, where)
