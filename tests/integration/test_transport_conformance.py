"""The gateway's two roads to its server answer alike (gateway/transport.py).

Every unary RPC of RunService runs twice on one real server: through the
InProcessTransport the HTTP gateway uses (a hand-made ServicerContext, the
server's interceptor, its threads), and through a ChannelTransport over a
real gRPC channel to the server's loopback port. Their answers must be the
same: the response message, the status code, the details, the initial and
the trailing metadata (the google.rpc.Status trailer included, byte for
byte). Only the request id that the server makes up per call may differ in
value, and it must be there on both; a request id the caller sends comes
back unchanged on both.

Two differences are grpc's transport itself, not the context, and are
pinned here (if either side changes, this test says so):
- a deadline that passes is answered by the channel's client, with grpc's
  own words and no trailers; in process, the server's hooks answer it;
- a response over --max-response-bytes fails in grpc's transport when sent,
  with grpc's words and no trailers; in process, the gateway's check names
  the limit and the call keeps its request id.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.message import Message
from sqlalchemy import create_engine, text

from http_client import Seeded, seed_runs
from locks import runs_locked
from servers import start_server, wait_until
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur_runs.api.spliced import Spliced
from spur_runs.gateway.transport import ChannelTransport, Reply, Transport
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database

SERVICE = pb.DESCRIPTOR.services_by_name["RunService"]
READER = "reader-conformance-1"
ADMIN = "admin-conformance-1"
REQUEST_ID = "x-request-id"
# What the server makes up when the caller sends no request id (observe.py).
_GENERATED_ID = re.compile(r"[0-9a-f]{32}")
_PEER = "ipv4:127.0.0.1:9"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Outcome:
    """A call's answer, as a caller sees it."""

    code: grpc.StatusCode
    details: str
    response: Message | None = None
    initial: list[tuple[str, Any]] = field(default_factory=list)
    trailing: list[tuple[str, Any]] = field(default_factory=list)


def _same_per_call(pairs: Any) -> list[tuple[str, Any]]:
    """The metadata, with a server-made request id (its value is per call)
    written as "<generated>"."""
    return [
        (key, "<generated>")
        if key == REQUEST_ID and isinstance(value, str) and _GENERATED_ID.fullmatch(value)
        else (key, value)
        for key, value in pairs or ()
    ]


async def outcome(
    transport: Transport,
    method: str,
    request: Message,
    metadata: tuple[tuple[str, str], ...],
    timeout: float | None = 10,
) -> Outcome:
    try:
        reply: Reply = await transport.unary(
            f"/{SERVICE.full_name}/{method}",
            request,
            timeout=timeout,
            metadata=metadata,
            peer=_PEER,
        )
    except grpc.aio.AioRpcError as error:
        return Outcome(
            error.code(),
            error.details() or "",
            None,
            _same_per_call(error.initial_metadata()),
            _same_per_call(error.trailing_metadata()),
        )
    response = reply.response
    if type(response) is Spliced:  # in process: read as the channel reads its bytes
        response = type(response.message).FromString(response.SerializeToString())
    return Outcome(
        grpc.StatusCode.OK,
        "",
        response,
        _same_per_call(reply.initial),
        _same_per_call(reply.trailing),
    )


@dataclass
class Roads:
    """The same server, both ways."""

    in_process: Transport
    channel: Transport
    called: set[str] = field(default_factory=set)

    async def both(
        self,
        method: str,
        request: Message,
        metadata: tuple[tuple[str, str], ...] = bearer(READER),
        timeout: float | None = 10,
    ) -> tuple[Outcome, Outcome]:
        self.called.add(method)
        return (
            await outcome(self.in_process, method, request, metadata, timeout),
            await outcome(self.channel, method, request, metadata, timeout),
        )

    async def same(
        self,
        method: str,
        request: Message,
        code: grpc.StatusCode,
        metadata: tuple[tuple[str, str], ...] = bearer(READER),
    ) -> Outcome:
        """Both answers, equal in every part, with the expected code."""
        local, remote = await self.both(method, request, metadata)
        assert local == remote, f"{method}: in process {local}\n through a channel {remote}"
        assert local.code == code, local
        # Every unary call carries its request id in its trailers.
        assert [key for key, _ in local.trailing].count(REQUEST_ID) == 1, local
        return local


def run_with_roads(server: RunsServer, test: Any) -> set[str]:
    """Run `test(roads)` on an event loop with a channel to `server`; the
    in-process road is the one the server's HTTP gateway uses."""
    assert server.http is not None and server.http.in_process is not None
    in_process = server.http.in_process

    async def main() -> set[str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            roads = Roads(in_process, ChannelTransport(channel, SERVICE.methods))
            await test(roads)
            return roads.called

    return asyncio.run(main())


@pytest.fixture
def token_files(tmp_path: Path) -> dict[str, str]:
    readers, admins = tmp_path / "readers", tmp_path / "admins"
    readers.write_text(f"{READER}\n")
    admins.write_text(f"{ADMIN}\n")
    return {"reader_tokens_file": str(readers), "admin_tokens_file": str(admins)}


@pytest.fixture
def seeded(migrated_url: str) -> Seeded:
    return seed_runs(migrated_url)


@pytest.fixture
def guarded(migrated_url: str, seeded: Seeded, token_files: dict[str, str]) -> Iterator[RunsServer]:
    server = start_server(migrated_url, http_address="127.0.0.1:0", **token_files)
    yield server
    server.stop(grace=1)


def _make_cycle(url: str, runs: list[str]) -> None:
    """runs[0] -> runs[1] -> runs[0] in parent_run_id."""
    db = Database.from_url(url, pool_size=1)
    try:
        with db.write() as conn:
            for child, parent in ((runs[0], runs[1]), (runs[1], runs[0])):
                conn.execute(
                    text("UPDATE runs SET parent_run_id = :parent WHERE id = :id"),
                    {"parent": parent, "id": child},
                )
    finally:
        db.dispose()


def test_every_rpc_answers_alike_both_ways(
    guarded: RunsServer, seeded: Seeded, migrated_url: str
) -> None:
    OK, BAD = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT
    NOT_FOUND = grpc.StatusCode.NOT_FOUND
    missing = "R999999999"
    _make_cycle(migrated_url, seeded.others[-2:])

    async def test(roads: Roads) -> None:
        # GetRun
        await roads.same("GetRun", pb.GetRunRequest(run_id=seeded.parent), OK)
        await roads.same(
            "GetRun", pb.GetRunRequest(run_id=seeded.parent, view=run_pb2.RUN_VIEW_BASIC), OK
        )
        await roads.same("GetRun", pb.GetRunRequest(run_id=missing), NOT_FOUND)
        await roads.same("GetRun", pb.GetRunRequest(run_id=""), BAD)
        await roads.same("GetRun", pb.GetRunRequest(run_id="not a run"), BAD)
        await roads.same("GetRun", pb.GetRunRequest(run_id=seeded.parent, view=99), BAD)
        # GetRunStatus
        await roads.same("GetRunStatus", pb.GetRunStatusRequest(run_id=seeded.parent), OK)
        await roads.same("GetRunStatus", pb.GetRunStatusRequest(run_id=missing), NOT_FOUND)
        await roads.same("GetRunStatus", pb.GetRunStatusRequest(run_id="not a run"), BAD)
        # ListRuns: pages, their tokens, filters
        first = await roads.same("ListRuns", pb.ListRunsRequest(page_size=2), OK)
        assert first.response is not None and first.response.next_page_token
        token = first.response.next_page_token
        await roads.same("ListRuns", pb.ListRunsRequest(page_size=2, page_token=token), OK)
        await roads.same("ListRuns", pb.ListRunsRequest(page_token="garbage"), BAD)
        await roads.same(
            "ListRuns", pb.ListRunsRequest(page_size=2, page_token=token, workflow_id="S999"), BAD
        )
        await roads.same("ListRuns", pb.ListRunsRequest(page_size=-1), BAD)
        await roads.same("ListRuns", pb.ListRunsRequest(status=[99]), BAD)
        await roads.same("ListRuns", pb.ListRunsRequest(parent_only=True, view=2), OK)
        await roads.same("ListRuns", pb.ListRunsRequest(include_total_size=True), OK)
        # GetRunTasks
        await roads.same("GetRunTasks", pb.GetRunTasksRequest(run_id=seeded.parent), OK)
        tasks = await roads.same(
            "GetRunTasks", pb.GetRunTasksRequest(run_id=seeded.parent, page_size=2), OK
        )
        assert tasks.response is not None and tasks.response.next_page_token
        await roads.same(
            "GetRunTasks",
            pb.GetRunTasksRequest(run_id=seeded.parent, page_token=tasks.response.next_page_token),
            OK,
        )
        await roads.same("GetRunTasks", pb.GetRunTasksRequest(run_id=missing), NOT_FOUND)
        await roads.same(
            "GetRunTasks", pb.GetRunTasksRequest(run_id=seeded.parent, page_token="x"), BAD
        )
        # GetChildRuns
        await roads.same("GetChildRuns", pb.GetChildRunsRequest(run_id=seeded.parent), OK)
        await roads.same("GetChildRuns", pb.GetChildRunsRequest(run_id=missing), NOT_FOUND)
        await roads.same(
            "GetChildRuns", pb.GetChildRunsRequest(run_id=seeded.parent, page_size=1000), BAD
        )
        # DeleteRun: refused to a reader, then one run deleted each way
        for run_id in seeded.others[:2]:
            await roads.same(
                "DeleteRun",
                pb.DeleteRunRequest(run_id=run_id),
                grpc.StatusCode.PERMISSION_DENIED,
            )
        # (each road deletes a run of its own: the second delete of one run
        # would be NOT_FOUND)
        local = await outcome(
            roads.in_process,
            "DeleteRun",
            pb.DeleteRunRequest(run_id=seeded.others[0]),
            bearer(ADMIN),
        )
        remote = await outcome(
            roads.channel, "DeleteRun", pb.DeleteRunRequest(run_id=seeded.others[1]), bearer(ADMIN)
        )
        assert local == remote and local.code == OK, (local, remote)
        for run_id in seeded.others[:2]:
            await roads.same(
                "DeleteRun", pb.DeleteRunRequest(run_id=run_id), NOT_FOUND, bearer(ADMIN)
            )
            await roads.same("GetRun", pb.GetRunRequest(run_id=run_id), NOT_FOUND)
        await roads.same(
            "DeleteRun",
            pb.DeleteRunRequest(run_id=seeded.others[-1]),
            grpc.StatusCode.FAILED_PRECONDITION,
            bearer(ADMIN),
        )
        # Authentication: no token, an unknown one
        for metadata in ((), bearer("not-a-token"), (("authorization", "Basic eA=="),)):
            await roads.same(
                "GetRun",
                pb.GetRunRequest(run_id=seeded.parent),
                grpc.StatusCode.UNAUTHENTICATED,
                metadata,
            )
        # A request id the caller sends comes back as it was, both ways.
        sent = (*bearer(READER), (REQUEST_ID, "caller-chosen-42"))
        answer = await roads.same("GetRun", pb.GetRunRequest(run_id=seeded.parent), OK, sent)
        assert (REQUEST_ID, "caller-chosen-42") in answer.trailing
        failed = await roads.same("GetRun", pb.GetRunRequest(run_id=missing), NOT_FOUND, sent)
        assert (REQUEST_ID, "caller-chosen-42") in failed.trailing

    called = run_with_roads(guarded, test)
    unary = {m.name for m in SERVICE.methods if not m.server_streaming}
    assert called == unary, f"RPCs without a case here: {unary - called}"


def test_a_passed_deadline_is_deadline_exceeded_both_ways(
    guarded: RunsServer, seeded: Seeded
) -> None:
    async def test(roads: Roads) -> None:
        for timeout in (1e-6, 0.0, -1.0):
            local, remote = await roads.both(
                "GetRun", pb.GetRunRequest(run_id=seeded.parent), timeout=timeout
            )
            assert local.code == grpc.StatusCode.DEADLINE_EXCEEDED, local
            if timeout >= 0 and remote.code == grpc.StatusCode.OK:
                # grpc rounds a deadline up to its next whole millisecond: a
                # deadline of now, or 1 µs from now, reaches the server as up
                # to 1 ms, within which a GetRun can finish (CI saw both); in
                # process the deadline is exact. One a second past is past on
                # any clock, so that one must fail both ways.
                continue
            assert remote.code == grpc.StatusCode.DEADLINE_EXCEEDED, (local, remote)
            # In process, the server's hooks answer it: its Status, its
            # request id.
            keys = [key for key, _ in local.trailing]
            assert keys == ["grpc-status-details-bin", REQUEST_ID], local
            # Through the channel, whichever comes first answers: the
            # server, alike, or the channel's client, with grpc's words and
            # no trailers. A deadline of now or 1 µs reaches the server as
            # up to 1 ms (above): it may begin the read, which the database
            # then cancels, and answer in its own words of that (CI saw
            # "the database did not answer within the deadline"), still
            # with its Status and request id.
            if remote != local and (remote.details, remote.trailing) != ("Deadline Exceeded", []):
                assert timeout >= 0, remote
                assert [key for key, _ in remote.trailing] == keys, remote
                assert remote.details.startswith("the database did not answer"), remote

    run_with_roads(guarded, test)


def test_a_response_over_the_limit_is_resource_exhausted_both_ways(
    migrated_url: str, seeded: Seeded
) -> None:
    server = start_server(migrated_url, http_address="127.0.0.1:0", max_response_bytes=1024)
    # One task document over 1 KiB: the tasks as well. (Under 4 KiB stored
    # in all: more is refused before it is read, with other words.)
    engine = create_engine(migrated_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE tasks SET outputs = :o WHERE _intid = "
                "(SELECT min(_intid) FROM tasks WHERE run_id = :r)"
            ),
            {"o": json.dumps({"text": "x" * 1500}), "r": seeded.parent},
        )
    engine.dispose()

    async def test(roads: Roads) -> None:
        # A run with its six tasks is more than 1 KiB; its BASIC view is not.
        request = pb.GetRunRequest(run_id=seeded.parent, view=run_pb2.RUN_VIEW_BASIC)
        await roads.same("GetRun", request, grpc.StatusCode.OK, ())
        # Refused by our hook on both roads, as the error it is: grpc used
        # to refuse it in its transport, with its words and no trailers,
        # after the call had been counted OK (a review, 2026-12-03).
        for method, request in (
            ("GetRun", pb.GetRunRequest(run_id=seeded.parent)),  # a Spliced answer
            ("GetRunTasks", pb.GetRunTasksRequest(run_id=seeded.parent)),  # a message
        ):
            local, remote = await roads.both(method, request, ())
            assert local == remote, (local, remote)
            assert local.code == grpc.StatusCode.RESOURCE_EXHAUSTED, local
            assert local.details == "the response is larger than 1024 bytes", local
            assert [key for key, _ in local.trailing] == ["grpc-status-details-bin", REQUEST_ID]

    try:
        run_with_roads(server, test)
        handled = server.metrics.registry.get_sample_value(
            "grpc_server_handled_total",
            {"grpc_type": "unary", "grpc_service": "spur.runs.v1.RunService",
             "grpc_method": "GetRun", "grpc_code": "ResourceExhausted"},
        )  # fmt: skip
        assert handled == 2  # one call of each road, counted as what its client got
    finally:
        server.stop(grace=1)


def test_the_concurrent_call_limit_is_resource_exhausted_both_ways(postgres_url: str) -> None:
    """--max-concurrent-rpcs: with one call of each road held inside the
    server (the runs table locked), the next call of that road is refused
    at once with grpc's words; each road counts its own calls."""
    seeded = seed_runs_migrated(postgres_url)
    server = start_server(
        postgres_url, http_address="127.0.0.1:0", max_concurrent_rpcs=1, max_workers=4
    )
    request = pb.GetRunRequest(run_id=seeded.parent)

    async def test(roads: Roads) -> None:
        refusals = []
        for road in (roads.in_process, roads.channel):
            with runs_locked(postgres_url) as waiting:
                held = asyncio.ensure_future(outcome(road, "GetRun", request, ()))
                await asyncio.to_thread(
                    wait_until, lambda: waiting() == 1, "one call blocked inside the server"
                )
                refusals.append(await outcome(road, "GetRun", request, ()))
            assert (await held).code == grpc.StatusCode.OK
        local, remote = refusals
        assert local == remote, (local, remote)
        assert local.code == grpc.StatusCode.RESOURCE_EXHAUSTED, local
        assert local.details == "Concurrent RPC limit exceeded!", local

    try:
        run_with_roads(server, test)
    finally:
        server.stop(grace=1)


def seed_runs_migrated(url: str) -> Seeded:
    from spur_runs.store.migrate import migrate

    migrate(url)
    return seed_runs(url)


class _DropsTrailers:
    """An in-process road that loses the trailers of failed calls."""

    def __init__(self, road: Transport) -> None:
        self._road = road

    async def unary(self, method: str, request: Message, **kwargs: Any) -> Reply:
        try:
            return await self._road.unary(method, request, **kwargs)
        except grpc.aio.AioRpcError as error:
            raise grpc.aio.AioRpcError(
                error.code(),
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details=error.details(),
                debug_error_string=None,
            ) from None


class _MapsCodes:
    """An in-process road that says INTERNAL where the server said NOT_FOUND."""

    def __init__(self, road: Transport) -> None:
        self._road = road

    async def unary(self, method: str, request: Message, **kwargs: Any) -> Reply:
        try:
            return await self._road.unary(method, request, **kwargs)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.INTERNAL if code == grpc.StatusCode.NOT_FOUND else code,
                error.initial_metadata(),
                error.trailing_metadata(),
                details=error.details(),
                debug_error_string=None,
            ) from None


@pytest.mark.parametrize("drift", [_DropsTrailers, _MapsCodes])
def test_the_comparison_sees_a_drift(guarded: RunsServer, drift: Any) -> None:
    """The check above fails when the in-process road drops a trailer or
    maps a code differently."""

    async def test(roads: Roads) -> None:
        roads.in_process = drift(roads.in_process)
        with pytest.raises(AssertionError):
            await roads.same(
                "GetRun", pb.GetRunRequest(run_id="R999999999"), grpc.StatusCode.NOT_FOUND
            )

    run_with_roads(guarded, test)
