"""Limits that protect the server, against a real server: concurrent calls,
message sizes, keepalive enforcement, and the deadline of database work
(the server's own bound, and the client's deadline passed down to
PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from half_open import closed_by_server, idle_connections
from http_client import Http, start_http_server
from locks import runs_locked
from seeding import seeded
from servers import start_server, wait_until
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.rpc import limits


def in_background(call: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = call()
        except grpc.RpcError as error:
            result["error"] = error.code()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


@pytest.mark.slow
def test_calls_beyond_max_concurrent_rpcs_get_resource_exhausted(postgres_url: str) -> None:
    run_id = seeded(postgres_url)
    server = start_server(postgres_url, max_concurrent_rpcs=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            request = pb.GetRunRequest(run_id=run_id)
            with runs_locked(postgres_url) as waiting:
                held = [
                    in_background(lambda: stub.GetRun(request, timeout=30).run.id) for _ in range(2)
                ]
                wait_until(lambda: waiting() == 2, "two calls blocked inside the server")
                with pytest.raises(grpc.RpcError) as raised:
                    stub.GetRun(request, timeout=10)
                assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "limit" in (raised.value.details() or "").lower()
            for thread, result in held:
                thread.join(timeout=20)
                assert result == {"value": run_id}
            # Below the limit again: calls go through.
            assert stub.GetRun(request, timeout=10).run.id == run_id
    finally:
        server.stop(grace=1)


def test_message_size_limits(sqlite_url: str) -> None:
    run_id = seeded(sqlite_url)
    server = start_server(sqlite_url, max_request_bytes=1024, max_response_bytes=1024)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                stub.GetRun(pb.GetRunRequest(run_id="R" + "1" * 2000), timeout=10)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # A run with its six tasks is more than 1 KiB.
            with pytest.raises(grpc.RpcError) as raised:
                stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Small answers still pass.
            missing = pb.GetRunRequest(run_id="R999")
            with pytest.raises(grpc.RpcError) as raised:
                stub.GetRun(missing, timeout=10)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(grace=1)


@pytest.mark.slow
def test_database_work_is_bounded_by_db_timeout(postgres_url: str) -> None:
    run_id = seeded(postgres_url)
    server = start_server(postgres_url, db_timeout_seconds=0.5)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            with runs_locked(postgres_url):
                with pytest.raises(grpc.RpcError) as raised:
                    stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30)
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "database did not answer" in (raised.value.details() or "")
            assert stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30).run.id == run_id
    finally:
        server.stop(grace=1)


@pytest.mark.slow
def test_a_client_deadline_cancels_the_database_statement(postgres_url: str) -> None:
    run_id = seeded(postgres_url)
    server = start_server(postgres_url, db_timeout_seconds=60)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            with runs_locked(postgres_url) as waiting:
                with pytest.raises(grpc.RpcError) as raised:
                    stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=1)
                assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                # The lock is still held, yet the server's statement stops
                # waiting: PostgreSQL cancelled it at the client's deadline,
                # not at the server's 60 s bound.
                wait_until(lambda: waiting() == 0, "the server's statement gave up", timeout=10)
    finally:
        server.stop(grace=1)


def _watch_until_end(port: int, options: list[tuple[str, int]], timeout: float) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        answers = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=timeout
        )
        try:
            for _ in answers:
                pass
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.slow
def test_clients_that_ping_too_often_are_sent_away(sqlite_url: str) -> None:
    seeded(sqlite_url)
    # A client pinging every 200 ms on an idle stream (a Watch with no news).
    pinger = [
        ("grpc.keepalive_time_ms", 200),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    strict = start_server(sqlite_url, min_ping_interval_seconds=10, health_interval=60)
    lenient = start_server(sqlite_url, min_ping_interval_seconds=0, health_interval=60)
    try:
        # GOAWAY too_many_pings: the stream ends UNAVAILABLE long before its deadline.
        assert _watch_until_end(strict.port, pinger, timeout=30) == grpc.StatusCode.UNAVAILABLE
        # Where pings are allowed, the same stream lives until its deadline.
        assert (
            _watch_until_end(lenient.port, pinger, timeout=2) == grpc.StatusCode.DEADLINE_EXCEEDED
        )
    finally:
        strict.stop(grace=0)
        lenient.stop(grace=0)


def test_health_watchers_do_not_take_the_threads_of_calls(sqlite_url: str) -> None:
    """Watch streams live as long as their clients (load balancers keep them
    open): they must not hold one of the --max-workers threads each."""
    run_id = seeded(sqlite_url)
    server = start_server(sqlite_url, max_workers=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(4)]
            for watch in watches:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            answer = RunServiceStub(channel).GetRun(pb.GetRunRequest(run_id=run_id), timeout=5)
            assert answer.run.id == run_id
            for watch in watches:
                watch.cancel()
        # Still observed: each stream counted when it ended.
        labels = {
            "grpc_type": "server_stream",
            "grpc_service": "grpc.health.v1.Health",
            "grpc_method": "Watch",
        }
        wait_until(
            lambda: (
                server.metrics.registry.get_sample_value(
                    "grpc_server_handled_total", {**labels, "grpc_code": "Canceled"}
                )
                == 4
            ),
            "four cancelled Watch streams counted",
        )
        assert server.metrics.registry.get_sample_value("grpc_server_msg_sent_total", labels) == 4
    finally:
        server.stop(grace=0)


def _http_get(port: int, path: str) -> tuple[int, dict[str, object]]:
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_http_calls_share_the_limits_of_grpc_calls(postgres_url: str) -> None:
    """The gateway runs unary calls in process (gateway/inprocess.py): they take
    the gRPC server's threads and count against --max-concurrent-rpcs and
    --max-response-bytes like gRPC calls do."""
    run_id = seeded(postgres_url)
    server = start_server(
        postgres_url, http_address="127.0.0.1:0", max_concurrent_rpcs=2, max_workers=2
    )
    assert server.http_port is not None
    port = server.http_port
    try:
        with runs_locked(postgres_url) as waiting:
            held = [in_background(lambda: _http_get(port, f"/run/{run_id}")) for _ in range(2)]
            wait_until(lambda: waiting() == 2, "two HTTP calls blocked inside the server")
            status, body = _http_get(port, f"/run/{run_id}")
            assert status == 429 and "limit" in str(body["message"]).lower(), body
        for thread, result in held:
            thread.join(timeout=20)
            status, body = result["value"]  # type: ignore[misc]
            assert status == 200 and body["id"] == run_id  # type: ignore[index]
        assert _http_get(port, f"/run/{run_id}")[0] == 200
    finally:
        server.stop(grace=1)

    server = start_server(postgres_url, http_address="127.0.0.1:0", max_response_bytes=1024)
    assert server.http_port is not None
    try:
        # A run with its six tasks is more than 1 KiB; its BASIC view is not.
        status, body = _http_get(server.http_port, f"/run/{run_id}")
        assert status == 429 and body["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], body
        status, body = _http_get(server.http_port, f"/run/{run_id}?view=RUN_VIEW_BASIC")
        assert status == 200, body
    finally:
        server.stop(grace=1)


def test_http_calls_refused_by_the_concurrent_call_limit_leave_an_access_line(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """grpc refuses a call beyond --max-concurrent-rpcs before any hook of
    ours sees it, so it leaves no call line: the gateway's 429 for it, a
    GET or a watch, leaves the gateway's own line (gateway/access.py), one
    per request (a red team found none, 2026-12-04)."""
    run_id = seeded(postgres_url)
    server = start_server(
        postgres_url, http_address="127.0.0.1:0", max_concurrent_rpcs=1, max_workers=2
    )
    assert server.http_port is not None
    port = server.http_port
    caplog.set_level("INFO", logger="spur_runs.access")
    try:
        with (
            runs_locked(postgres_url) as waiting,
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            # One call of each road held (the gateway's unary calls run in
            # process, its watches through a channel, as gRPC callers').
            get_run = RunServiceStub(channel).GetRun
            held = [
                in_background(lambda: _http_get(port, f"/run/{run_id}")),
                in_background(lambda: get_run(pb.GetRunRequest(run_id=run_id), timeout=30)),
            ]
            wait_until(lambda: waiting() == 2, "a call of each road blocked inside the server")
            for path in (f"/run/{run_id}", f"/run/{run_id}/watch"):
                status, body = _http_get(port, path)
                assert status == 429 and "limit" in str(body["message"]).lower(), (path, body)
        for thread, _ in held:
            thread.join(timeout=20)
    finally:
        server.stop(grace=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "spur_runs.access"]
    assert [line.split()[:3] for line in lines if "http_status=429" in line] == [
        ["GET", f"/run/{run_id}", "RESOURCE_EXHAUSTED"],
        ["GET", f"/run/{run_id}/watch", "RESOURCE_EXHAUSTED"],
    ], lines


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_grpc_connections_beyond_the_bound_are_closed(migrated_url: str) -> None:
    server = start_http_server(migrated_url, grpc_max_connections=3)
    assert server.http_port is not None
    idle = idle_connections(server.port, 6)
    try:
        closed = [closed_by_server(sock) for sock in idle]
        assert closed == [False] * 3 + [True] * 3
        # HTTP still has its own descriptors and threads.
        assert Http(server.http_port, timeout=5).get("/run/R1/").status == 404
        for sock in idle[:3]:
            sock.close()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            # A slot is free again once the server has seen a close (at
            # once, or after a moment under load: wait_for_ready retries).
            with pytest.raises(grpc.RpcError) as raised:
                RunServiceStub(channel).GetRun(
                    pb.GetRunRequest(run_id="R1"), timeout=15, wait_for_ready=True
                )
            assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    finally:
        for sock in idle:
            sock.close()
        server.stop(grace=1)


def test_the_grpc_connection_bound_fits_the_file_limit() -> None:
    assert limits.grpc_connections(1024, soft_limit=20_000) == 1024
    assert limits.grpc_connections(1024, soft_limit=1024) == 1024 // 2 - 256
    assert limits.grpc_connections(1024, soft_limit=300) == 1


def test_rows_too_large_for_any_response_are_refused_before_they_are_decoded(
    database_url: str,
) -> None:
    """Large stored outputs (an LLM's, say) in a page of runs took gigabytes
    of Python objects before the response's size was known (a review,
    2026-12-04: 2.4 GB for one ListRuns page). A read whose stored text is
    more than 4x --max-response-bytes is refused before its rows are
    decoded, on both databases: the message says so, where the encoder's
    says "the response is larger than"."""
    from sqlalchemy import create_engine, text

    run_id = seeded(database_url)
    engine = create_engine(database_url)
    with engine.begin() as connection:  # ~6 x 48 KB: more than 4 x 64 KiB
        connection.execute(
            text("UPDATE tasks SET outputs = :doc WHERE run_id = :run_id"),
            {"doc": '{"text": "' + "x" * 48_000 + '"}', "run_id": run_id},
        )
    engine.dispose()
    server = start_server(database_url, max_response_bytes=64 * 1024)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            calls: list[Callable[[], object]] = [
                lambda: stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10),
                lambda: stub.ListRuns(pb.ListRunsRequest(page_size=100), timeout=10),
                lambda: stub.GetRunTasks(pb.GetRunTasksRequest(run_id=run_id), timeout=10),
            ]
            for call in calls:
                with pytest.raises(grpc.RpcError) as raised:
                    call()
                assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "stored data is more than 262144 characters" in str(raised.value.details())
            # Without the tasks it fits, and one task at a time too.
            basic = pb.GetRunRequest(run_id=run_id, view=run_pb2.RUN_VIEW_BASIC)
            assert stub.GetRun(basic, timeout=10).run.id == run_id
            page = stub.GetRunTasks(pb.GetRunTasksRequest(run_id=run_id, page_size=1), timeout=10)
            assert len(page.tasks) == 1
    finally:
        server.stop(grace=1)


@pytest.mark.slow
def test_reads_that_grow_with_the_table_take_half_the_threads_at_most(postgres_url: str) -> None:
    """A page-number page deep in the table, or a total count, costs a walk
    over the runs before it (a review, 2026-12-04: 16 at once made an
    honest GetRun take 2.4 s). Half of --max-workers read them at once;
    one more is refused, saying how to page cheaply."""
    seeded(postgres_url)
    server = start_server(postgres_url, max_workers=4)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            deep = pb.ListRunsRequest(page=20, page_size=100)  # 1,900 runs deep
            with runs_locked(postgres_url) as waiting:
                held = [
                    in_background(lambda: len(stub.ListRuns(deep, timeout=30).runs))
                    for _ in range(2)
                ]
                wait_until(lambda: waiting() == 2, "two deep pages blocked inside the server")
                for request in (deep, pb.ListRunsRequest(include_total_size=True)):
                    with pytest.raises(grpc.RpcError) as raised:
                        stub.ListRuns(request, timeout=10)
                    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "page_token" in (raised.value.details() or "")
            for thread, result in held:
                thread.join(timeout=20)
                assert result == {"value": 0}
            # The slots are free again.
            assert stub.ListRuns(pb.ListRunsRequest(include_total_size=True)).total_size == 1
    finally:
        server.stop(grace=1)
