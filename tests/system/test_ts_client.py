"""Stubs generated from protos/ work in TypeScript: clients/ts (buf +
protoc-gen-es, @connectrpc/connect over gRPC) calls every RPC of a real
server and checks its answers; this test checks them again from Python,
against the rows it wrote. The same client parses the HTTP/JSON gateway's
answers with the generated schemas.

CI builds the client first (README's test command: `npm ci`, `npm run
generate`, `npm run build` in clients/ts). Under CI=true a missing build fails
the test; elsewhere it skips with the commands to run. The generated code is
not committed, so the first test checks that it is what protos/ generate today."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import select, update

from factories import NODES, add_run, add_workflow, all_done
from servers import start_server
from spur.runs.v1 import run_service_pb2, run_service_pb2_grpc
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database
from spur_runs.store.migrate import migrate
from spur_runs.store.models import Run, RunStatus, Task, TaskStatus
from tools import ROOT, tool

CLIENT = ROOT / "clients" / "ts"
GENERATED = CLIENT / "src" / "gen"
BUILT = CLIENT / "dist" / "runs_client.js"
BUILD = "(cd clients/ts && npm ci && npm run generate && npm run build)"
SERVICE = run_service_pb2.DESCRIPTOR.services_by_name["RunService"]
TOKEN = "ts-admin-token"


def missing(what: str) -> None:
    message = f"the TypeScript client is not built ({what}): {BUILD}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not installed")
    if not (CLIENT / "node_modules" / "@connectrpc" / "connect-node").is_dir():
        missing("no node_modules")
    if not (GENERATED / "spur" / "runs" / "v1" / "run_service_pb.ts").is_file():
        missing("no generated code in src/gen")
    if not BUILT.is_file():
        missing("no dist/")
    return found


def files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


@pytest.mark.slow
def test_generated_code_is_fresh_and_built(tmp_path: Path) -> None:
    node()
    result = subprocess.run(
        [tool("buf"), "generate", "--template", "clients/ts/buf.gen.yaml", "-o", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    fresh = tmp_path / "clients" / "ts" / "src" / "gen"
    # The contract, the google/api files it imports, google.rpc.BadRequest.
    assert {str(p) for p in files(fresh)} == {
        "spur/runs/v1/run_pb.ts",
        "spur/runs/v1/run_service_pb.ts",
        "google/api/annotations_pb.ts",
        "google/api/http_pb.ts",
        "google/api/field_behavior_pb.ts",
        "google/rpc/error_details_pb.ts",
    }
    assert files(fresh) == files(GENERATED), f"src/gen has missing or extra files: {BUILD}"
    stale = [
        str(p) for p in files(fresh) if not filecmp.cmp(fresh / p, GENERATED / p, shallow=False)
    ]
    assert not stale, f"src/gen is stale: {BUILD}"
    sources = [p for p in (CLIENT / "src").rglob("*.ts")]
    newest = max(p.stat().st_mtime for p in sources)
    assert BUILT.stat().st_mtime >= newest, f"dist/ is older than src/: {BUILD}"


def _seed(url: str) -> dict[str, Any]:
    migrate(url)
    db = Database.from_url(url, pool_size=1)
    with db.write() as s:
        workflow = add_workflow(s)
        start = datetime(2026, 11, 2, 9, 0, 0)
        parent = add_run(
            s, workflow, tasks=all_done(), start_time=start,
            end_time=datetime(2026, 11, 2, 9, 5, 30),
            initial_inputs={"input_node": {"question": "why?", "n": 3}},
        )  # fmt: skip
        child = add_run(
            s, workflow, tasks=all_done(), parent_run_id=parent,
            start_time=datetime(2026, 11, 2, 9, 1, 0), end_time=datetime(2026, 11, 2, 9, 2, 0),
        )  # fmt: skip
        failed = add_run(
            s, workflow, status=RunStatus.FAILED, start_time=datetime(2026, 11, 3, 10, 0, 0),
            end_time=datetime(2026, 11, 3, 10, 0, 1),
            tasks=[("input_node", TaskStatus.COMPLETED), ("llm", TaskStatus.FAILED)],
        )  # fmt: skip
        canceled = add_run(
            s, workflow, status=RunStatus.CANCELED, start_time=datetime(2026, 11, 4, 8, 0, 0),
            end_time=datetime(2026, 11, 4, 8, 30, 0), tasks=[("input_node", TaskStatus.CANCELED)],
        )  # fmt: skip
        running = add_run(
            s, workflow, status=RunStatus.RUNNING, start_time=datetime(2026, 11, 5, 7, 0, 0),
            tasks=[("input_node", TaskStatus.COMPLETED), ("llm", TaskStatus.RUNNING)],
        )  # fmt: skip
        other = add_workflow(s, name="other")
        batch = add_run(
            s, other, run_type="batch", tasks=all_done(), start_time=datetime(2026, 11, 1, 6, 0, 0),
            end_time=datetime(2026, 11, 1, 6, 0, 2),
        )  # fmt: skip
    db.dispose()
    return {
        "parent": parent, "child": child, "failed": failed, "canceled": canceled,
        "running": running, "batch": batch,
    }  # fmt: skip


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[RunsServer, str, dict[str, Any]]]:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    ids = _seed(url)
    tokens = tmp_path / "admins"
    tokens.write_text(f"{TOKEN}\n")
    extra: dict[str, object] = {"watch_interval": 0.05}
    server = start_server(url, http_address="127.0.0.1:0", admin_tokens_file=str(tokens), **extra)
    try:
        yield server, url, ids
    finally:
        server.stop(grace=1)


def _grpc_run(server: RunsServer, run_id: str) -> dict[str, Any]:
    """The same run as Python's generated stubs read it, as proto3 JSON."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        response = stub.GetRun(
            run_service_pb2.GetRunRequest(run_id=run_id),
            metadata=(("authorization", f"Bearer {TOKEN}"),),
        )
    return json_format.MessageToDict(response.run)


@pytest.mark.slow
def test_ts_client_calls_every_rpc(seeded: tuple[RunsServer, str, dict[str, Any]]) -> None:
    server, url, ids = seeded
    args = [node(), str(BUILT), f"127.0.0.1:{server.port}", "--token", TOKEN,
            "--http", f"127.0.0.1:{server.http_port}", "--delete", ids["parent"]]  # fmt: skip
    # Python's view of the runs, read before the client deletes one.
    expected = {run_id: _grpc_run(server, run_id) for run_id in ids.values()}
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "all checks passed" in result.stderr
    summary = json.loads(result.stdout)

    # Every RunService method, as the client's interceptor saw its calls.
    assert summary["methods"] == sorted(m.name for m in SERVICE.methods)
    runs = summary["runs"]
    assert set(runs) == set(ids.values())
    # Newest start_time first, and every run once across the pages.
    assert summary["listed"] == [
        ids[k] for k in ("running", "canceled", "failed", "child", "parent", "batch")
    ]
    for run_id, seen in runs.items():
        want = expected[run_id]
        assert seen["status"] == want["status"], run_id
        assert seen["workflow_id"] == want["workflowId"]
        assert seen["workflow_version_id"] == want["workflowVersionId"]
        # Timestamps: the Date the client made of each, the instant Python reads.
        for ts, key in (("start_time", "startTime"), ("end_time", "endTime")):
            if key in want:
                assert _instant(seen[ts]) == _instant(want[key]), (run_id, ts)
            else:
                assert seen[ts] is None
        assert seen["tasks"] == len(want["tasks"]) == want["taskCount"]
        assert seen["task_statuses"] == [t["status"] for t in want["tasks"]]
        # node_type is the definition's (a Struct the client read as JSON).
        assert seen["definition_nodes"] == [n for n, _ in NODES]
        assert seen["node_types"] == {t["nodeId"]: dict(NODES)[t["nodeId"]] for t in want["tasks"]}
    assert runs[ids["parent"]]["initial_inputs"] == {"input_node": {"question": "why?", "n": 3}}
    assert runs[ids["parent"]]["duration"] == 330
    assert runs[ids["running"]]["status"] == "RUNNING"
    assert runs[ids["failed"]]["task_statuses"] == ["COMPLETED", "FAILED"]
    assert runs[ids["parent"]]["children"] == [ids["child"]]
    assert runs[ids["child"]]["parent"] == ids["parent"]

    # Codes by name, and the field google.rpc.BadRequest names.
    errors = summary["errors"]
    assert errors["missing"] == {"code": "NOT_FOUND", "fields": []}
    assert errors["malformed"] == {"code": "INVALID_ARGUMENT", "fields": ["run_id"]}
    assert errors["page_size"] == {"code": "INVALID_ARGUMENT", "fields": ["page_size"]}
    assert errors["page_token"] == {"code": "INVALID_ARGUMENT", "fields": ["page_token"]}
    assert errors["delete_again"]["code"] == "NOT_FOUND"

    # DeleteRun took the parent and its child.
    assert summary["deleted"] == ids["parent"]
    db = Database.from_url(url, pool_size=1)
    with db.read() as conn:
        left = set(conn.execute(select(Run.id)).scalars())
    db.dispose()
    assert left == set(ids.values()) - {ids["parent"], ids["child"]}

    # The gateway: Connect's protocol has no route there; its REST answers,
    # parsed with the generated schemas, equal gRPC's.
    gateway = summary["gateway"]
    assert gateway["connect_protocol"]["code"] == "UNIMPLEMENTED"
    assert "no route for /spur.runs.v1.RunService/GetRun" in gateway["connect_protocol"]["message"]
    assert sorted(gateway["fetched_runs"]) == sorted(ids.values())
    assert gateway["listed_runs"] == summary["listed"][:2]
    assert gateway["errors"] == {
        "missing": {"status": 404, "code": "NOT_FOUND", "fields": []},
        "malformed": {"status": 400, "code": "INVALID_ARGUMENT", "fields": ["run_id"]},
        "page_size": {"status": 400, "code": "INVALID_ARGUMENT", "fields": ["page_size"]},
    }

    filters = summary["filters"]
    first_workflow = expected[ids["running"]]["workflowId"]
    middle = "2026-11-03T10:00:00.000Z"  # the failed run's start: the median one
    assert filters == {
        "status=FAILED,CANCELED": [ids["canceled"], ids["failed"]],
        f"workflow_id={first_workflow}": [
            ids[k] for k in ("running", "canceled", "failed", "child", "parent")
        ],
        "parent_only": [ids[k] for k in ("running", "canceled", "failed", "parent", "batch")],
        f"start_time_after={middle}": [ids[k] for k in ("running", "canceled", "failed")],
        f"start_time_before={middle}": [ids[k] for k in ("child", "parent", "batch")],
    }
    # WatchRun of the first finished run listed: one message, then the end.
    assert summary["watched"] == ["CANCELED"]
    assert errors["watch_missing"]["code"] == "NOT_FOUND"


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _lines(stream: IO[str]) -> Iterator[dict[str, Any]]:
    for line in stream:
        yield json.loads(line)


@pytest.mark.slow
def test_ts_client_watches_a_run_finish(seeded: tuple[RunsServer, str, dict[str, Any]]) -> None:
    server, url, ids = seeded
    running = ids["running"]
    watcher = subprocess.Popen(
        [node(), str(BUILT), f"127.0.0.1:{server.port}", "--token", TOKEN, "--watch", running],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert watcher.stdout is not None
        messages = _lines(watcher.stdout)
        first = next(messages)
        assert first["status"] == "RUNNING"
        assert first["task_statuses"] == ["COMPLETED", "RUNNING"]
        # PySpur's engine finishes the run: the stream shows it, then ends.
        db = Database.from_url(url, pool_size=1)
        with db.write() as conn:
            conn.execute(
                update(Task).where(Task.run_id == running).values(status=TaskStatus.COMPLETED)
            )
            conn.execute(
                update(Run).where(Run.id == running)
                .values(status=RunStatus.COMPLETED, end_time=datetime(2026, 11, 5, 7, 3, 0))
            )  # fmt: skip
        db.dispose()
        rest = list(messages)
        assert watcher.wait(timeout=30) == 0, watcher.stderr.read() if watcher.stderr else ""
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert rest[-1] == {"end": True, "messages": len(rest)}
    last = rest[-2]
    assert last["status"] == "COMPLETED"
    assert last["task_statuses"] == ["COMPLETED", "COMPLETED"]
    assert _instant(last["end_time"]) == datetime(2026, 11, 5, 7, 3, 0, tzinfo=UTC)
