"""The contract works for a client that is not Python: clients/node's script
(@grpc/grpc-js, @grpc/proto-loader reading protos/ at run time) calls every
RPC against a real server, over mutual TLS with a bearer token.

CI installs the Node packages (`npm ci` in clients/node, README's test
command); the test fails, not skips, without them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from certs import make_tls_files
from factories import add_run, add_workflow, all_done
from servers import start_server
from spur.runs.v1 import run_service_pb2
from spur_runs.store.db import Database
from spur_runs.store.models import RunStatus
from tools import ROOT

CLIENT = ROOT / "clients" / "node"


def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not installed")
    if not (CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("the Node client's packages are missing: (cd clients/node && npm ci)")
    return found


@pytest.mark.slow
def test_node_client_calls_every_rpc(tmp_path: Path) -> None:
    from spur_runs.store.migrate import migrate

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    migrate(url)
    db = Database.from_url(url, pool_size=1)
    with db.write() as s:
        workflow = add_workflow(s)
        parent = add_run(s, workflow, tasks=all_done())
        child = add_run(s, workflow, tasks=all_done(), parent_run_id=parent)
        failed = add_run(s, workflow, tasks=all_done(), status=RunStatus.FAILED)
    db.dispose()
    files = make_tls_files(tmp_path)
    admin = tmp_path / "admins"
    admin.write_text("node-admin-token\n")
    client_cert, client_key = files.client.write(tmp_path, "client")
    server = start_server(
        url,
        tls_cert=files.cert,
        tls_key=files.key,
        tls_client_ca=files.ca,
        admin_tokens_file=str(admin),
    )
    try:
        result = subprocess.run(
            [node(), str(CLIENT / "runs_client.js"), f"localhost:{server.port}",
             "--ca", files.ca, "--cert", client_cert, "--key", client_key,
             "--token", "node-admin-token", "--delete", failed],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "all checks passed" in result.stderr
        summary = json.loads(result.stdout)
        service = run_service_pb2.DESCRIPTOR.services_by_name["RunService"]
        assert summary["methods"] == sorted(m.name for m in service.methods)
        runs = summary["runs"]
        assert set(runs) == {parent, child, failed}
        assert runs[parent]["children"] == [child] and runs[child]["parent"] == parent
        assert runs[failed]["status"] == "FAILED"
        assert runs[parent]["status"] == "COMPLETED"
        assert runs[parent]["tasks"] == 6 and set(runs[parent]["task_statuses"]) == {"COMPLETED"}
        assert summary["deleted"] == failed
        assert summary["errors"] == {"missing": "NOT_FOUND", "malformed": "INVALID_ARGUMENT"}

        # The server saw each RunService method from Node.
        for method in service.methods:
            seen = server.metrics.registry.get_sample_value(
                "grpc_server_started_total",
                {
                    "grpc_type": "server_stream" if method.server_streaming else "unary",
                    "grpc_service": service.full_name,
                    "grpc_method": method.name,
                },
            )
            assert seen and seen >= 1, method.name

        # Without the token the same client is turned away, by code.
        refused = subprocess.run(
            [node(), str(CLIENT / "runs_client.js"), f"localhost:{server.port}",
             "--ca", files.ca, "--cert", client_cert, "--key", client_key],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 1 and "gRPC code 16" in refused.stderr  # UNAUTHENTICATED
    finally:
        server.stop(grace=1)


@pytest.mark.slow
def test_node_client_reads_a_run_over_grpcs_default_receive_limit(tmp_path: Path) -> None:
    """The server sends answers up to --max-response-bytes (16 MiB); grpc-js,
    as every gRPC library, refuses what is over 4 MiB unless told otherwise:
    a run with 5 MiB of outputs failed with RESOURCE_EXHAUSTED ("Received
    message larger than max") in the client, never leaving the server."""
    from spur_runs.store.migrate import migrate

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    migrate(url)
    db = Database.from_url(url, pool_size=1)
    with db.write() as s:
        add_run(s, add_workflow(s), tasks=all_done(), outputs={"text": "x" * (5 << 20)})
    db.dispose()
    server = start_server(url)
    try:
        result = subprocess.run(
            [node(), str(CLIENT / "runs_client.js"), f"localhost:{server.port}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        assert "all checks passed" in result.stderr
    finally:
        server.stop(grace=1)
