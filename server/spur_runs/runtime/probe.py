"""--health-address: a plaintext gRPC listener for Kubernetes' gRPC probes,
which speak plaintext only (no TLS, no client certificate) and so cannot
reach a TLS port. It shares the main server's health statuses.

It serves grpc.health.v1.Health/Check and nothing else: the kubelet calls
Check, and a Watch or List here would only be one more way to hold its few
call slots (8 Watch streams from anyone who reaches the port made every
probe fail, a review, 2026-12-04). Clients that watch use the main port.

No token guards it, so its two threads are guarded as the main server's
are (rpc/arrival.py): a call that sent its headers and no message is
cancelled within --grpc-request-timeout-seconds, and all but one such call
as soon as it counts as stalled. Twelve headers-only Checks on three
connections otherwise held both threads and every slot for as long as the
connections stayed open, and the kubelet's probes failed: readiness at
once, liveness after five minutes. Only the node should reach this port:
deploy/kubernetes/networkpolicy.yaml.
"""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2

from ..config import Config
from ..rpc.arrival import ArrivalInterceptor, RequestWaits
from .health_service import HealthServicer

SERVICE = "grpc.health.v1.Health"
THREADS = 2
# A probe makes one Check at a time; a few streams per connection and calls
# in all bound what anyone else can hold.
STREAMS_PER_CONNECTION = 4
CONCURRENT_CALLS = 8
# How long stop() waits for the transport (the drain has been done by then).
STOP_SECONDS = 2.0


class ProbeListener:
    """The listener, its threads and its request-waits sweeper."""

    def __init__(self, config: Config, servicer: HealthServicer) -> None:
        self.waits = RequestWaits(config.grpc_request_timeout_seconds, stalled_max=1)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="probe"),
            # No call here is ever refused whatever its request: every one
            # waits (boundedly) for its message.
            interceptors=[ArrivalInterceptor(self.waits, refuses=lambda _handler: False)],
            options=[
                ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION),
                ("grpc.so_reuseport", 1 if config.workers > 1 else 0),
            ],
            maximum_concurrent_rpcs=CONCURRENT_CALLS,
        )
        check = grpc.unary_unary_rpc_method_handler(
            servicer.Check,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Check": check}),)
        )
        try:
            self.port = self.server.add_insecure_port(config.health_address or "")
        except RuntimeError:  # grpc's "Failed to bind"
            self.port = 0
        if self.port == 0:
            raise OSError(
                f"cannot listen on {config.health_address} (in use, or not an address here)"
            )

    def start(self) -> None:
        self.waits.start()
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait(STOP_SECONDS)
        self.waits.stop()
