"""The gateway's side of a call, seen from a gRPC server whose RunService
is scripted by the test: what reaches the RPC (metadata, deadline,
cancellation when the HTTP client goes away) and what comes back (statuses
without details, unknown details, response metadata). Real sockets on both
sides; only the servicer behind the gRPC server is the test's own."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from http_client import Http
from spur.runs.v1 import run_pb2, run_service_pb2_grpc
from spur.runs.v1 import run_service_pb2 as pb
from spur_runs.config import Config
from spur_runs.gateway import HttpGateway

SERVICE = pb.DESCRIPTOR.services_by_name["RunService"]


@dataclass
class Script:
    """What GetRun does, and what it saw."""

    behave: Callable[[pb.GetRunRequest, grpc.ServicerContext], pb.GetRunResponse] = (
        lambda request, _context: pb.GetRunResponse(run=run_pb2.Run(id=request.run_id))
    )
    started: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    seen: dict[str, Any] = field(default_factory=dict)


class ScriptedRuns(run_service_pb2_grpc.RunServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.GetRunResponse:
        self.script.seen["metadata"] = list(context.invocation_metadata())
        self.script.seen["time_remaining"] = context.time_remaining()
        context.add_callback(self.script.ended.set)
        self.script.started.set()
        return self.script.behave(request, context)


@dataclass
class Running:
    gateway: HttpGateway
    server: grpc.Server
    script: Script

    @property
    def client(self) -> Http:
        return Http(self.gateway.port)


@pytest.fixture
def running() -> Iterator[Running]:
    script = Script()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    run_service_pb2_grpc.add_RunServiceServicer_to_server(ScriptedRuns(script), server)
    config = Config(grpc_address="127.0.0.1:0", http_address="127.0.0.1:0", grace_seconds=1)
    gateway = HttpGateway(config, [SERVICE], server)
    server.start()
    gateway.start()
    yield Running(gateway, server, script)
    server.stop(gateway.stop(1)).wait()


def test_headers_reach_the_rpc_as_grpc_gateway_passes_them(running: Running) -> None:
    blob = bytes(range(8))
    reply = running.client.request(
        "GET",
        "/run/R1",
        {
            "Authorization": "Bearer t0k3n",
            "User-Agent": "curl/8",
            "X-Forwarded-For": "203.0.113.7",
            "Grpc-Metadata-Tenant": "acme",
            "Grpc-Metadata-Trace-Bin": base64.b64encode(blob).decode(),
            "X-Not-Forwarded": "secret",
        },
    )
    assert reply.status == 200, reply.body
    metadata = dict(running.script.seen["metadata"])
    assert metadata["authorization"] == "Bearer t0k3n"
    assert metadata["grpcgateway-user-agent"] == "curl/8"
    assert metadata["tenant"] == "acme"
    assert metadata["trace-bin"] == blob
    # 127.0.0.1 is no --trusted-proxies: its X-Forwarded-For is not believed
    # (tests/integration/test_http_safety.py has a trusted proxy's).
    assert metadata["x-forwarded-for"] == "127.0.0.1"
    assert metadata["x-forwarded-host"] == f"127.0.0.1:{running.gateway.port}"
    assert "x-not-forwarded" not in metadata


@pytest.mark.parametrize("header", ["Cookie", "User-Agent", "Referer"])
def test_informational_headers_gRPC_cannot_carry_are_left_out(
    running: Running, header: str
) -> None:
    """A browser's UTF-8 cookie does not fail the call: grpc-gateway skips
    such a copy too. The other headers still pass."""
    connection = running.client.connection
    connection.putrequest("GET", "/run/R1")
    connection.putheader(header, "caf\u00e9=cr\u00e8me".encode())
    connection.putheader("Accept", "application/json")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 200, response.read()
    metadata = dict(running.script.seen["metadata"])
    assert f"grpcgateway-{header.lower()}" not in metadata
    assert metadata["grpcgateway-accept"] == "application/json"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Grpc-Metadata-Bad!Key", "x"),
        ("Grpc-Metadata-Grpc-Status", "0"),  # gRPC's own keys cannot be forged
        ("Grpc-Metadata-Blob-Bin", "not base64!"),
        ("Authorization", "Bearer caf\u00e9"),
    ],
)
def test_headers_that_cannot_be_metadata_are_400(running: Running, header: str, value: str) -> None:
    connection = running.client.connection
    connection.putrequest("GET", "/run/R1")
    connection.putheader(header, value.encode("latin-1"))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 400
    assert header in response.read().decode()
    assert not running.script.started.is_set()


def test_grpc_timeout_becomes_the_call_deadline(running: Running) -> None:
    assert running.client.request("GET", "/run/R1", {"Grpc-Timeout": "5S"}).status == 200
    assert 4 < running.script.seen["time_remaining"] <= 5.01
    assert running.client.request("GET", "/run/R1", {"Grpc-Timeout": "250m"}).status == 200
    assert 0 < running.script.seen["time_remaining"] <= 0.26  # (clock granularity)
    assert running.client.get("/run/R1").status == 200
    assert running.script.seen["time_remaining"] > 3600  # none set: gRPC's "forever"


@pytest.mark.exclusive  # 504 within 0.9 s
def test_deadline_passing_in_the_rpc_is_504(running: Running) -> None:
    def slow(request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.GetRunResponse:
        time.sleep(1.0)
        return pb.GetRunResponse()

    running.script.behave = slow
    started = time.monotonic()
    reply = running.client.request("GET", "/run/R1", {"Grpc-Timeout": "200m"})
    assert reply.status == 504
    assert reply.json()["code"] == code_pb2.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.9


def test_client_going_away_cancels_the_rpc(running: Running) -> None:
    release = threading.Event()

    def wait(request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.GetRunResponse:
        release.wait(10)
        return pb.GetRunResponse()

    running.script.behave = wait
    with socket.create_connection(("127.0.0.1", running.gateway.port)) as raw:
        raw.sendall(b"GET /run/R1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert running.script.started.wait(5)
        assert not running.script.ended.is_set()
    # The HTTP client has hung up: the RPC is cancelled, not left to run.
    assert running.script.ended.wait(5), "the RPC was not cancelled"
    release.set()


def _status(code: int, message: str, *details: any_pb2.Any) -> grpc.Status:
    return rpc_status.to_status(status_pb2.Status(code=code, message=message, details=details))


def test_status_details_are_json_any_with_type(running: Running) -> None:
    known = any_pb2.Any()
    known.Pack(error_details_pb2.RetryInfo(retry_delay={"seconds": 3}))
    unknown = any_pb2.Any(type_url="type.googleapis.com/acme.Quota", value=b"\x08\x01")

    def refuse(request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.GetRunResponse:
        context.abort_with_status(_status(code_pb2.RESOURCE_EXHAUSTED, "slow down", known, unknown))
        raise AssertionError("abort_with_status returns no more")

    running.script.behave = refuse
    reply = running.client.get("/run/R1")
    assert reply.status == 429
    assert reply.json() == {
        "code": code_pb2.RESOURCE_EXHAUSTED,
        "message": "slow down",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": "3s"},
            {"@type": "type.googleapis.com/acme.Quota", "value": "CAE="},
        ],
    }


def test_status_without_details_keeps_code_and_message(running: Running) -> None:
    def abort(request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.GetRunResponse:
        context.abort(grpc.StatusCode.ALREADY_EXISTS, "twice")
        raise AssertionError("abort returns no more")

    running.script.behave = abort
    reply = running.client.get("/run/R1")
    assert reply.status == 409
    assert reply.json() == {"code": code_pb2.ALREADY_EXISTS, "message": "twice", "details": []}


def test_a_crash_behind_the_gateway_is_500_without_its_text(running: Running) -> None:
    def crash(request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.GetRunResponse:
        raise RuntimeError("secret stack detail")

    running.script.behave = crash
    reply = running.client.get("/run/R1")
    assert reply.status == 500
    assert reply.json() == {"code": code_pb2.UNKNOWN, "message": "internal error", "details": []}


def test_response_metadata_comes_back_as_headers(running: Running) -> None:
    def tagged(request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.GetRunResponse:
        context.send_initial_metadata((("x-request-id", "abc"), ("shard", "7")))
        context.set_trailing_metadata((("cost", "3"),))
        return pb.GetRunResponse(run=run_pb2.Run(id=request.run_id))

    running.script.behave = tagged
    reply = running.client.get("/run/R1")
    assert reply.status == 200
    assert reply.headers["X-Request-Id"] == "abc"
    assert reply.headers["Grpc-Metadata-shard"] == "7"
    # Trailers too, as grpc-gateway names them.
    assert reply.headers["Grpc-Trailer-cost"] == "3"


def test_grpc_server_gone_is_503_without_internals(running: Running) -> None:
    running.server.stop(0).wait()
    reply = running.client.get("/run/R1")
    assert reply.status == 503
    document = reply.json()
    assert document["code"] == code_pb2.UNAVAILABLE
    assert "unix" not in document["message"] and "sock" not in document["message"]


def test_unimplemented_method_is_501(running: Running) -> None:
    # ListRuns is routed (annotated) but this servicer does not implement it.
    reply = running.client.get("/run")
    assert reply.status == 501
    assert reply.json()["code"] == code_pb2.UNIMPLEMENTED


def test_stop_refuses_new_requests_and_removes_the_socket(running: Running) -> None:
    socket_dir = running.gateway._socket_dir
    port = running.gateway.port
    running.gateway.stop(1)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not os.path.exists(socket_dir)
