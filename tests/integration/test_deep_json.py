"""JSON that a writer of PySpur's database nested deeper than this service's
libraries go (a red team, 2026-12-04): Python's recursion limit (~500
levels, converting to protobuf), orjson's (255, writing HTTP answers) and
protobuf's parse depth (100 messages, ~49 JSON levels). Each was INTERNAL,
some with a traceback of thousands of lines per call, and WatchRun refused
runs GetRun serves."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest
from sqlalchemy import text

from factories import add_run, add_workflow, all_done
from http_client import Http
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database

pytest_plugins = ["http_fixtures"]

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _run_with_outputs(db: Database, outputs: str) -> str:
    with db.write() as s:
        run = add_run(s, add_workflow(s), tasks=all_done()[:1])
        s.execute(text("UPDATE tasks SET outputs = :v WHERE run_id = :r"), {"v": outputs, "r": run})
    return run


@pytest.fixture
def channel(http_server: RunsServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{http_server.port}") as channel:
        yield channel


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_json_nested_past_pythons_recursion_is_data_loss_without_a_traceback(
    db: Database, channel: grpc.Channel, client: Http, caplog: pytest.LogCaptureFixture
) -> None:
    run = _run_with_outputs(db, _nested(700))
    with pytest.raises(grpc.RpcError) as raised:
        RunServiceStub(channel).GetRun(pb.GetRunRequest(run_id=run), timeout=10)
    assert raised.value.code() is grpc.StatusCode.DATA_LOSS, raised.value.details()
    assert "nested too deeply" in (raised.value.details() or "")
    for path in (f"/run/{run}/", f"/run/{run}/tasks/", f"/run/{run}/watch"):
        reply = client.get(path)
        assert reply.status == 500
        assert "nested too deeply" in reply.error(15)["message"]
    assert _tracebacks(caplog) == []


def test_json_deeper_than_an_http_answer_holds_is_data_loss(
    db: Database, channel: grpc.Channel, client: Http, caplog: pytest.LogCaptureFixture
) -> None:
    run = _run_with_outputs(db, _nested(300))
    raw = channel.unary_unary("/spur.runs.v1.RunService/GetRun")
    assert raw(pb.GetRunRequest(run_id=run).SerializeToString(), timeout=10)  # gRPC serves it
    for path in (f"/run/{run}/", f"/run/{run}/tasks/", f"/v1/runs/{run}"):
        reply = client.get(path)
        assert reply.status == 500
        assert "nested too deeply" in reply.error(15)["message"]
    assert _tracebacks(caplog) == []


def test_watch_serves_what_getrun_serves_past_protobufs_parse_depth(
    db: Database, channel: grpc.Channel, client: Http, caplog: pytest.LogCaptureFixture
) -> None:
    run = _run_with_outputs(db, _nested(60))
    # Read as bytes: Python's protobuf parses no deeper, Go's and others' do.
    watch = channel.unary_stream("/spur.runs.v1.RunService/WatchRun")
    sent = list(watch(pb.WatchRunRequest(run_id=run).SerializeToString(), timeout=10))
    assert len(sent) == 1 and _nested(60).encode() not in sent[0]  # (protobuf, not JSON)
    assert run.encode() in sent[0] and len(sent[0]) > 60 * 4  # the finished run, then the end
    # The gateway's own protobuf cannot parse it: DATA_LOSS, not a 200
    # with an empty stream.
    reply = client.get(f"/run/{run}/watch")
    assert reply.status == 500
    assert "nested too deeply" in reply.error(15)["message"]
    assert _tracebacks(caplog) == []
