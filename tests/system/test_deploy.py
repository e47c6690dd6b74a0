"""deploy/kubernetes (issue 16, section 5): what `kubectl kustomize` renders,
parsed and checked, and the Deployment's own environment starting a real
`spur-runs serve` that the probes' port and a client with the mounted
certificates and tokens reach.

kubectl: CI installs Debian's kubernetes-client when the machine has no
kubectl (.ci/run); outside CI the test is skipped without one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from certs import make_tls_files
from databases import IN_CI
from servers import start_server
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.cli import build_parser, load_config
from spur_runs.config import ENV
from spur_runs.runtime import probe as probe_port_module
from spur_runs.runtime import serve
from spur_runs.runtime import server as runs_server
from spur_runs.seed import seed
from spur_runs.store.migrate import migrate
from tools import ROOT

KUSTOMIZE_DIR = ROOT / "deploy" / "kubernetes"
SERVING = health_pb2.HealthCheckResponse.SERVING


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        if IN_CI:
            pytest.fail("kubectl not installed (.ci/run installs kubernetes-client)")
        pytest.skip("kubectl not installed (apt-get install kubernetes-client)")
    return found


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, Any]]:
    """The rendered objects, by kind (one of each)."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(KUSTOMIZE_DIR)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    objects = [o for o in yaml.safe_load_all(done.stdout) if o]
    by_kind = {o["kind"]: o for o in objects}
    assert len(by_kind) == len(objects), [o["kind"] for o in objects]
    assert set(by_kind) == {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"}
    return by_kind


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container(deployment)["env"]}


def plain_env(deployment: dict[str, Any]) -> dict[str, str]:
    return {n: str(e["value"]) for n, e in env_of(deployment).items() if "value" in e}


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def test_probes_are_grpc_native_on_the_health_port(rendered: dict[str, Any]) -> None:
    main = container(rendered["Deployment"])
    env = plain_env(rendered["Deployment"])
    probe_port = port_of(env["SPUR_RUNS_HEALTH_ADDRESS"])
    assert probe_port != port_of(env["SPUR_RUNS_GRPC_ADDRESS"])  # that one speaks TLS
    declared = {port["containerPort"] for port in main["ports"]}
    assert probe_port in declared
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(main[probe]) - {"periodSeconds", "timeoutSeconds", "failureThreshold"} == {
            "grpc"
        }, probe
        assert main[probe]["grpc"] == {"port": probe_port}, probe
    # Liveness does not restart every pod over a database outage (health
    # NOT_SERVING everywhere at once) sooner than 5 minutes.
    liveness = main["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 300


def test_only_the_node_reaches_the_probe_port(rendered: dict[str, Any]) -> None:
    """The NetworkPolicy admits the gRPC and HTTP ports and not the probe's
    (no token there; the kubelet, on the pod's node, is never blocked)."""
    deployment = rendered["Deployment"]
    by_name = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    policy = rendered["NetworkPolicy"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    admitted = {
        by_name.get(port["port"], port["port"])
        for rule in policy["ingress"]
        for port in rule["ports"]
    }
    env = plain_env(deployment)
    assert admitted == {
        port_of(env["SPUR_RUNS_GRPC_ADDRESS"]),
        port_of(env["SPUR_RUNS_HTTP_ADDRESS"]),
    }
    assert port_of(env["SPUR_RUNS_HEALTH_ADDRESS"]) not in admitted


def test_runs_as_non_root_with_nothing_to_spare(rendered: dict[str, Any]) -> None:
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    main = container(rendered["Deployment"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = main["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    for bound in ("requests", "limits"):
        assert set(main["resources"][bound]) == {"cpu", "memory"}, bound


def test_sigterm_grace_covers_the_drain(rendered: dict[str, Any]) -> None:
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    main = container(rendered["Deployment"])
    command = main["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    env = plain_env(rendered["Deployment"])
    grace = float(env["SPUR_RUNS_GRACE_SECONDS"])
    # A call waiting on a database that vanished ends at the dead-peer bound
    # (tests/system/test_partition.py), and the process exits only after it.
    drain = max(grace, float(env["SPUR_RUNS_DB_DEAD_PEER_SECONDS"]))
    # After the drain, stopping may take gRPC's transport, the stuck calls
    # and the probe port their bounds each.
    stopping = runs_server.STOP_SECONDS + serve.EXIT_SECONDS + probe_port_module.STOP_SECONDS
    # The kubelet's SIGKILL comes terminationGracePeriodSeconds after the
    # preStop hook starts: it must leave the drain its whole grace and the
    # stopping, with a margin of 2 s at least.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + stopping + 2


def test_a_headless_service_and_a_disruption_budget_select_the_pods(
    rendered: dict[str, Any],
) -> None:
    deployment = rendered["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = rendered["Service"]["spec"]
    assert service["clusterIP"] == "None"  # DNS answers each pod: round_robin in clients
    assert service["selector"].items() <= labels.items()
    grpc_port = port_of(plain_env(deployment)["SPUR_RUNS_GRPC_ADDRESS"])
    assert any(p["port"] == grpc_port and p["targetPort"] == "grpc" for p in service["ports"])
    budget = rendered["PodDisruptionBudget"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["maxUnavailable"] == 1 < deployment["spec"]["replicas"]


def test_tokens_and_tls_come_from_secrets(rendered: dict[str, Any]) -> None:
    deployment = rendered["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = plain_env(deployment)
    for variable, secret in (
        ("SPUR_RUNS_TLS_CERT", "spur-runs-tls"),
        ("SPUR_RUNS_TLS_KEY", "spur-runs-tls"),
        ("SPUR_RUNS_TLS_CLIENT_CA", "spur-runs-tls"),
        ("SPUR_RUNS_READER_TOKENS_FILE", "spur-runs-tokens"),
        ("SPUR_RUNS_ADMIN_TOKENS_FILE", "spur-runs-tokens"),
    ):
        folder = os.path.dirname(env[variable])
        mount = mounts[folder]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["secret"]["secretName"] == secret, variable
    database = env_of(deployment)["SPUR_RUNS_DATABASE_URL"]
    assert database["valueFrom"]["secretKeyRef"]["name"] == "spur-runs-database"


def test_every_variable_is_a_setting_with_a_valid_value(rendered: dict[str, Any]) -> None:
    env = env_of(rendered["Deployment"])
    assert set(env) <= set(ENV.values()), set(env) - set(ENV.values())
    values = plain_env(rendered["Deployment"])
    values["SPUR_RUNS_DATABASE_URL"] = "postgresql://spur_runs@db/pyspur"  # (a Secret's)
    config = load_config(build_parser().parse_args(["serve"]), values)
    assert config.tls_client_ca and config.reader_tokens_file and config.health_address


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_the_deployments_environment_serves(rendered: dict[str, Any], tmp_path: Path) -> None:
    """The rendered environment, with the Secrets' files made here (the
    mount paths moved under tmp_path) and the ports made free ones, starts
    `spur-runs serve`: the probes' port answers plaintext health, a client
    with a certificate and a token calls RunService over mutual TLS, and
    SIGTERM drains within the pod's termination grace."""
    deployment = rendered["Deployment"]
    environ = dict(os.environ)
    for name, value in plain_env(deployment).items():
        if value.startswith("/etc/spur-runs/"):
            value = str(tmp_path / value.removeprefix("/etc/spur-runs/"))
        elif re.fullmatch(r"0\.0\.0\.0:\d+", value):
            value = f"127.0.0.1:{_free_port()}"
        environ[name] = value
    (tmp_path / "tls").mkdir()
    (tmp_path / "tokens").mkdir()
    files = make_tls_files(tmp_path)
    for source, target in ((files.cert, "tls.crt"), (files.key, "tls.key"), (files.ca, "ca.crt")):
        shutil.copy(source, tmp_path / "tls" / target)
    (tmp_path / "tokens" / "readers").write_text("reader-token\n")
    (tmp_path / "tokens" / "admins").write_text("admin-token\n")
    database = f"sqlite:///{tmp_path / 'runs.db'}"
    migrate(database)
    seed(database, runs=2)
    environ["SPUR_RUNS_DATABASE_URL"] = database
    environ.pop("SPUR_RUNS_READ_DATABASE_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "spur_runs", "serve"],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("wb"),
    )
    try:
        with grpc.insecure_channel(environ["SPUR_RUNS_HEALTH_ADDRESS"]) as probe:  # the kubelet
            grpc.channel_ready_future(probe).result(timeout=30)
            check = health_pb2_grpc.HealthStub(probe).Check
            assert check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
        credentials = grpc.ssl_channel_credentials(
            files.ca_pem, files.client.key, files.client.cert
        )
        address = environ["SPUR_RUNS_GRPC_ADDRESS"].replace("127.0.0.1", "localhost")
        with grpc.secure_channel(address, credentials) as channel:
            listed = RunServiceStub(channel).ListRuns(
                pb.ListRunsRequest(), metadata=[("authorization", "Bearer reader-token")], timeout=5
            )
            assert listed.runs
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        drained = time.monotonic() - started
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    pre_stop = float(container(deployment)["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert drained < grace - pre_stop


def test_the_health_listener_serves_health_only_in_plaintext(
    sqlite_url: str, tmp_path: Path
) -> None:
    """--health-address next to a mutual-TLS port: the kubelet's plaintext
    Check is answered there, RunService is not served there at all."""
    migrate(sqlite_url)
    files = make_tls_files(tmp_path)
    server = start_server(
        sqlite_url,
        tls_cert=files.cert,
        tls_key=files.key,
        tls_client_ca=files.ca,
        health_address="127.0.0.1:0",
    )
    try:
        assert server.probe_port
        with grpc.insecure_channel(f"127.0.0.1:{server.probe_port}") as probe:
            check = health_pb2_grpc.HealthStub(probe).Check
            for service in ("", "spur.runs.v1.RunService"):
                request = health_pb2.HealthCheckRequest(service=service)
                assert check(request, timeout=5).status == SERVING
            with pytest.raises(grpc.RpcError) as raised:
                RunServiceStub(probe).GetRun(pb.GetRunRequest(run_id="R1"), timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        server.health.shutdown()  # what SIGTERM does first
        with grpc.insecure_channel(f"127.0.0.1:{server.probe_port}") as probe:
            check = health_pb2_grpc.HealthStub(probe).Check
            status = check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.stop(grace=1)
