"""Go stubs generated from protos/ work: clients/go/build.sh generates them with
Debian's protoc-gen-go and protoc-gen-go-grpc and builds clients/go/main.go
in GOPATH mode over Debian's grpc-go (/usr/share/gocode, no module
download); the program calls GetRun and ListRuns of a real server and the
error codes of the contract, and its protojson output is checked here, field
by field against what the Python stubs get for the same calls.

CI installs Go and those packages (.ci/run); there the test fails, not skips,
without them."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from google.protobuf import json_format

from databases import IN_CI
from factories import add_run, add_workflow, all_done
from parallel import locked
from servers import start_server
from spur.runs.v1 import run_service_pb2, run_service_pb2_grpc
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database
from spur_runs.store.models import RunStatus, TaskStatus
from tools import ROOT

CLIENT = ROOT / "clients" / "go"
APT = (
    "apt-get install -y --no-install-recommends golang-go protoc-gen-go protoc-gen-go-grpc "
    "golang-google-grpc-dev golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev"
)
GOCODE = Path("/usr/share/gocode/src")
NEEDED_SOURCES = [
    "google.golang.org/grpc",
    "google.golang.org/protobuf",
    "google.golang.org/genproto/googleapis/rpc/errdetails",
    "google.golang.org/genproto/googleapis/api/annotations",
    "github.com/golang/protobuf/ptypes",
]


def _missing_go() -> list[str]:
    tools = ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc")
    missing = [t for t in tools if not shutil.which(t)]
    return missing + [str(GOCODE / s) for s in NEEDED_SOURCES if not (GOCODE / s).is_dir()]


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clients/go built (once per worker; Go's build cache makes a rebuild ~1 s).
    build.sh writes clients/go/build/, shared by every worker (and every run):
    one build at a time, and each worker runs its own copy of the binary, not
    the one that another worker's build may be replacing."""
    missing = _missing_go()
    if missing:
        message = f"Go toolchain or Debian Go packages missing ({', '.join(missing)}): {APT}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    (CLIENT / "build").mkdir(exist_ok=True)
    copy = tmp_path_factory.mktemp("go") / "runs-client"
    with locked(CLIENT / "build" / ".lock"):
        built = subprocess.run(
            ["bash", str(CLIENT / "build.sh")], capture_output=True, text=True, timeout=600
        )
        assert built.returncode == 0, built.stderr
        shutil.copy2(CLIENT / "build" / "runs-client", copy)
    return copy


@pytest.mark.slow
def test_go_client_gets_and_lists_runs(
    go_client: Path,
    db: Database,
    server: RunsServer,
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    with db.write() as s:
        workflow = add_workflow(s)
        parent = add_run(
            s, workflow, tasks=all_done(),
            start_time=datetime(2026, 11, 2, 9, 0, 0), end_time=datetime(2026, 11, 2, 9, 5, 30),
            initial_inputs={"input_node": {"question": "why?"}}, outputs={"output": {"answer": 42}},
        )  # fmt: skip
        child = add_run(
            s, workflow, parent_run_id=parent, run_type="batch", status=RunStatus.FAILED,
            tasks=[("input_node", TaskStatus.COMPLETED), ("llm", TaskStatus.FAILED)],
            start_time=datetime(2026, 11, 2, 9, 1, 0), end_time=datetime(2026, 11, 2, 9, 2, 0),
        )  # fmt: skip
        paused = add_run(
            s, workflow, status=RunStatus.PAUSED, start_time=datetime(2026, 11, 3, 8, 0, 0),
            end_time=datetime(2026, 11, 3, 8, 0, 1),
            tasks=[("input_node", TaskStatus.COMPLETED), ("approval", TaskStatus.PAUSED)],
        )  # fmt: skip
        unstarted = add_run(s, workflow, status=RunStatus.PENDING, start_time=None)
        older = add_run(s, workflow, start_time=datetime(2026, 10, 30, 23, 59, 59, 250000),
                        end_time=datetime(2026, 10, 31, 0, 0, 0))  # fmt: skip
    every = [parent, child, paused, unstarted, older]

    result = subprocess.run(
        [str(go_client), "-addr", f"127.0.0.1:{server.port}", "-page-size", "2",
         *[arg for run_id in every for arg in ("-run", run_id)]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "all checks passed" in result.stderr
    out = json.loads(result.stdout)

    # GetRun: what Go decoded and re-encoded is what Python decodes.
    got = {answer["run"]["id"]: answer["run"] for answer in out["get_run"]}
    assert list(got) == every
    for run_id in every:
        python = stub.GetRun(run_service_pb2.GetRunRequest(run_id=run_id)).run
        assert got[run_id] == json_format.MessageToDict(python, preserving_proto_field_name=True)

    # ...and, by name, the fields a Go caller reads: enums, timestamps, Structs.
    run = got[parent]
    assert run["status"] == "COMPLETED" and run["run_type"] == "interactive"
    assert run["start_time"] == "2026-11-02T09:00:00Z" and run["end_time"] == "2026-11-02T09:05:30Z"
    assert run["duration"] == 330 and run["percentage_complete"] == 100 and run["task_count"] == 6
    assert run["initial_inputs"] == {"input_node": {"question": "why?"}}
    assert run["outputs"] == {"output": {"answer": 42}}
    assert run["workflow_id"] == workflow[0] and run["workflow_version_id"] == workflow[1]
    assert run["workflow_version"]["id"] == workflow[1]
    assert run["workflow_version"]["created_at"] == "2026-11-01T12:00:00Z"
    assert [t["node_id"] for t in run["tasks"]] == [n for n, _ in all_done()]
    assert {t["status"] for t in run["tasks"]} == {"COMPLETED"}
    assert run["tasks"][1]["start_time"] == "2026-11-02T09:00:01Z"
    assert run["tasks"][1]["node_type"] == "SingleLLMCallNode"
    assert "parent_run_id" not in run
    assert got[child]["parent_run_id"] == parent and got[child]["status"] == "FAILED"
    assert [t["status"] for t in got[child]["tasks"]] == [
        "COMPLETED",
        "FAILED",
    ]
    assert got[child]["tasks"][1]["error"] == "boom"
    assert got[paused]["status"] == "PAUSED"
    assert got[unstarted]["status"] == "PENDING" and "start_time" not in got[unstarted]
    assert got[older]["start_time"] == "2026-10-30T23:59:59.250Z"

    # ListRuns, every page by token: newest start_time first, unstarted last.
    listed = out["list_runs"]
    assert [r["id"] for r in listed["runs"]] == [paused, child, parent, older, unstarted]
    assert listed["pages"] == 3
    assert {r["id"]: r["status"] for r in listed["runs"]} == {i: got[i]["status"] for i in every}

    # The contract's error codes, as grpc-go's status package reads them.
    assert out["not_found"]["code"] == "NotFound" and "not found" in out["not_found"]["message"]
    assert out["invalid_id"]["code"] == "InvalidArgument"
    assert out["invalid_id"]["fields"] == ["run_id"]  # google.rpc.BadRequest, via genproto


def test_go_client_fails_on_a_wrong_answer(go_client: Path, server: RunsServer) -> None:
    """The program's own checks bite: a run id that exists is not NOT_FOUND."""
    result = subprocess.run(
        [str(go_client), "-addr", f"127.0.0.1:{server.port}", "-run", "R404"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "GetRun R404" in result.stderr and "NotFound" in result.stderr
    assert result.stdout == ""


def test_go_client_sends_a_bearer_token(go_client: Path, sqlite_url: str, tmp_path: Path) -> None:
    from spur_runs.store.migrate import migrate

    migrate(sqlite_url)
    readers = tmp_path / "readers"
    readers.write_text("go-reader-token\n")
    server = start_server(sqlite_url, reader_tokens_file=str(readers))
    try:
        command = [str(go_client), "-addr", f"127.0.0.1:{server.port}"]
        allowed = subprocess.run(
            [*command, "-token", "go-reader-token"], capture_output=True, text=True, timeout=60
        )
        assert allowed.returncode == 0, allowed.stderr
        assert json.loads(allowed.stdout)["list_runs"] == {"runs": [], "pages": 1}
        refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "code = Unauthenticated" in refused.stderr
    finally:
        server.stop(grace=1)


@pytest.mark.slow
def test_go_client_reads_a_run_over_grpcs_default_receive_limit(
    go_client: Path, db: Database, server: RunsServer
) -> None:
    """The server sends answers up to --max-response-bytes (16 MiB); grpc-go
    refuses what is over 4 MiB unless told otherwise: a run with 5 MiB of
    outputs failed in the client ("received message larger than max")."""
    with db.write() as s:
        run_id = add_run(s, add_workflow(s), tasks=all_done(), outputs={"text": "x" * (5 << 20)})
    result = subprocess.run(
        [str(go_client), "-addr", f"127.0.0.1:{server.port}", "-run", run_id],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "all checks passed" in result.stderr
