"""The --health-address listener (runtime/probe.py): the kubelet's Check is
answered whoever else reaches the port, and nothing but Check is served."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from half_open import HalfOpenCalls
from servers import start_server
from spur_runs.rpc.arrival import STALL_SECONDS
from spur_runs.runtime.probe import CONCURRENT_CALLS
from spur_runs.runtime.server import RunsServer

CHECK = "/grpc.health.v1.Health/Check"
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def server(migrated_url: str) -> Iterator[RunsServer]:
    server = start_server(migrated_url, health_address="127.0.0.1:0")
    yield server
    server.stop(grace=1)


def kubelet_check(port: int) -> int:
    """One probe as the kubelet makes it: a new connection, a 1 s timeout."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status  # type: ignore[no-any-return]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_headers_only_checks_do_not_fail_the_kubelets_probes(server: RunsServer) -> None:
    assert server.probe_port
    # Three connections of four headers-only calls: more than the probe's
    # threads and call slots.
    attackers = [HalfOpenCalls(server.probe_port, CHECK, count=4) for _ in range(3)]
    assert 3 * 4 > CONCURRENT_CALLS
    try:
        time.sleep(STALL_SECONDS + 0.5)
        # Every later probe is answered, within the kubelet's timeout.
        for _ in range(5):
            assert kubelet_check(server.probe_port) == SERVING
            time.sleep(0.2)
        for attacker in attackers:  # each stalled call was cancelled
            assert attacker.reset_streams(5) == set(attacker.streams)
    finally:
        for attacker in attackers:
            attacker.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_probe_serves_check_alone(server: RunsServer) -> None:
    """Watch streams would hold the probe's few call slots: not served."""
    assert server.probe_port
    # CONCURRENT_CALLS watches at once, two per connection: within the
    # connection's 4 streams even while a finished stream is still counted
    # by the server. (Eight on one connection were sometimes refused with
    # RST_STREAM REFUSED_STREAM, an UNAVAILABLE, before reaching the server.)
    per_connection = 2
    channels = [
        grpc.insecure_channel(
            f"127.0.0.1:{server.probe_port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(CONCURRENT_CALLS // per_connection)
    ]
    try:
        stubs = [health_pb2_grpc.HealthStub(channel) for channel in channels]
        watches = [
            stub.Watch(health_pb2.HealthCheckRequest(), timeout=5)
            for stub in stubs
            for _ in range(per_connection)
        ]
        assert len(watches) == CONCURRENT_CALLS
        for watch in watches:
            with pytest.raises(grpc.RpcError) as raised:
                next(watch)
            assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as raised:
            stubs[0].List(health_pb2.HealthListRequest(), timeout=5)
        assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        for channel in channels:
            channel.close()
    assert kubelet_check(server.probe_port) == SERVING
