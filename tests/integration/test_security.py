"""Security against a real server on a loopback port: TLS and mutual TLS with
certificates made in the test, bearer tokens and their scopes, the
method -> scope table covering every method the server serves, reflection
switched off."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from certs import make_tls_files
from factories import add_run, add_workflow, all_done
from half_open import raw_call
from servers import start_server
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.rpc import auth
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database
from tools import tool

READER = "r3ader-7f0c2b9e51"
ADMIN = "adm1n-c41d88a0e2"
OTHER_READER = "r3ader-second-one"


@pytest.fixture
def runs(sqlite_url: str) -> tuple[str, list[str]]:
    """A migrated SQLite database with two runs."""
    from spur_runs.store.migrate import migrate

    migrate(sqlite_url)
    db = Database.from_url(sqlite_url, pool_size=1)
    with db.write() as s:
        workflow = add_workflow(s)
        ids = [add_run(s, workflow, tasks=all_done()) for _ in range(2)]
    db.dispose()
    return sqlite_url, ids


@pytest.fixture
def token_files(tmp_path: Path) -> dict[str, str]:
    readers = tmp_path / "readers"
    readers.write_text(f"# services that only read\n{READER}\n\n{OTHER_READER}\n")
    admins = tmp_path / "admins"
    admins.write_text(f"{ADMIN}\n")
    return {"reader_tokens_file": str(readers), "admin_tokens_file": str(admins)}


@pytest.fixture
def guarded(runs: tuple[str, list[str]], token_files: dict[str, str]) -> Iterator[RunsServer]:
    server = start_server(runs[0], **token_files)
    yield server
    server.stop(grace=1)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def rpc_error(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, **kwargs)  # type: ignore[operator]
    return raised.value


def assert_no_token_in(error: grpc.RpcError) -> None:
    said = f"{error.details()} {error.trailing_metadata()}"
    for token in (READER, ADMIN, OTHER_READER, "guess"):
        assert token not in said


# --- tokens ---------------------------------------------------------------------


def test_tokens_and_scopes(guarded: RunsServer, runs: tuple[str, list[str]]) -> None:
    _, (first, second) = runs
    with grpc.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        stub = RunServiceStub(channel)
        request = pb.GetRunRequest(run_id=first)
        refusals = [
            rpc_error(stub.GetRun, request),
            rpc_error(stub.GetRun, request, metadata=bearer("guess")),
            rpc_error(stub.GetRun, request, metadata=bearer(READER[:-1])),
            rpc_error(stub.GetRun, request, metadata=(("authorization", f"Basic {READER}"),)),
        ]
        for error in refusals:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            # One message whatever was wrong: nothing to learn about tokens.
            assert error.details() == auth.UNAUTHENTICATED_MESSAGE
            assert_no_token_in(error)

        for token in (READER, OTHER_READER, ADMIN):
            assert stub.GetRun(request, metadata=bearer(token)).run.id == first
        assert (
            stub.GetRun(request, metadata=(("authorization", f"bearer   {READER} "),)).run.id
            == first
        )
        listed = stub.ListRuns(pb.ListRunsRequest(), metadata=bearer(READER))
        assert sorted(r.id for r in listed.runs) == sorted([first, second])
        tasks = stub.GetRunTasks(pb.GetRunTasksRequest(run_id=first), metadata=bearer(READER))
        assert len(tasks.tasks) == 6
        stub.GetChildRuns(pb.GetChildRunsRequest(run_id=first), metadata=bearer(READER))

        denied = rpc_error(
            stub.DeleteRun, pb.DeleteRunRequest(run_id=first), metadata=bearer(READER)
        )
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "admin" in (denied.details() or "")
        assert_no_token_in(denied)
        assert stub.GetRun(request, metadata=bearer(READER)).run.id == first, (
            "a refused delete deleted"
        )

        stub.DeleteRun(pb.DeleteRunRequest(run_id=first), metadata=bearer(ADMIN))
        gone = rpc_error(stub.GetRun, request, metadata=bearer(ADMIN))
        assert gone.code() == grpc.StatusCode.NOT_FOUND

        # Health stays open to load balancers and orchestrators.
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_metadata_beyond_ascii_is_answered_not_unknown(
    guarded: RunsServer, runs: tuple[str, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """Valid UTF-8 beyond ASCII in the metadata the server reads, which
    grpc's own clients will not send and a raw HTTP/2 one will. grpc hands
    it over as text: `authorization: Bearer €` failed to encode, and a
    `spur-runs-gateway` mark of it failed hmac.compare_digest, each ending
    UNKNOWN (the latter saying "comparing strings with non-ASCII
    characters"), with a traceback at ERROR and no access line."""
    caplog.set_level(logging.INFO)
    request = pb.GetRunRequest(run_id=runs[1][0]).SerializeToString()
    method = "/spur.runs.v1.RunService/GetRun"
    token = ("authorization", f"Bearer {READER}".encode())
    sent = {
        "UNAUTHENTICATED": [
            [("authorization", "Bearer €".encode())],
            [("authorization", f"Bearer {READER}€".encode())],
            [("authorization", "Bearer \u0100".encode())],
        ],
        "OK": [
            [token, ("spur-runs-gateway", "€".encode())],
            [token, ("x-request-id", "€".encode())],
            [token, ("x-forwarded-for", "€".encode())],
        ],
    }
    for headers in [*sent["UNAUTHENTICATED"], *sent["OK"]]:
        assert raw_call(guarded.port, method, request, *headers)
    codes = [getattr(r, "code", None) for r in caplog.records if r.name == "spur_runs.access"]
    assert codes == ["UNAUTHENTICATED"] * 3 + ["OK"] * 3
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.slow
def test_grpcurl_with_a_token(guarded: RunsServer, runs: tuple[str, list[str]]) -> None:
    address = f"127.0.0.1:{guarded.port}"
    # Reflection needs a reader token too (README's -H), so does the call.
    anonymous = subprocess.run(
        [tool("grpcurl"), "-plaintext", address, "list"], capture_output=True, text=True, timeout=30
    )
    assert anonymous.returncode != 0 and "Unauthenticated" in anonymous.stderr
    listed = subprocess.run(
        [tool("grpcurl"), "-plaintext", "-H", f"authorization: Bearer {READER}", address, "list"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert listed.returncode == 0 and "spur.runs.v1.RunService" in listed.stdout, listed.stderr
    request = json.dumps({"run_id": runs[1][0]})
    refused = subprocess.run(
        [tool("grpcurl"), "-plaintext", "-d", request, address, "spur.runs.v1.RunService/GetRun"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    allowed = subprocess.run(
        [tool("grpcurl"), "-plaintext", "-H", f"authorization: Bearer {READER}", "-d", request,
         address, "spur.runs.v1.RunService/GetRun"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["run"]["id"] == runs[1][0]


# --- the policy table covers every method ------------------------------------------


class BearerToken(grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer <token>` to the streaming calls of a channel
    (reflection's only kind)."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(
            details._replace(metadata=(*(details.metadata or ()), *self._metadata)), requests
        )


def _call_without_token(
    channel: grpc.Channel, method: str, server_streaming: bool, client_streaming: bool
) -> grpc.StatusCode:
    """Call `method` with an empty message (valid for every message type)."""
    identity = bytes
    try:
        if client_streaming:
            answers = channel.stream_stream(method, identity, identity)(iter([b""]), timeout=5)
            next(iter(answers))
        elif server_streaming:
            answers = channel.unary_stream(method, identity, identity)(b"", timeout=5)
            next(iter(answers))
        else:
            channel.unary_unary(method, identity, identity)(b"", timeout=5)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_every_served_method_has_a_scope_and_is_enforced(guarded: RunsServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        # What the server really serves, as a reader discovers it.
        database = ProtoReflectionDescriptorDatabase(
            grpc.intercept_channel(channel, BearerToken(READER))
        )
        pool = descriptor_pool.DescriptorPool(database)
        served = sorted(database.get_services())
        assert served == sorted(s.full_name for s in guarded.services)
        walked = []
        for service_name in served:
            for method in pool.FindServiceByName(service_name).methods:
                full = f"/{service_name}/{method.name}"
                walked.append(full)
                assert full in auth.METHOD_SCOPES, f"{full} has no entry in auth.METHOD_SCOPES"
                code = _call_without_token(
                    channel, full, method.server_streaming, method.client_streaming
                )
                if auth.METHOD_SCOPES[full] is auth.Scope.PUBLIC:
                    assert code != grpc.StatusCode.UNAUTHENTICATED, full
                else:
                    assert code == grpc.StatusCode.UNAUTHENTICATED, full
        assert len(walked) == len(set(walked)) >= 9
    assert {m for m in auth.METHOD_SCOPES if "RunService" in m} <= set(walked)
    assert auth.METHOD_SCOPES["/spur.runs.v1.RunService/DeleteRun"] is auth.Scope.ADMIN
    readers = [m for m, s in auth.METHOD_SCOPES.items() if s is auth.Scope.READER]
    assert sorted(m.rsplit("/", 1)[1] for m in readers) == [
        "GetChildRuns", "GetRun", "GetRunStatus", "GetRunTasks", "ListRuns",
        "ServerReflectionInfo", "WatchRun",
    ]  # fmt: skip
    # WatchRun is served by a non-blocking behavior: refused all the same,
    # and without starting a watch.
    assert guarded.watch_hub.watcher_count == 0


def test_a_method_without_a_scope_stops_the_server(
    monkeypatch: pytest.MonkeyPatch, runs: tuple[str, list[str]], token_files: dict[str, str]
) -> None:
    scopes = dict(auth.METHOD_SCOPES)
    del scopes["/spur.runs.v1.RunService/GetChildRuns"]
    monkeypatch.setattr(auth, "METHOD_SCOPES", scopes)
    with pytest.raises(RuntimeError, match="GetChildRuns"):
        start_server(runs[0], **token_files)


def test_without_tokens_the_server_says_so(
    runs: tuple[str, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    server = start_server(runs[0])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert RunServiceStub(channel).GetRun(pb.GetRunRequest(run_id=runs[1][0])).run.id
    finally:
        server.stop(grace=1)
    assert any("authentication OFF" in r.getMessage() for r in caplog.records)
    assert any(
        r.levelname == "WARNING" and "--reader-tokens-file" in r.getMessage()
        for r in caplog.records
    )


# --- TLS --------------------------------------------------------------------------


def test_tls_and_mutual_tls(tmp_path: Path, runs: tuple[str, list[str]]) -> None:
    files = make_tls_files(tmp_path)
    run_id = runs[1][0]
    server = start_server(runs[0], tls_cert=files.cert, tls_key=files.key, tls_client_ca=files.ca)
    address = f"127.0.0.1:{server.port}"
    started = (
        "grpc_server_started_total",
        {"grpc_type": "unary", "grpc_service": "spur.runs.v1.RunService", "grpc_method": "GetRun"},
    )

    def calls_seen() -> float:
        return server.metrics.registry.get_sample_value(*started) or 0.0

    def get_run(credentials: grpc.ChannelCredentials) -> str:
        with grpc.secure_channel(address, credentials) as channel:
            return (
                RunServiceStub(channel).GetRun(pb.GetRunRequest(run_id=run_id), timeout=10).run.id
            )

    try:
        trusted = grpc.ssl_channel_credentials(files.ca_pem, files.client.key, files.client.cert)
        assert get_run(trusted) == run_id
        assert calls_seen() == 1

        # Refused at the handshake: no call reaches the service.
        for refused in (
            grpc.ssl_channel_credentials(files.ca_pem),  # no client certificate
            grpc.ssl_channel_credentials(files.ca_pem, files.stranger.key, files.stranger.cert),
        ):
            error = rpc_error(get_run, refused)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(address) as plain:  # plaintext to a TLS port
            error = rpc_error(
                RunServiceStub(plain).GetRun, pb.GetRunRequest(run_id=run_id), timeout=10
            )
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert calls_seen() == 1
    finally:
        server.stop(grace=1)

    # TLS without client certificates: any client that trusts the CA.
    server = start_server(runs[0], tls_cert=files.cert, tls_key=files.key)
    address = f"127.0.0.1:{server.port}"
    try:
        assert get_run(grpc.ssl_channel_credentials(files.ca_pem)) == run_id
        # A client that does not trust the server's CA refuses it.
        (tmp_path / "other").mkdir()
        other = make_tls_files(tmp_path / "other")
        error = rpc_error(get_run, grpc.ssl_channel_credentials(other.ca_pem))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=1)


@pytest.mark.slow
def test_unusable_tls_or_token_files_stop_start_up_with_one_line(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_tls_files(tmp_path / "other")
    (tmp_path / "empty").write_text("# nothing yet\n")
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    garbage = str(tmp_path / "garbage.pem")
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(Path(files.key).read_bytes(), password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    cases = [
        (["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", files.key],
         "--tls-cert=" + str(tmp_path / "nope.pem") + ": cannot read the file"),
        (["--tls-cert", files.cert, "--tls-key", other.key],
         f"--tls-key={other.key}: not a PEM certificate and its private key"),
        (["--tls-cert", files.cert, "--tls-key", files.key, "--tls-client-ca", garbage],
         "--tls-client-ca"),
        (["--tls-cert", files.cert], f"--tls-cert={files.cert}: needs --tls-key"),
        (["--tls-cert", files.cert, "--tls-key", str(encrypted)],
         f"--tls-key={encrypted}: the private key is encrypted"),
        (["--reader-tokens-file", str(tmp_path / "missing")],
         f"--reader-tokens-file={tmp_path / 'missing'}: cannot read the file"),
        (["--admin-tokens-file", str(tmp_path / "empty")],
         f"--admin-tokens-file={tmp_path / 'empty'}: the file holds no token"),
    ]  # fmt: skip
    for args, message in cases:
        result = subprocess.run(
            [sys.executable, "-m", "spur_runs", "serve", "--database-url",
             f"sqlite:///{tmp_path / 'x.db'}", "--grpc-address", "127.0.0.1:0", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (
            args,
            result.stderr,
        )


# --- reflection -------------------------------------------------------------------


def test_reflection_can_be_switched_off(runs: tuple[str, list[str]]) -> None:
    server = start_server(runs[0], reflection=False)
    try:
        listed = subprocess.run(
            [tool("grpcurl"), "-plaintext", f"127.0.0.1:{server.port}", "list"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert listed.returncode != 0
        assert "does not support the reflection API" in listed.stderr
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert RunServiceStub(channel).GetRun(pb.GetRunRequest(run_id=runs[1][0])).run.id
    finally:
        server.stop(grace=1)
