"""The protos lint and format cleanly with buf (offline), follow the
contract the issue fixes, and generated/ is what they generate today."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest
from google.api import annotations_pb2

from spur.runs.v1 import run_pb2, run_service_pb2
from tools import ROOT, tool

SERVICE = run_service_pb2.DESCRIPTOR.services_by_name["RunService"]


@pytest.mark.slow
def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(ROOT / "generated")
        for p in (ROOT / "generated").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert fresh == committed, "generated/ has missing or extra files: python protos/generate.py"
    stale = [
        str(p)
        for p in fresh
        if not filecmp.cmp(tmp_path / p, ROOT / "generated" / p, shallow=False)
    ]
    assert not stale, f"generated/ is stale, run python protos/generate.py: {stale}"


def test_buf_lint_and_format_pass_offline() -> None:
    for args in (["lint"], ["format", "-d", "--exit-code"]):
        result = subprocess.run(
            [tool("buf"), *args], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"buf {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_python_code_passes_ruff() -> None:
    """The style the code was written in (pyproject.toml's [tool.ruff]):
    lint rules and formatting, over the server, the tests and the benchmarks."""
    for args in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [tool("ruff"), *args, "server", "tests", "bench"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"ruff {' '.join(args)}:\n{result.stdout}{result.stderr}"


@pytest.mark.slow
def test_server_passes_mypy_strict(tmp_path: Path) -> None:
    """server/ is typed (pyproject.toml's [tool.mypy]: strict, with the
    generated stubs' .pyi on the path)."""
    result = subprocess.run(
        [tool("mypy"), "--cache-dir", str(tmp_path / "mypy-cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mypy:\n{result.stdout}{result.stderr}"


def _bindings(method: object) -> list[tuple[str, str, str]]:
    rule = method.GetOptions().Extensions[annotations_pb2.http]  # type: ignore[attr-defined]
    found = []
    for one in (rule, *rule.additional_bindings):
        verb = one.WhichOneof("pattern")
        found.append((verb, getattr(one, verb), one.response_body))
    return found


def test_service_has_exactly_its_rpcs_with_their_http_rules() -> None:
    """Each RPC at its resource path (the whole response message) and at
    the seed's path, where `response_body` answers exactly the seed's shape."""
    rules = {}
    for method in SERVICE.methods:
        rules[method.name] = _bindings(method)
        assert method.input_type.name == f"{method.name}Request"
        assert method.output_type.name == f"{method.name}Response"
    assert rules == {
        "GetRun": [
            ("get", "/v1/runs/{run_id}", ""),
            ("get", "/run/{run_id}", "run"),
        ],
        "GetRunStatus": [
            ("get", "/v1/runs/{run_id}:status", ""),
            ("get", "/run/{run_id}/status", "run"),
        ],
        "ListRuns": [("get", "/v1/runs", ""), ("get", "/run", "runs")],
        "GetRunTasks": [
            ("get", "/v1/runs/{run_id}/tasks", ""),
            ("get", "/run/{run_id}/tasks", "tasks"),
        ],
        "DeleteRun": [("delete", "/v1/runs/{run_id}", ""), ("delete", "/run/{run_id}", "")],
        "GetChildRuns": [
            ("get", "/v1/runs/{run_id}/children", ""),
            ("get", "/run/{run_id}/children", "runs"),
        ],
        "WatchRun": [("get", "/v1/runs/{run_id}:watch", ""), ("get", "/run/{run_id}/watch", "")],
    }
    streaming = {m.name for m in SERVICE.methods if m.server_streaming or m.client_streaming}
    assert streaming == {"WatchRun"}


def test_page_fields_tell_unset_from_zero() -> None:
    """proto3 `optional`: a gRPC caller may leave page and page_size unset
    (the default), and an explicit 0 is rejected as the seed's `min: 1` says."""
    messages = run_service_pb2.DESCRIPTOR.message_types_by_name
    for message, field in (
        ("ListRunsRequest", "page"),
        ("ListRunsRequest", "page_size"),
        ("ListRunsRequest", "parent_only"),
        ("GetRunTasksRequest", "page_size"),
        ("GetChildRunsRequest", "page_size"),
    ):
        assert messages[message].fields_by_name[field].has_presence, (message, field)


def test_contract_keeps_the_breaking_baseline() -> None:
    """buf breaking against the committed baseline (the contract as of its
    last deliberate change; see docs): a wire- or JSON-breaking edit fails."""
    result = subprocess.run(
        [tool("buf"), "breaking", "--against", "protos/breaking-baseline.binpb"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"buf breaking:\n{result.stdout}{result.stderr}"


def test_run_id_is_field_one_and_optional_scalars_have_presence() -> None:
    for name in (
        "GetRunRequest",
        "GetRunStatusRequest",
        "GetRunTasksRequest",
        "DeleteRunRequest",
        "GetChildRunsRequest",
    ):
        field = run_service_pb2.DESCRIPTOR.message_types_by_name[name].fields_by_name["run_id"]
        assert field.number == 1
    run = run_pb2.Run.DESCRIPTOR.fields_by_name
    for name in (
        "workflow_version_id",
        "parent_run_id",
        "output_file_id",
        "input_dataset_id",
        "message",
        "duration",
    ):
        assert run[name].has_presence, name
    assert run["duration"].type == run["duration"].TYPE_DOUBLE
    assert run["start_time"].message_type.full_name == "google.protobuf.Timestamp"
    seed_run_fields = {
        "id",
        "workflow_id",
        "workflow_version_id",
        "workflow_version",
        "status",
        "start_time",
        "end_time",
        "initial_inputs",
        "outputs",
        "tasks",
        "parent_run_id",
        "run_type",
        "output_file_id",
        "input_dataset_id",
        "message",
        "duration",
        "percentage_complete",
    }
    assert seed_run_fields <= set(run)
    seed_task_fields = {
        "id",
        "run_id",
        "node_id",
        "node_type",
        "status",
        "start_time",
        "end_time",
        "inputs",
        "outputs",
        "error",
        "is_downstream_of_pause",
    }
    assert seed_task_fields <= set(run_pb2.Task.DESCRIPTOR.fields_by_name)
    # Spelled as PySpur spells RunStatus and TaskStatus, numbers unchanged.
    pyspur = ["PENDING", "RUNNING", "COMPLETED", "FAILED", "PAUSED", "CANCELED"]
    for enum in (run_pb2.Run.Status, run_pb2.Task.Status):
        assert [(v.name, v.number) for v in enum.DESCRIPTOR.values] == [
            ("STATUS_UNSPECIFIED", 0),
            *((name, n) for n, name in enumerate(pyspur, 1)),
        ]
