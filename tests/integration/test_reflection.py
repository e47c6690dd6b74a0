"""Server reflection: what grpcurl sees (the protos' comments, methods it can
describe), the token it needs, and idle streams that hold no RPC thread.
The real grpcurl binary, a real server on a loopback port."""

from __future__ import annotations

import http.client
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from seeding import seed
from servers import start_server, wait_until
from spur.runs.v1 import run_pb2, run_service_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.gateway.comments import load_comments
from spur_runs.rpc.limits import FIXED_ANSWER_BYTES
from spur_runs.runtime import reflection
from spur_runs.runtime.server import RunsServer
from tools import tool

METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
TOKEN = "r3flect-reader-5e1f"


@pytest.fixture
def seeded(sqlite_url: str) -> tuple[str, str]:
    return sqlite_url, seed(sqlite_url)


@pytest.fixture
def server(seeded: tuple[str, str]) -> Iterator[RunsServer]:
    # (on IPv4 and IPv6: two client addresses)
    running = start_server(seeded[0], grpc_address="[::]:0", http_address="127.0.0.1:0")
    yield running
    running.stop(grace=1)


def grpcurl(
    port: int, *args: str, token: str | None = None, data: str | None = None
) -> subprocess.CompletedProcess[str]:
    options = ["-H", f"authorization: Bearer {token}"] if token else []
    options += ["-d", data] if data is not None else []
    return subprocess.run(
        [tool("grpcurl"), "-plaintext", *options, f"127.0.0.1:{port}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


# --- what grpcurl sees ---------------------------------------------------------------


@pytest.mark.slow
def test_describe_a_method_shows_it_with_its_comment(server: RunsServer) -> None:
    comments = load_comments()
    service = run_service_pb2.DESCRIPTOR.services_by_name["RunService"]
    for method in service.methods:
        described = grpcurl(server.port, "describe", method.full_name)
        assert described.returncode == 0, described.stderr
        assert f"{method.full_name} is a method:" in described.stdout
        first_line = comments[method.full_name].splitlines()[0]
        assert f"// {first_line}" in described.stdout, described.stdout
        assert f"rpc {method.name} (" in described.stdout


@pytest.mark.slow
def test_describe_shows_the_comments_of_messages_fields_and_services(server: RunsServer) -> None:
    comments = load_comments()
    run = run_pb2.DESCRIPTOR.message_types_by_name["Run"]
    enums = [*run_pb2.DESCRIPTOR.enum_types_by_name.values(), *run.enum_types]
    enum = next(e.full_name for e in enums if e.full_name in comments)
    for symbol in (run.full_name, "spur.runs.v1.RunService", enum):
        described = grpcurl(server.port, "describe", symbol)
        assert described.returncode == 0, described.stderr
        assert f"// {comments[symbol].splitlines()[0]}" in described.stdout, described.stdout
    field = grpcurl(server.port, "describe", "spur.runs.v1.Run.workflow_id")
    assert field.returncode == 0, field.stderr
    assert comments["spur.runs.v1.Run.workflow_id"].splitlines()[0] in field.stdout
    # Files without source info (grpc's own) are described too.
    health = grpcurl(server.port, "describe", "grpc.health.v1.Health.Watch")
    assert health.returncode == 0 and "rpc Watch" in health.stdout, health.stderr
    missing = grpcurl(server.port, "describe", "spur.runs.v1.NoSuchThing")
    assert missing.returncode != 0 and "not found" in missing.stderr.lower()


def test_json_names_stay_as_before(server: RunsServer, seeded: tuple[str, str]) -> None:
    """The comments come with the descriptors grpcurl had before, not the
    descriptor set's own (which would change grpcurl's JSON field names)."""
    got = grpcurl(
        server.port, "spur.runs.v1.RunService/GetRun", data=f'{{"run_id": "{seeded[1]}"}}'
    )
    assert got.returncode == 0, got.stderr
    assert '"workflow_id"' in got.stdout and '"workflowId"' not in got.stdout


@pytest.mark.slow
def test_reflection_needs_a_reader_token_when_tokens_are_on(
    seeded: tuple[str, str], tmp_path: Path
) -> None:
    readers = tmp_path / "readers"
    readers.write_text(f"{TOKEN}\n")
    guarded = start_server(seeded[0], reader_tokens_file=str(readers))
    try:
        refused = grpcurl(guarded.port, "describe", "spur.runs.v1.RunService.ListRuns")
        assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
        wrong = grpcurl(guarded.port, "list", token="not-a-token")
        assert wrong.returncode != 0 and "Unauthenticated" in wrong.stderr
        described = grpcurl(
            guarded.port, "describe", "spur.runs.v1.RunService.ListRuns", token=TOKEN
        )
        assert described.returncode == 0, described.stderr
        assert "rpc ListRuns" in described.stdout
        # Health stays public, for probes.
        health = grpcurl(guarded.port, "grpc.health.v1.Health/Check", token=TOKEN, data="{}")
        assert health.returncode == 0, health.stderr
    finally:
        guarded.stop(grace=1)


def test_bytes_that_are_no_request_get_invalid_argument(server: RunsServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.stream_stream(METHOD)(iter([b"\xff\xff\xff"]), timeout=10)
        with pytest.raises(grpc.RpcError) as raised:
            list(call)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- idle streams hold no RPC thread ----------------------------------------------


class IdleStreams:
    """Reflection streams whose client sends nothing until released."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.channel = grpc.insecure_channel(f"{host}:{port}")
        self.release = threading.Event()
        self.calls: list[grpc.Future] = []  # type: ignore[type-arg]

    def _requests(self) -> Iterator[bytes]:
        self.release.wait(60)
        yield from ()

    def open(self, count: int) -> list[object]:
        opened = [
            self.channel.stream_stream(METHOD)(self._requests(), timeout=60) for _ in range(count)
        ]
        self.calls += opened  # type: ignore[arg-type]
        return opened  # type: ignore[return-value]

    def close(self) -> None:
        self.release.set()
        for call in self.calls:
            call.cancel()
        self.channel.close()


def streams(server: RunsServer) -> int:
    assert server.reflection is not None
    return server.reflection.stream_count


def _answers_within(server: RunsServer, run_id: str, seconds: float) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = RunServiceStub(channel)
        assert stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=seconds).run.id == run_id
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=seconds).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    assert server.http_port is not None
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=seconds)
    try:
        connection.request("GET", f"/run/{run_id}")
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_idle_reflection_streams_hold_no_rpc_thread(
    server: RunsServer, seeded: tuple[str, str]
) -> None:
    """Issue 16: four idle ServerReflectionInfo streams took the four RPC
    threads, and every call timed out. And one client address holds at most
    two: one client held all four, re-opening them (a review, 2026-12-04)."""
    idle, idle6 = IdleStreams(server.port), IdleStreams(server.port, "[::1]")
    try:
        idle.open(reflection.REFLECTION_STREAMS_PER_ADDRESS)
        wait_until(lambda: streams(server) == 2, "the address's two streams served")
        (refused,) = idle.open(1)
        with pytest.raises(grpc.RpcError) as raised:
            next(refused)  # type: ignore[call-overload]
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "this client address has 2" in (raised.value.details() or "")
        idle6.open(reflection.REFLECTION_STREAMS - reflection.REFLECTION_STREAMS_PER_ADDRESS)
        time.sleep(0.5)
        _answers_within(server, seeded[1], 3)
        # Beyond the reflection threads: refused at once, not queued.
        assert server.reflection is not None
        wait_until(
            lambda: (
                server.reflection is not None
                and server.reflection.stream_count == reflection.REFLECTION_STREAMS
            ),
            "the reflection threads are all taken",
        )
        (extra,) = idle.open(1)  # (its own, or the server's, bound)
        with pytest.raises(grpc.RpcError) as raised:
            next(extra)  # type: ignore[call-overload]
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        _answers_within(server, seeded[1], 3)
    finally:
        idle.close()
        idle6.close()
    # Once they end, reflection serves again.
    wait_until(lambda: streams(server) == 0, "the reflection threads freed")
    listed = grpcurl(server.port, "list")
    assert listed.returncode == 0 and "spur.runs.v1.RunService" in listed.stdout, listed.stderr


@pytest.mark.slow
def test_an_idle_reflection_stream_is_cancelled(
    server: RunsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reflection, "IDLE_SECONDS", 0.5)
    idle = IdleStreams(server.port)
    try:
        (call,) = idle.open(1)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            next(call)  # type: ignore[call-overload]
        assert raised.value.code() == grpc.StatusCode.CANCELLED
        assert time.monotonic() - started < 5
        assert server.reflection is not None
        wait_until(lambda: streams(server) == 0, "the reflection threads freed")
    finally:
        idle.close()


def test_a_reflection_session_is_answered(server: RunsServer) -> None:
    """One stream, several requests, as grpcurl sends them."""
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="spur.runs.v1.RunService.WatchRun"
        ),
        reflection_pb2.ServerReflectionRequest(file_by_filename="spur/runs/v1/run.proto"),
        reflection_pb2.ServerReflectionRequest(file_by_filename="no/such.proto"),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.stream_stream(
            METHOD,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        answers = list(call(iter(requests), timeout=10))
    kinds = [a.WhichOneof("message_response") for a in answers]
    assert kinds == [
        "list_services_response",
        "file_descriptor_response",
        "file_descriptor_response",
        "error_response",
    ]
    assert sorted(s.name for s in answers[0].list_services_response.service) == sorted(
        s.full_name for s in server.services
    )
    assert answers[3].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_an_idle_reflection_stream_does_not_hold_the_shutdown(seeded: tuple[str, str]) -> None:
    server = start_server(seeded[0])
    idle = IdleStreams(server.port)
    try:
        (call,) = idle.open(1)
        wait_until(lambda: streams(server) == 1, "the stream is served")
        started = time.monotonic()
        server.stop(grace=20)
        assert time.monotonic() - started < 5
        with pytest.raises(grpc.RpcError) as raised:
            next(call)  # type: ignore[call-overload]
        assert raised.value.code() == grpc.StatusCode.CANCELLED
    finally:
        idle.close()


def test_every_reflection_answer_fits_grpcs_bound(server: RunsServer) -> None:
    """grpc's bound on a message sent is never below limits.FIXED_ANSWER_BYTES,
    whatever --max-response-bytes says (it bounds RunService alone): every
    answer reflection can give must fit in it, with room to grow."""
    assert server.reflection is not None
    descriptors = server.reflection.descriptors
    largest = max(
        descriptors.answer(reflection_pb2.ServerReflectionRequest(file_by_filename=name)).ByteSize()
        for name in descriptors._files
    )
    assert 10_000 < largest < FIXED_ANSWER_BYTES // 8, largest
