"""Bad input below the level of fields (issue 6, "Bad input"): gRPC requests
whose bytes are not a protobuf message or exceed the size limit, and HTTP
requests with odd percent-encodings, malformed bodies and very long URLs.
Each gets a clean error (never INTERNAL/UNKNOWN, never HTTP 500, never a
traceback, nothing logged as a failure of the server), and the server keeps
serving. Real server on a loopback port, SQLite and PostgreSQL.
"""

from __future__ import annotations

import email.parser
import http.client
import logging
import socket
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from http_client import Http, Reply, Seeded, seed_runs, start_http_server
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.runtime.server import RunsServer

SERVICE = "/spur.runs.v1.RunService/"
UNARY = ["GetRun", "ListRuns", "GetRunTasks", "DeleteRun", "GetChildRuns"]

# Bytes that protobuf cannot parse as any of the requests.
GARBAGE = [
    b"\xff\xff\xff\xff",  # a bad tag
    b"\x0a\x05ab",  # a length past the end
    b"\x0a\x02\xff\xfe\x1a\x02\xff\xfe",  # strings (fields 1 and 3) that are not UTF-8
    b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint of 11 bytes
    b"\x0b\x14",  # a group ended by another field's end-group
    b"\x0c",  # an end-group alone
    b"\x0f",  # wire type 7
]


def _served(url: str) -> Iterator[tuple[RunsServer, Seeded]]:
    seeded = seed_runs(url)
    server = start_http_server(url)
    yield server, seeded
    server.stop(grace=1)


@pytest.fixture
def served(migrated_url: str) -> Iterator[tuple[RunsServer, Seeded]]:
    """A server with gRPC and HTTP on SQLite and on PostgreSQL."""
    yield from _served(migrated_url)


@pytest.fixture
def served_sqlite(sqlite_url: str) -> Iterator[tuple[RunsServer, Seeded]]:
    """For what happens before any database work (the same on both)."""
    from spur_runs.store.migrate import migrate

    migrate(sqlite_url)
    yield from _served(sqlite_url)


def _server_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the server logged as its own failure (ERROR and above)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _bad_request_fields(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    fields = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields.extend(v.field for v in bad.field_violations)
    return fields


# --- gRPC: raw bytes -------------------------------------------------------------


def test_bytes_that_are_not_protobuf_are_invalid_argument(
    served: tuple[RunsServer, Seeded], caplog: pytest.LogCaptureFixture
) -> None:
    """grpcio alone answers INTERNAL "Exception deserializing request!" and
    logs a traceback; the service answers INVALID_ARGUMENT naming the
    request, on every RPC (the streaming one and health too), deletes
    nothing, and serves the next call."""
    server, seeded = served
    caplog.set_level(logging.INFO)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        calls: list[tuple[str, Any]] = [(m, channel.unary_unary(SERVICE + m)) for m in UNARY]
        watch = channel.unary_stream(SERVICE + "WatchRun")
        calls.append(("WatchRun", lambda data, timeout: next(watch(data, timeout=timeout))))
        calls.append(("Health", channel.unary_unary("/grpc.health.v1.Health/Check")))
        for data in GARBAGE:
            for name, call in calls:
                with pytest.raises(grpc.RpcError) as raised:
                    call(data, timeout=10)
                error = raised.value
                what = (name, data, error.details())
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, what
                assert "not a valid protobuf message" in (error.details() or ""), what
                assert "Traceback" not in (error.details() or "")
                if name != "Health":
                    assert _bad_request_fields(error) == ["request"], what
        stub = RunServiceStub(channel)
        # Nothing was deleted, and the server serves on.
        answer = stub.GetRun(pb.GetRunRequest(run_id=seeded.parent), timeout=10)
        assert answer.run.id == seeded.parent and answer.run.task_count == 6
        assert (
            len(
                stub.ListRuns(pb.ListRunsRequest(page_size=100, parent_only=False), timeout=10).runs
            )
            == 15
        )
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        answer = health_pb2.HealthCheckResponse.FromString(
            check(health_pb2.HealthCheckRequest().SerializeToString(), timeout=10)
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert _server_failures(caplog) == []


def test_unknown_fields_are_ignored_and_raw_good_bytes_work(
    served_sqlite: tuple[RunsServer, Seeded],
) -> None:
    """Well-formed protobuf with fields this version does not know (a newer
    client) is served; a valid message sent as raw bytes is served."""
    server, seeded = served_sqlite
    good = pb.GetRunRequest(run_id=seeded.parent).SerializeToString()
    unknown = b"\xf8\x07\x2a" + b"\x82\x08\x03abc"  # field 127 varint, field 128 bytes
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.unary_unary(SERVICE + "GetRun")
        for data in (good, good + unknown, unknown + good):
            reply = pb.GetRunResponse.FromString(call(data, timeout=10))
            assert reply.run.id == seeded.parent
        # A valid message cut in the middle of its string: not protobuf.
        with pytest.raises(grpc.RpcError) as raised:
            call(good[:-1], timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.slow
def test_a_request_over_the_size_limit_is_refused_and_the_server_serves_on(
    served_sqlite: tuple[RunsServer, Seeded], caplog: pytest.LogCaptureFixture
) -> None:
    """Over --max-request-bytes (1 MiB by default): grpc's own
    RESOURCE_EXHAUSTED, before any parsing; a message just under it is
    parsed and judged on its fields."""
    server, seeded = served_sqlite
    limit = server.config.max_request_bytes
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for method in ("GetRun", "DeleteRun", "ListRuns"):
            call = channel.unary_unary(SERVICE + method)
            huge = pb.GetRunRequest(run_id="R" + "1" * (limit + 1000)).SerializeToString()
            with pytest.raises(grpc.RpcError) as raised:
                call(huge, timeout=10)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, method
            with pytest.raises(grpc.RpcError) as raised:
                call(b"\xff" * (limit + 1), timeout=10)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, method
        stub = RunServiceStub(channel)
        near = pb.GetRunRequest(run_id="R" + "1" * (limit - 100))
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetRun(near, timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(raised.value.details() or "") < 200  # the id is not echoed whole
        assert stub.GetRun(pb.GetRunRequest(run_id=seeded.parent), timeout=10).run.id
    assert _server_failures(caplog) == []


# --- HTTP ---------------------------------------------------------------------------


def _expect(reply: Reply, statuses: set[int], what: str) -> dict[str, Any] | None:
    """The reply has one of `statuses`; an error is a google.rpc.Status JSON
    body whose code matches the HTTP status, with no traceback."""
    assert reply.status in statuses, (what, reply.status, reply.body[:300])
    body = reply.body.decode("utf-8", "replace")
    assert "Traceback" not in body and 'File "' not in body, what
    if reply.status < 400:
        return None
    code = {400: 3, 404: 5, 405: 12, 413: 3, 414: 3, 431: 3}[reply.status]
    return reply.error(code)


def _raw(port: int, data: bytes) -> Reply:
    """Send bytes as they are (http.client refuses to send malformed
    requests) and read one reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"closed without a reply: {received[:200]!r}"
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = email.parser.Parser(_class=http.client.HTTPMessage).parsestr(
            "\r\n".join(lines[1:])
        )
        length = int(headers.get("Content-Length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "closed in the middle of the body"
            body += chunk
    return Reply(int(lines[0].split()[1]), headers, body)  # type: ignore[arg-type]


def _percent(value: str) -> str:
    return "".join(f"%{b:02X}" for b in value.encode())


@pytest.mark.slow
def test_odd_percent_encodings(
    served: tuple[RunsServer, Seeded], caplog: pytest.LogCaptureFixture
) -> None:
    """Paths and query strings are percent-decoded once, as UTF-8; whatever
    they decode to is then judged as a value. An encoded "/" stays inside
    the id (it never reaches another route)."""
    server, seeded = served
    caplog.set_level(logging.INFO)
    assert server.http_port is not None
    run = seeded.parent
    cases: list[tuple[str, set[int]]] = [
        ("/run/%00", {400}),
        (f"/run/{run}%00", {400}),
        ("/run/%ZZ", {400}),
        ("/run/R%ZZ1", {400}),
        ("/run/%", {400}),
        (f"/run/{run}%2", {400}),
        (f"/run/{run}%2F", {400}),
        (f"/run/{run}%2Ftasks", {400}),  # not GetRunTasks
        (f"/run/{run}/tasks%2F", {400, 404}),
        (f"/run/{run}/tasks%3Fpage_size=1", {404}),
        ("/run/%C0%AE", {400}),  # overlong UTF-8 of "."
        ("/run/%C0%80", {400}),  # overlong UTF-8 of NUL
        ("/run/%E2%82", {400}),  # truncated UTF-8
        ("/run/%ED%A0%80", {400}),  # an encoded surrogate
        ("/run/%F0%9F%98%80", {400}),
        ("/run/%2552%2531", {400}),  # double-encoded "R1": decoded once, "%52%31"
        ("/run/..%2F..%2Fetc%2Fpasswd", {400}),
        ("/run/%252F", {400}),
        (f"/run/{_percent(run)}", {200}),  # every character encoded: the same run
        (f"/run/{run}/tasks/", {200}),
        ("/run?page_token=%00", {400}),
        ("/run?page_token=%FF%FE", {400}),
        ("/run?page=%ZZ", {400}),
        ("/run?page=-1", {400}),
        ("/run?page_size=1%00", {400}),
        ("/run?page_size=99999999999999999999", {400}),
        ("/run?page_size=%2B1", {200, 400}),
        ("/run?workflow_id=%C0%AE", {400}),
        ("/run?workflow_id=S1%00", {400}),
        ("/run?status=%00", {400}),
        ("/run?status=99", {400}),
        ("/run?run_type=%00", {400}),
        ("/run?run_type=%2500", {200}),  # the text "%00": matches nothing
        ("/run?start_time_after=%ZZ", {400}),
        ("/run?start_time_after=9999-99-99T99:99:99Z", {400}),
        ("/run?start_time_after=0000-01-01T00:00:00Z", {400}),
        ("/run?view=%FF", {400}),
        ("/run?page=1&page=2", {400}),
        ("/run?%ZZ=1&=&&a", {200, 400}),
        (f"/run/{run}/children?page_token=" + "%41" * 3000, {400}),
        (f"/run/{run}/watch?x=%00", {200, 400}),
    ]
    client = Http(server.http_port)
    try:
        for path, statuses in cases:
            reply = client.request("GET", path)
            _expect(reply, statuses, path)
            if reply.status == 200 and path.startswith(f"/run/{_percent(run)}"):
                assert reply.json()["id"] == run
        for path in ("/run/%00", f"/run/{run}%2F", "/run/%C0%AE"):
            _expect(client.request("DELETE", path), {400}, "DELETE " + path)
        # Nothing was deleted.
        assert client.get(f"/run/{run}").json()["task_count"] == 6
    finally:
        client.close()
    assert _server_failures(caplog) == []


@pytest.mark.slow
def test_bodies_where_none_is_expected(
    served: tuple[RunsServer, Seeded], caplog: pytest.LogCaptureFixture
) -> None:
    """No route of RunService takes a body: one sent with GET or DELETE,
    malformed JSON or binary, even over --max-request-bytes, is not read as
    a request and leaves the keep-alive connection usable; other methods
    are 405."""
    server, seeded = served
    caplog.set_level(logging.INFO)
    assert server.http_port is not None
    run, victim = seeded.parent, seeded.others[0]
    json_type = {"Content-Type": "application/json"}
    client = Http(server.http_port)
    try:
        for body in (b"{not json", b'{"run_id": "R999999"}', b"\x00\xff\xfe{[", b"x" * 2_000_000):
            _expect(client.request("GET", f"/run/{run}", json_type, body), {200}, "GET body")
            reply = client.request("DELETE", "/run/R999999999", json_type, body)
            _expect(reply, {404}, "DELETE body")
            _expect(client.request("POST", "/run", json_type, body), {405}, "POST")
            _expect(client.request("PUT", f"/run/{run}", json_type, body), {405}, "PUT")
            _expect(client.request("PATCH", f"/run/{run}", json_type, body), {405}, "PATCH")
            # The same connection serves on.
            assert client.get(f"/run/{run}").json()["id"] == run
        # A body naming another run does not redirect the delete.
        reply = client.request(
            "DELETE", f"/run/{victim}", json_type, f'{{"run_id":"{run}"}}'.encode()
        )
        _expect(reply, {204}, "DELETE victim")
        assert client.get(f"/run/{run}").status == 200
        assert client.get(f"/run/{victim}").status == 404
    finally:
        client.close()
    assert _server_failures(caplog) == []


def test_very_long_urls_and_malformed_requests(
    served_sqlite: tuple[RunsServer, Seeded], caplog: pytest.LogCaptureFixture
) -> None:
    """A 100 KB path or query, a 100 KB header, a malformed request line or
    body: a 4xx with a google.rpc.Status JSON body (also where aiohttp, not
    the gateway, refuses the request), nothing logged as a server failure,
    and the server serves the next request."""
    server, seeded = served_sqlite
    caplog.set_level(logging.INFO)
    port = server.http_port
    assert port is not None
    run = seeded.parent
    long = 100_000
    limits = {400, 414, 431}
    client = Http(port)
    try:
        cases = [
            ("/run/R" + "1" * long, {}),
            ("/run/" + "%41" * (long // 3), {}),
            ("/run?page_token=" + "A" * long, {}),
            ("/run?" + "&".join(["page=1"] * (long // 7)), {}),
            (f"/run/{run}", {"X-Long": "a" * long}),
            (f"/run/{run}", {f"X-{'h' * long}": "1"}),
            (f"/run/{run}", {f"X-Many-{n}": "v" * 100 for n in range(1000)}),
        ]
        for path, headers in cases:
            _expect(client.request("GET", path, headers), limits, path[:40])
            client.close()  # the server closes after a refused request
            client = Http(port)
        # Long but within aiohttp's limit: judged by the gateway.
        reply = client.get("/run/R" + "1" * 7000)
        assert len(_expect(reply, {400}, "7000")["message"]) < 200  # type: ignore[index]
    finally:
        client.close()
    raw = [
        b"GET /run/"
        + run.encode()
        + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nabcdefg",
        b"GET /run/"
        + run.encode()
        + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nxx\r\n0\r\n\r\n",
        b"GET /run/" + run.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /run/\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /run/ R1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"G\xffT /run HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /run HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /run HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET /run HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS hello
    ]
    for data in raw:
        _expect(_raw(port, data), {400}, repr(data[:40]))
    client = Http(port)
    try:
        assert client.get(f"/run/{run}").json()["id"] == run
    finally:
        client.close()
    assert _server_failures(caplog) == []
