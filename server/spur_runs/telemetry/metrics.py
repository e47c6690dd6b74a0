"""Prometheus metrics, named and labelled as go-grpc-prometheus names them so
that existing gRPC dashboards and alerts work unchanged:

    grpc_server_started_total{grpc_type,grpc_service,grpc_method}
    grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}
    grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}  (histogram)
    grpc_server_msg_received_total / grpc_server_msg_sent_total

grpc_code is Go's spelling of the code ("NotFound", "Canceled"), as there.
Plus the database pool: spur_runs_db_pool_{size,checked_out,checked_in,overflow}
{database="primary"|"replica"}.

Each server has its own registry (tests run several servers in a process).
With --workers, every process writes to files under a directory the parent
made (prometheus-client's multiprocess mode); a scrape, answered by any one
worker, adds up all of them.

Calls refused by --max-concurrent-rpcs never reach Python code (grpc answers
RESOURCE_EXHAUSTED itself), so they are not counted here.
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import Engine

GO_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}

_METHOD_LABELS = ("grpc_type", "grpc_service", "grpc_method")
_POOL_GAUGES = {
    "size": "connections the pool keeps open",
    "checked_out": "connections in use by a call",
    "checked_in": "idle connections in the pool",
    "overflow": "connections open beyond the pool size",
    "kept": "connections kept beside the pool, one per RPC thread, for single reads",
    "kept_in_use": "kept connections in use by a call",
}


class Kept(Protocol):
    """What the gauges read of store.held.HeldConnections."""

    def __len__(self) -> int: ...

    def in_use(self) -> int: ...


def grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    return {
        (False, False): "unary",
        (False, True): "server_stream",
        (True, False): "client_stream",
        (True, True): "bidi_stream",
    }[(request_streaming, response_streaming)]


class MethodMetrics:
    """The label children of one method, resolved once instead of per call."""

    def __init__(self, metrics: Metrics, labels: tuple[str, str, str]) -> None:
        self._metrics = metrics
        self._labels = labels
        self.started = metrics.started.labels(*labels)
        self.handling = metrics.handling.labels(*labels)
        self.received = metrics.received.labels(*labels)
        self.sent = metrics.sent.labels(*labels)
        # By code, as calls end with it (at most the 17 codes): labels()
        # costs 2.6 µs a call, a kept child's inc() 0.5.
        self._handled: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode, seconds: float) -> None:
        child = self._handled.get(code)
        if child is None:
            child = self._handled.setdefault(
                code, self._metrics.handled.labels(*self._labels, GO_CODE_NAMES[code])
            )
        child.inc()
        self.handling.observe(seconds)


class Metrics:
    def __init__(self, multiprocess_dir: str | None = None) -> None:
        # go-grpc-prometheus has no *_created series; they would double the
        # number of series for nothing a dashboard uses.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        registry = self.registry
        self.started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            _METHOD_LABELS,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*_METHOD_LABELS, "grpc_code"),
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            _METHOD_LABELS,
            registry=registry,
        )
        self.received = Counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            _METHOD_LABELS,
            registry=registry,
        )
        self.sent = Counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            _METHOD_LABELS,
            registry=registry,
        )
        self._pool = {
            name: Gauge(
                f"spur_runs_db_pool_{name}",
                f"Database pool: {help_text}.",
                ("database",),
                registry=registry,
                # Workers' pools add up; a dead worker's stop counting.
                multiprocess_mode="livesum",
            )
            for name, help_text in _POOL_GAUGES.items()
        }
        self._engines: dict[str, Engine] = {}
        self._kept: dict[str, Kept] = {}
        self._methods: dict[tuple[str, bool, bool], MethodMetrics] = {}

    def method(
        self, full_method: str, request_streaming: bool, response_streaming: bool
    ) -> MethodMetrics:
        key = (full_method, request_streaming, response_streaming)
        found = self._methods.get(key)
        if found is None:
            service, _, name = full_method.lstrip("/").partition("/")
            found = MethodMetrics(
                self, (grpc_type(request_streaming, response_streaming), service, name)
            )
            self._methods[key] = found
        return found

    def watch_pool(self, database: str, engine: Engine, kept: Kept | None = None) -> None:
        self._engines[database] = engine
        if kept is not None:
            self._kept[database] = kept
        self.refresh_pools()

    def after_call(self) -> None:
        """With several workers another process may answer the scrape, so
        each keeps its own pool gauges current after every call; a single
        process samples them when scraped (exposition) and need not."""
        if self.multiprocess_dir is not None:
            self.refresh_pools()

    def refresh_pools(self) -> None:
        """Sample the pools into the gauges."""
        for database, engine in self._engines.items():
            pool: Any = engine.pool
            numbers = {
                "size": _number(pool, "size"),
                "checked_out": _number(pool, "checkedout"),
                "checked_in": _number(pool, "checkedin"),
                # QueuePool counts overflow from -size up; only the excess matters.
                "overflow": max(_number(pool, "overflow"), 0),
            }
            kept = self._kept.get(database)
            numbers["kept"] = 0 if kept is None else len(kept)
            numbers["kept_in_use"] = 0 if kept is None else kept.in_use()
            for name, value in numbers.items():
                self._pool[name].labels(database).set(value)

    def exposition(self) -> tuple[bytes, str]:
        """The body and Content-Type of an answer to GET /metrics."""
        self.refresh_pools()
        registry = self.registry
        if self.multiprocess_dir is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return prometheus_client.generate_latest(registry), prometheus_client.CONTENT_TYPE_LATEST


def _number(pool: Any, name: str) -> int:
    method = getattr(pool, name, None)
    return int(method()) if callable(method) else 0
