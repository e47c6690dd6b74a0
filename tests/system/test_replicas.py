"""Two `spur-runs serve` replicas on one PostgreSQL behind a client that
balances with gRPC's round_robin policy and retries UNAVAILABLE (the service
config README's "Scaling" shows): SIGKILL one replica in the middle of the
load and no idempotent read call fails (issue 6, "Several replicas").
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine

from fault_load import SERVING, Load, health_status, seed_runs
from servers import free_port
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub

SERVICE = "spur.runs.v1.RunService"
# What README's "Scaling" shows. DeleteRun is not retried: an attempt whose
# answer was lost may have deleted the run, and its retry would then say
# NOT_FOUND; the caller decides (see README).
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": SERVICE}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        },
        {"name": [{"service": SERVICE, "method": "DeleteRun"}]},
    ],
}


def _serve(url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "spur_runs", "serve", "--database-url", url,
         "--grpc-address", f"127.0.0.1:{port}", "--log-format", "json", "--pool-size", "4"],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip


def _wait_serving(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        while time.monotonic() < end:
            assert process.poll() is None, "a replica exited at start-up"
            try:
                if health_status(channel) == SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"replica on {port} not SERVING within {timeout} s")


def _served(log: Path) -> int:
    """RunService calls a replica's access log records."""
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "spur_runs.access" and SERVICE in entry.get("method", ""):
                count += 1
    return count


@pytest.mark.slow
def test_killing_replicas_loses_no_read(postgres_url: str, tmp_path: Path) -> None:
    run_ids = seed_runs(postgres_url, count=20)
    ports = [free_port() for _ in range(3)]
    logs = [tmp_path / f"replica{i}.log" for i in range(3)]
    replicas = [_serve(postgres_url, port, log) for port, log in zip(ports, logs, strict=True)]
    engine = create_engine(postgres_url)
    try:
        for port, process in zip(ports, replicas, strict=True):
            _wait_serving(port, process)
        target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
        options = [
            ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
            ("grpc.enable_retries", 1),
        ]
        with grpc.insecure_channel(target, options=options) as channel, engine.connect() as lock:
            stub = RunServiceStub(channel)
            for run_id in run_ids[:6]:  # connect to all three
                stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10)

            # 1. Calls held in flight on every replica (a table lock the test
            # holds), then one replica killed: its calls, not yet answered,
            # are retried on the others and succeed once the lock goes.
            lock.exec_driver_sql("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
            held = [
                stub.GetRun.future(pb.GetRunRequest(run_id=run_id), timeout=20)
                for run_id in run_ids[:9]
            ]
            time.sleep(0.5)
            replicas[0].send_signal(signal.SIGKILL)
            replicas[0].wait(timeout=10)
            time.sleep(0.3)
            lock.rollback()
            answered = [call.result().run.id for call in held]
            assert answered == run_ids[:9]
            held_on = [_served(log) for log in logs[1:]]

            # 2. The same under a closed-loop load, the kill at a random moment.
            with Load(stub, run_ids, threads=6, deadline=10) as load:
                load.wait_for(lambda o: o.code == grpc.StatusCode.OK, timeout=10)
                time.sleep(1.0)
                before_kill = [_served(log) for log in logs[1:]]
                replicas[1].send_signal(signal.SIGKILL)
                killed = time.monotonic()
                replicas[1].wait(timeout=10)
                load.wait_for(lambda o: o.started > killed + 1.0, timeout=10)
        after = [o for o in load.outcomes if o.started > killed]
        # A call whose response headers had left the replica when it died is
        # committed and not retried (gRPC's rule); a unary call's headers go
        # out in one batch with its answer and status (the request id rides in
        # the trailers), so no call can be caught between the two.
        committed = [o for o in load.outcomes if "Stream removed" in o.details]
        print(
            f"\nheld calls: 9 of 9 answered after their replica was killed; "
            f"{load.report('replica killed under load')}; calls served before the kill "
            f"{[b - h for b, h in zip(before_kill, held_on, strict=True)]}; "
            f"{len(after)} calls after it; caught between headers and answer: {len(committed)}"
        )
        assert set(load.codes()) <= {"OK", "UNAVAILABLE"}, load.failures()
        # (1 to 3 per kill, in every run, when the headers went out first.)
        assert not committed and "UNAVAILABLE" not in load.codes(), load.failures()
        # round_robin spread the calls over both remaining replicas.
        spread = [b - h for b, h in zip(before_kill, held_on, strict=True)]
        assert min(spread) > 0.25 * sum(spread), spread
        assert len(after) > 20
    finally:
        engine.dispose()
        for process in replicas:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
