"""A newcomer's grpcurl session, with the real grpcurl binary and no proto
files: everything it knows comes from server reflection."""

from __future__ import annotations

import json
import re
import subprocess

from factories import add_run, add_workflow, all_done
from servers import start_server
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database
from tools import ROOT, tool


def run_grpcurl(
    server: RunsServer, *args: str, data: str | None = None
) -> subprocess.CompletedProcess[str]:
    command = [tool("grpcurl"), "-plaintext"]
    if data is not None:
        command += ["-d", data]
    command += [f"127.0.0.1:{server.port}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_list_and_describe_through_reflection(server: RunsServer) -> None:
    listed = run_grpcurl(server, "list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert "spur.runs.v1.RunService" in services and "grpc.health.v1.Health" in services
    methods = run_grpcurl(server, "list", "spur.runs.v1.RunService").stdout.split()
    assert sorted(methods) == sorted(
        f"spur.runs.v1.RunService.{m}"
        for m in (
            "GetRun",
            "GetRunStatus",
            "ListRuns",
            "GetRunTasks",
            "DeleteRun",
            "GetChildRuns",
            "WatchRun",
        )
    )
    described = run_grpcurl(server, "describe", "spur.runs.v1.Run")
    assert described.returncode == 0, described.stderr
    assert (
        "percentage_complete" in described.stdout
        and "google.protobuf.Timestamp start_time" in described.stdout
    )


def test_reflection_and_health_under_the_smallest_response_bound(
    db: Database, migrated_url: str
) -> None:
    """--max-response-bytes bounds RunService's answers, not reflection's or
    health's (fixed by the protos): with it below ~36 KB, `describe` failed
    with "ResourceExhausted: the response is larger than 32768 bytes"."""
    with db.write() as s:
        run_id = add_run(s, add_workflow(s), tasks=all_done())
    server = start_server(migrated_url, max_response_bytes=1024)
    try:
        described = run_grpcurl(server, "describe", "spur.runs.v1.RunService")
        assert described.returncode == 0, described.stderr
        assert "rpc ListRuns ( .spur.runs.v1.ListRunsRequest )" in described.stdout
        listed = run_grpcurl(server, "list")
        assert "grpc.health.v1.Health" in listed.stdout.split(), listed.stderr
        health = run_grpcurl(server, "grpc.health.v1.Health/Check", data="{}")
        assert json.loads(health.stdout) == {"status": "SERVING"}, health.stderr
        # RunService's answers are still held to it: a run with six tasks is
        # over 1 KiB, its BASIC view is not.
        got = run_grpcurl(
            server, "spur.runs.v1.RunService/GetRun", data=json.dumps({"run_id": run_id})
        )
        assert got.returncode != 0 and "ResourceExhausted" in got.stderr, got.stderr
        assert "larger than 1024 bytes" in got.stderr, got.stderr
        basic = {"run_id": run_id, "view": "RUN_VIEW_BASIC"}
        got = run_grpcurl(server, "spur.runs.v1.RunService/GetRun", data=json.dumps(basic))
        assert got.returncode == 0, got.stderr
    finally:
        server.stop(grace=1)


def test_get_and_list_runs_as_json(db: Database, server: RunsServer) -> None:
    with db.write() as s:
        run_id = add_run(
            s, add_workflow(s), tasks=all_done(), initial_inputs={"input_node": {"q": "hi"}}
        )
    got = run_grpcurl(server, "spur.runs.v1.RunService/GetRun", data=json.dumps({"run_id": run_id}))
    assert got.returncode == 0, got.stderr
    run = json.loads(got.stdout)["run"]
    assert run["id"] == run_id and run["status"] == "COMPLETED"
    assert run["initial_inputs"] == {"input_node": {"q": "hi"}}
    assert len(run["tasks"]) == 6 and run["tasks"][0]["node_type"] == "InputNode"
    listed = run_grpcurl(server, "spur.runs.v1.RunService/ListRuns", data='{"page_size": 5}')
    assert [r["id"] for r in json.loads(listed.stdout)["runs"]] == [run_id]


def test_errors_show_their_code(server: RunsServer) -> None:
    missing = run_grpcurl(server, "spur.runs.v1.RunService/GetRun", data='{"run_id": "R777"}')
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr and "R777" in missing.stderr
    bad = run_grpcurl(server, "spur.runs.v1.RunService/GetRun", data='{"run_id": "x"}')
    assert "InvalidArgument" in bad.stderr
    # Its BadRequest detail, decoded from what reflection serves (it was
    # "google.rpc.BadRequest is not recognized").
    assert '"@type":"type.googleapis.com/google.rpc.BadRequest"' in bad.stderr, bad.stderr
    assert '"field_violations":[{"field":"run_id"' in bad.stderr, bad.stderr
    assert "not recognized" not in bad.stderr


def test_health_check(server: RunsServer) -> None:
    health = run_grpcurl(
        server, "grpc.health.v1.Health/Check", data='{"service": "spur.runs.v1.RunService"}'
    )
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}


def test_watch_a_finished_run(db: Database, server: RunsServer) -> None:
    with db.write() as s:
        run_id = add_run(s, add_workflow(s), tasks=all_done())
    watched = run_grpcurl(
        server, "spur.runs.v1.RunService/WatchRun", data=json.dumps({"run_id": run_id})
    )
    assert watched.returncode == 0, watched.stderr
    # One message (the run has ended), then the stream ends with OK.
    (message,) = [json.loads(m) for m in watched.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert message["run"]["id"] == run_id and message["run"]["status"] == "COMPLETED"
    missing = run_grpcurl(server, "spur.runs.v1.RunService/WatchRun", data='{"run_id": "R777"}')
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_without_reflection_as_clients_md_says(db: Database, migrated_url: str) -> None:
    """docs/clients.md's flags for a server with --no-reflection give
    grpcurl what it needs to decode errors too: with the service's protos
    alone, an INVALID_ARGUMENT's detail printed as "google.rpc.BadRequest
    is not recognized" and its raw bytes."""
    text = (ROOT / "docs" / "clients.md").read_text()
    flags = re.search(r"with `--no-reflection`, add\s+`([^`]+)`", text)
    assert flags, "docs/clients.md no longer says what to add without reflection"
    server = start_server(migrated_url, reflection=False)
    try:
        command = [tool("grpcurl"), "-plaintext", *flags.group(1).split()]
        bad = subprocess.run(
            [*command, "-d", '{"run_id": "x"}', f"127.0.0.1:{server.port}",
             "spur.runs.v1.RunService/GetRun"],
            capture_output=True, text=True, timeout=30, cwd=ROOT,
        )  # fmt: skip
        assert "InvalidArgument" in bad.stderr, bad.stderr
        assert "not recognized" not in bad.stderr, bad.stderr
        assert '"fieldViolations":[{"field":"run_id"' in bad.stderr, bad.stderr
    finally:
        server.stop(grace=1)


def test_describe_delete_run_names_every_code_it_answers(server: RunsServer) -> None:
    """What a caller must handle, in the comment grpcurl shows: it named
    NOT_FOUND and one FAILED_PRECONDITION, not the cycle, the read-only
    database, or ABORTED (PySpur writing meanwhile), the one worth a retry."""
    described = run_grpcurl(server, "describe", "spur.runs.v1.RunService.DeleteRun")
    assert described.returncode == 0, described.stderr
    text = " ".join(line.strip("/ ") for line in described.stdout.splitlines())
    for said in ("NOT_FOUND", "FAILED_PRECONDITION", "own ancestor", "takes no writes", "ABORTED"):
        assert said in text, said
