"""Observability against a real server: Prometheus metrics scraped from the
HTTP port, the JSON access log of the `spur-runs` command parsed line by
line, request ids."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest

from certs import make_tls_files
from locks import runs_locked
from metrics import RUNS, method, scrape, value
from seeding import seeded
from servers import free_port, serve_command, start_server, wait_health, wait_until
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub


@pytest.mark.slow
def test_metrics_count_calls_by_method_and_code(postgres_url: str) -> None:
    run_id = seeded(postgres_url)
    server = start_server(postgres_url, http_address="127.0.0.1:0", pool_size=3)
    assert server.http_port is not None
    try:
        before = scrape(server.http_port)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            for _ in range(2):
                stub.GetRun(pb.GetRunRequest(run_id=run_id))
            with pytest.raises(grpc.RpcError):
                stub.GetRun(pb.GetRunRequest(run_id="R424242"))
            with pytest.raises(grpc.RpcError):
                stub.ListRuns(pb.ListRunsRequest(page_size=1000))
            # An HTTP caller goes through the same interceptors, and is counted the same way.
            with urllib.request.urlopen(
                f"http://127.0.0.1:{server.http_port}/run/{run_id}", timeout=10
            ) as answer:
                assert json.loads(answer.read())["id"] == run_id

            after = scrape(server.http_port)

            def delta(name: str, **labels: str) -> float:
                return value(after, name, **labels) - value(before, name, **labels)

            assert delta("grpc_server_started_total", **method("GetRun")) == 4
            assert delta("grpc_server_handled_total", **method("GetRun", grpc_code="OK")) == 3
            assert delta("grpc_server_handled_total", **method("GetRun", grpc_code="NotFound")) == 1
            assert (
                delta(
                    "grpc_server_handled_total", **method("ListRuns", grpc_code="InvalidArgument")
                )
                == 1
            )
            assert delta("grpc_server_handling_seconds_count", **method("GetRun")) == 4
            assert delta("grpc_server_handling_seconds_bucket", **method("GetRun", le="+Inf")) == 4
            assert delta("grpc_server_msg_received_total", **method("GetRun")) == 4
            assert delta("grpc_server_msg_sent_total", **method("GetRun")) == 3
            assert value(after, "grpc_server_handling_seconds_sum", **method("GetRun")) > 0
            assert not any(name.endswith("_created") for name, _ in after)

            # Pool gauges: the configured size, and a call in flight holds a
            # connection while it waits for a lock.
            assert value(after, "spur_runs_db_pool_size", database="primary") == 3
            with runs_locked(postgres_url) as waiting:
                caller = threading.Thread(
                    target=lambda: stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30)
                )
                caller.start()
                wait_until(lambda: waiting() == 1, "a call blocked inside the server")
                during = scrape(server.http_port)
                # GetRun's one statement runs on its thread's kept connection.
                assert value(during, "spur_runs_db_pool_kept_in_use", database="primary") == 1
                assert value(during, "spur_runs_db_pool_kept", database="primary") >= 1
            caller.join(timeout=20)
            idle = scrape(server.http_port)
            assert value(idle, "spur_runs_db_pool_checked_out", database="primary") == 0
            assert value(idle, "spur_runs_db_pool_kept_in_use", database="primary") == 0
    finally:
        server.stop(grace=1)


@pytest.mark.slow
def test_json_access_log_and_request_ids(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = seeded(url)
    token = "t0ken-never-in-logs-5d1e"
    tokens = tmp_path / "readers"
    tokens.write_text(token + "\n")
    port = free_port()
    log_file = (tmp_path / "stderr").open("w+")
    with serve_command(
        ["--database-url", url,
         "--grpc-address", f"127.0.0.1:{port}", "--reader-tokens-file", str(tokens)],
        log_file, {"SPUR_RUNS_LOG_FORMAT": "json"},
    ):  # fmt: skip
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_health(channel, 1)
            stub = RunServiceStub(channel)
            auth = ("authorization", f"Bearer {token}")
            _, call = stub.GetRun.with_call(
                pb.GetRunRequest(run_id=run_id), metadata=(auth, ("x-request-id", "req-42.a"))
            )
            assert ("x-request-id", "req-42.a") in call.trailing_metadata()
            _, call = stub.GetRun.with_call(pb.GetRunRequest(run_id=run_id), metadata=(auth,))
            generated = dict(call.trailing_metadata())["x-request-id"]
            assert len(generated) == 32 and int(generated, 16) >= 0
            # An id that could forge log lines or bloat them is replaced.
            _, call = stub.GetRun.with_call(
                pb.GetRunRequest(run_id=run_id), metadata=(auth, ("x-request-id", "x" * 300))
            )
            replaced = dict(call.trailing_metadata())["x-request-id"]
            assert replaced != "x" * 300
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=(("x-request-id", "req-43"),))
            assert ("x-request-id", "req-43") in refused.value.trailing_metadata()
            with pytest.raises(grpc.RpcError):
                stub.ListRuns(
                    pb.ListRunsRequest(page_token="payload-sentinel-91"), metadata=(auth,)
                )
    log_file.seek(0)
    output = log_file.read()
    assert token not in output, "a token was logged"
    assert "payload-sentinel-91" not in output, "a request payload was logged"
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line is JSON
    for line in lines:
        assert {"time", "level", "logger", "message", "pid"} <= set(line)
    access = [line for line in lines if line["logger"] == "spur_runs.access"]
    by_id = {line["request_id"]: line for line in access}
    first = by_id["req-42.a"]
    assert first["method"] == f"/{RUNS}/GetRun" and first["code"] == "OK"
    assert isinstance(first["duration_ms"], float) and first["duration_ms"] > 0
    assert first["peer"].startswith("ipv4:127.0.0.1:")
    assert by_id[generated]["code"] == "OK" and by_id[replaced]["code"] == "OK"
    assert by_id["req-43"]["code"] == "UNAUTHENTICATED"
    listed = [line for line in access if line["method"] == f"/{RUNS}/ListRuns"]
    assert [line["code"] for line in listed] == ["INVALID_ARGUMENT"]
    assert any("authentication on (1 tokens)" in line["message"] for line in lines)


def test_an_error_logged_during_a_call_carries_its_request_id(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spur_runs.store import runs as storage
    from spur_runs.telemetry.logs import RequestIdFilter

    run_id = seeded(sqlite_url)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(storage, "get_run", broken)
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level("INFO")
    server = start_server(sqlite_url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.RpcError) as raised:
                RunServiceStub(channel).GetRun(
                    pb.GetRunRequest(run_id=run_id), metadata=(("x-request-id", "trace-7"),)
                )
    finally:
        server.stop(grace=1)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details() == "internal error"
    (error,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert error.exc_info is not None and "a bug" in str(error.exc_info[1])
    assert error.request_id == "trace-7"  # type: ignore[attr-defined]
    (line,) = [r for r in caplog.records if r.name == "spur_runs.access"]
    assert line.code == "INTERNAL" and line.request_id == "trace-7"  # type: ignore[attr-defined]


def test_the_text_access_line_names_an_http_caller(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An HTTP watch reaches gRPC through the gateway's own socket, so its
    peer names no client: the line carries forwarded_for, as unary ones do."""
    run_id = seeded(sqlite_url)
    caplog.set_level("INFO")
    server = start_server(sqlite_url, http_address="127.0.0.1:0")
    try:
        for path in (f"/run/{run_id}/", f"/run/{run_id}/watch"):  # a completed run's ends
            with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}{path}") as reply:
                assert reply.status == 200
                reply.read()
    finally:
        server.stop(grace=1)
    lines = {
        r.method.rpartition("/")[2]: r.getMessage()  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "spur_runs.access"
    }
    assert " peer=unix:" in lines["WatchRun"], lines
    for name in ("GetRun", "WatchRun"):
        assert lines[name].endswith(" forwarded_for=127.0.0.1"), lines


def test_the_start_up_log_shows_no_password_of_the_query_string(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """libpq takes a password in the query string too: SQLAlchemy's
    render_as_string(hide_password=True) masks only user:password@, and
    `serving gRPC on ... (database ...?password=qs3cret)` was logged."""
    from spur_runs.store.migrate import migrate

    migrate(postgres_url)
    caplog.set_level("INFO")
    server = start_server(postgres_url + "?password=qs3cret&sslpassword=k3y")
    server.stop(grace=0)
    serving = [r.getMessage() for r in caplog.records if "serving gRPC" in r.getMessage()]
    assert serving and "password=***" in serving[0], serving
    assert "qs3cret" not in caplog.text and "k3y" not in caplog.text, caplog.text


@pytest.mark.slow
def test_json_logs_stay_json_when_tls_handshakes_fail(tmp_path: Path) -> None:
    """grpc's core logged each failed TLS handshake (a plaintext client, a
    client without the CA's certificate, a port scan) as a line of its own
    on stderr, "I1204 ... Handshake failed ...": not JSON, and as many as any
    client cared to cause."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = seeded(url)
    files = make_tls_files(tmp_path)
    port = free_port()
    log_file = (tmp_path / "stderr").open("w+")
    env = {key: value for key, value in os.environ.items() if key != "GRPC_VERBOSITY"}
    with serve_command(
        ["--database-url", url, "--grpc-address", f"127.0.0.1:{port}", "--log-format", "json",
         "--tls-cert", files.cert, "--tls-key", files.key, "--tls-client-ca", files.ca],
        log_file, env, inherit=False,
    ):  # fmt: skip
        trusted = grpc.ssl_channel_credentials(files.ca_pem, files.client.key, files.client.cert)
        with grpc.secure_channel(f"127.0.0.1:{port}", trusted) as channel:
            wait_health(channel, 1)
            assert RunServiceStub(channel).GetRun(pb.GetRunRequest(run_id=run_id)).run.id == run_id
        for refused in (
            grpc.insecure_channel(f"127.0.0.1:{port}"),  # plaintext to the TLS port
            grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(files.ca_pem)),
        ):
            with refused, pytest.raises(grpc.RpcError):
                RunServiceStub(refused).GetRun(pb.GetRunRequest(run_id=run_id), timeout=5)
    log_file.seek(0)
    lines = log_file.read().splitlines()
    assert any("spur_runs.access" in line for line in lines)
    assert [line for line in lines if not line.startswith("{")] == []


def test_a_call_past_its_deadline_still_names_its_peer(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The access line of a call whose client's deadline passed while it
    waited on the database: grpc's peer() says "" once the call is dead, so
    the peer is read as the call begins (a review saw `peer=` in 2 of 5 such
    lines, 2026-12-04)."""
    run_id = seeded(postgres_url)
    caplog.set_level("INFO")
    server = start_server(postgres_url)
    try:
        with (
            runs_locked(postgres_url),
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            stub = RunServiceStub(channel)
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as raised:
                    stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=0.3)
                assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(
            lambda: sum(r.name == "spur_runs.access" for r in caplog.records) >= 3,
            "the three calls' lines",
        )
    finally:
        server.stop(grace=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "spur_runs.access"]
    assert len(lines) == 3, lines
    for line in lines:
        assert " peer=ipv4:127.0.0.1:" in line, lines
