"""The per-method series: plain numbers in one process (LeanMethodMetrics)
and prometheus_client's Counter and Histogram for --workers
(ClientMethodMetrics) must read the same to a scraper."""

from __future__ import annotations

import grpc
import prometheus_client

from spur_runs.telemetry.metrics import Metrics

RUNS = "/spur.runs.v1.RunService/"


def _drive(metrics: Metrics) -> None:
    """The same calls, as rpc/observe.py reports them."""
    get = metrics.method(RUNS + "GetRun", False, False)
    for seconds in (0.003, 0.005, 0.0051):  # 0.005 is a bound: `le` includes it
        get.start(received=True)
        get.handled(grpc.StatusCode.OK, seconds, sent=1)
    get.start(received=True)
    get.handled(grpc.StatusCode.NOT_FOUND, 0.2)
    watch = metrics.method(RUNS + "WatchRun", False, True)
    watch.start(received=True)
    for _ in range(4):
        watch.send()
    watch.handled(grpc.StatusCode.OK, 12.5)  # beyond the last bound: +Inf only
    upload = metrics.method("/other.v1.Service/Upload", True, False)
    upload.start(received=False)
    upload.receive()
    upload.receive()
    upload.handled(grpc.StatusCode.CANCELLED, 0.0001)
    watch.start(received=True)  # still open


def test_lean_and_client_series_give_the_same_exposition() -> None:
    lean = Metrics()
    # multiprocess_dir picks prometheus_client's metrics; this process has
    # no PROMETHEUS_MULTIPROC_DIR, so they count in memory, readable here.
    client = Metrics(multiprocess_dir="/nonexistent")
    assert lean.client is None and client.client is not None
    for metrics in (lean, client):
        _drive(metrics)
    text = prometheus_client.generate_latest(lean.registry).decode()
    assert text == prometheus_client.generate_latest(client.registry).decode()
    assert (
        'grpc_server_handled_total{grpc_code="NotFound",grpc_method="GetRun",'
        'grpc_service="spur.runs.v1.RunService",grpc_type="unary"} 1.0'
    ) in text
    assert (
        'grpc_server_handling_seconds_bucket{grpc_method="GetRun",'
        'grpc_service="spur.runs.v1.RunService",grpc_type="unary",le="0.005"} 2.0'
    ) in text
    assert (
        'grpc_server_msg_sent_total{grpc_method="WatchRun",'
        'grpc_service="spur.runs.v1.RunService",grpc_type="server_stream"} 4.0'
    ) in text
    assert (
        'grpc_server_started_total{grpc_method="WatchRun",'
        'grpc_service="spur.runs.v1.RunService",grpc_type="server_stream"} 2.0'
    ) in text
