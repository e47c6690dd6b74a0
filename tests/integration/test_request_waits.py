"""Calls that send their headers and no request message hold an RPC thread
for a bounded time, and never all of them (rpc/arrival.py): a client with
no token could otherwise stop the server, HTTP included."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from half_open import HalfOpenCalls, ResendingCalls
from http_client import Http, start_http_server
from servers import start_server
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.rpc.arrival import STALL_SECONDS

GET_RUN = "/spur.runs.v1.RunService/GetRun"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_half_open_calls_do_not_stop_the_server(migrated_url: str) -> None:
    server = start_http_server(migrated_url, max_workers=4, grpc_request_timeout_seconds=2.0)
    assert server.http_port is not None
    attacker = HalfOpenCalls(server.port, GET_RUN, count=8)  # twice the threads
    try:
        time.sleep(STALL_SECONDS + 0.3)  # past the stall bound: the newest are cancelled
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            for _ in range(5):  # answered at once, by the threads left free
                with pytest.raises(grpc.RpcError) as raised:
                    stub.GetRun(pb.GetRunRequest(run_id="R1"), timeout=2)
                assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        assert Http(server.http_port, timeout=2).get("/run/R1/").status == 404
        # Every stalled call is cancelled (RST_STREAM): the newest ones at
        # once, the oldest two when their 2 s are up.
        assert attacker.reset_streams(5) == set(attacker.streams)
        assert server.request_waits.cancelled == 8
    finally:
        attacker.close()
        server.stop(grace=1)


@pytest.fixture
def served(migrated_url: str) -> Iterator[grpc.Channel]:
    server = start_server(migrated_url, grpc_request_timeout_seconds=1.0)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel
    server.stop(grace=1)


def _get_run(channel: grpc.Channel) -> grpc.StreamUnaryMultiCallable:
    """GetRun as a client that may send any number of messages, when it wants."""
    return channel.stream_unary(
        GET_RUN,
        request_serializer=pb.GetRunRequest.SerializeToString,
        response_deserializer=pb.GetRunResponse.FromString,
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_what_a_unary_call_answers_without_one_message(served: grpc.Channel) -> None:
    call = _get_run(served)
    with pytest.raises(grpc.RpcError) as raised:
        call(iter(()), timeout=5)
    assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert raised.value.details() == f'"{GET_RUN}" requires exactly one request message.'

    def late(seconds: float) -> Iterator[pb.GetRunRequest]:
        time.sleep(seconds)
        yield pb.GetRunRequest(run_id="R1")

    # A message that comes late, within the bound, is served (one stalled
    # call is kept); one that comes after it finds its call cancelled.
    with pytest.raises(grpc.RpcError) as raised:
        call(late(0.5), timeout=5)
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as raised:
        call(late(2.0), timeout=5)
    assert raised.value.code() is grpc.StatusCode.CANCELLED


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_calls_without_a_token_are_refused_before_their_message(
    migrated_url: str, tmp_path: Path
) -> None:
    """With tokens on, a call without one is refused at once, message or
    not: headers-only calls with no token took a thread each until the
    sweeper cancelled them (a review, 2026-12-04), and held the server."""
    tokens = tmp_path / "readers"
    tokens.write_text("a-reader-token-of-32-characters-x\n")
    server = start_server(migrated_url, max_workers=4, reader_tokens_file=str(tokens))
    attacker = HalfOpenCalls(server.port, GET_RUN, count=40)  # ten times the threads
    try:
        started = time.monotonic()
        assert attacker.answered_streams(5) == set(attacker.streams)
        assert time.monotonic() - started < STALL_SECONDS  # none waited for the sweeper
        assert server.request_waits.cancelled == 0
    finally:
        attacker.close()
        server.stop(grace=1)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_connection_of_many_half_open_calls_does_not_hold_the_queue(
    migrated_url: str,
) -> None:
    """60 headers-only calls on one connection, 4 threads: those beyond the
    threads wait in grpc's queue, ahead of everyone's. Once some are
    cancelled their address is a suspect, whose further calls are cancelled
    at once, and a real call behind them is answered within seconds (the
    old sweeper freed 2 threads every 0.5 s: 15 s)."""
    server = start_http_server(migrated_url, max_workers=4)
    assert server.http_port is not None
    attacker = HalfOpenCalls(server.port, GET_RUN, count=60)
    try:
        time.sleep(0.1)  # the attacker's calls are queued first
        started = time.monotonic()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.RpcError) as raised:
                RunServiceStub(channel).GetRun(pb.GetRunRequest(run_id="R1"), timeout=10)
            assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        took = time.monotonic() - started
        print(f"a GetRun behind 60 half-open calls: {took:.1f} s")
        assert took < 8  # 3.3 s here, alone
        assert attacker.reset_streams(10) == set(attacker.streams)
    finally:
        attacker.close()
        server.stop(grace=1)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_grpc_calls_resent_without_messages_do_not_hold_http(migrated_url: str) -> None:
    """Two connections of 100 headers-only calls, each re-sent as soon as
    the server ends it, hold every gRPC call slot and thread in turn (grpc's
    sync server admits a call before anyone can know its peer:
    docs/production.md). HTTP's calls run on threads of their own, so they
    are answered meanwhile; in one pool they all timed out."""
    server = start_http_server(migrated_url, max_workers=4)
    assert server.http_port is not None
    attacker = ResendingCalls(server.port, GET_RUN, connections=2)
    try:
        time.sleep(1.0)  # the attack at its height: suspects, slots full
        client = Http(server.http_port, timeout=5)
        worst = 0.0
        for _ in range(10):
            started = time.monotonic()
            assert client.get("/run/R1/").status == 404
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.1)
        print(f"\nHTTP during the attack ({attacker.sent} calls sent): worst {worst:.3f} s")
        assert worst < 1.0
    finally:
        attacker.stop()
        server.stop(grace=1)
