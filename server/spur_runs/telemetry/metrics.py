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
A single process counts calls in plain numbers (LeanMethodMetrics) that a
collector of ours reports when scraped: prometheus_client's Counter and
Histogram cost ~33k instructions per call through their layers and locks,
these numbers half that (callgrind, Health/Check: 467.7k -> 451.6k per
call, of which grpcio alone is ~354k). With --workers, every process writes to
files under a directory the parent made (prometheus-client's multiprocess
mode), through its Counter and Histogram (ClientMethodMetrics); a scrape,
answered by any one worker, adds up all of them. Both give the same
exposition (tests/unit/test_metrics.py).

Calls refused by --max-concurrent-rpcs never reach Python code (grpc answers
RESOURCE_EXHAUSTED itself), so they are not counted here.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import Any, Protocol

import grpc
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString
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
# Name and help of each per-method series, as go-grpc-prometheus has them.
_STARTED = ("grpc_server_started_total", "Total number of RPCs started on the server.")
_HANDLED = (
    "grpc_server_handled_total",
    "Total number of RPCs completed on the server, regardless of success or failure.",
)
_HANDLING = (
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level "
    "handled by the server.",
)
_RECEIVED = (
    "grpc_server_msg_received_total",
    "Total number of RPC stream messages received on the server.",
)
_SENT = ("grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.")
# prometheus_client's default buckets, +Inf last (as Histogram uses them).
_BOUNDS = tuple(float(b) for b in Histogram.DEFAULT_BUCKETS)
# Their `le` labels, written as Histogram writes them.
_LE = tuple(floatToGoString(b) for b in _BOUNDS)  # type: ignore[no-untyped-call]
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


class MethodMetrics(Protocol):
    """The counts of one method's calls, as rpc/observe.py keeps them."""

    def start(self, received: bool) -> None:
        """A call started; `received`: with its one request message."""

    def receive(self) -> None:
        """A request message of a streaming call."""

    def send(self) -> None:
        """A response message of a streaming call."""

    def handled(self, code: grpc.StatusCode, seconds: float, sent: int = 0) -> None:
        """A call ended with `code` after `seconds`, having sent `sent`
        messages not counted by send()."""


class LeanMethodMetrics:
    """One method's counts as plain numbers under one lock, for one process;
    LeanCollector reports them. A unary call takes the lock twice (start,
    handled) where prometheus_client's children took four locks and five
    layers of calls."""

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self._lock = threading.Lock()
        self._started = self._received = self._sent = 0
        self._handled: dict[str, int] = {}  # by Go's name of the code
        self._buckets = [0] * len(_BOUNDS)  # per bucket, not cumulative
        self._sum = 0.0

    def start(self, received: bool) -> None:
        with self._lock:
            self._started += 1
            if received:
                self._received += 1

    def receive(self) -> None:
        with self._lock:
            self._received += 1

    def send(self) -> None:
        with self._lock:
            self._sent += 1

    def handled(self, code: grpc.StatusCode, seconds: float, sent: int = 0) -> None:
        name = GO_CODE_NAMES[code]
        bucket = bisect_left(_BOUNDS, seconds)  # the first bound >= seconds, as Histogram
        with self._lock:
            self._sent += sent
            self._handled[name] = self._handled.get(name, 0) + 1
            self._buckets[bucket] += 1
            self._sum += seconds

    def snapshot(self) -> tuple[int, int, int, dict[str, int], list[int], float]:
        """started, received, sent, handled by code, buckets, sum: at one instant."""
        with self._lock:
            return (
                self._started,
                self._received,
                self._sent,
                dict(self._handled),
                list(self._buckets),
                self._sum,
            )


class LeanCollector:
    """The per-method series of LeanMethodMetrics, in prometheus_client's
    collector protocol (registry.register): the families a Counter and a
    Histogram with these names would give, in the order Metrics registers
    them for multiprocess mode."""

    def __init__(self) -> None:
        self.methods: list[LeanMethodMetrics] = []

    def describe(self) -> list[Metric]:
        return self._families([])

    def collect(self) -> Iterator[Metric]:
        yield from self._families(list(self.methods))

    def _families(self, methods: list[LeanMethodMetrics]) -> list[Metric]:
        started = CounterMetricFamily(*_STARTED, labels=_METHOD_LABELS)
        handled = CounterMetricFamily(*_HANDLED, labels=(*_METHOD_LABELS, "grpc_code"))
        handling = HistogramMetricFamily(*_HANDLING, labels=_METHOD_LABELS)
        received = CounterMetricFamily(*_RECEIVED, labels=_METHOD_LABELS)
        sent = CounterMetricFamily(*_SENT, labels=_METHOD_LABELS)
        for method in methods:
            labels = list(method.labels)
            n_started, n_received, n_sent, by_code, buckets, total = method.snapshot()
            started.add_metric(labels, n_started)
            for code, count in by_code.items():
                handled.add_metric([*labels, code], count)
            counts = list(zip(_LE, accumulate(buckets), strict=True))  # `le` is cumulative
            handling.add_metric(labels, counts, total)
            received.add_metric(labels, n_received)
            sent.add_metric(labels, n_sent)
        return [started, handled, handling, received, sent]


class ClientMethodMetrics:
    """One method's counts through prometheus_client's Counter and Histogram
    (multiprocess mode: their values live in files other workers read)."""

    def __init__(self, client: _ClientSeries, labels: tuple[str, str, str]) -> None:
        self._handled_family = client.handled
        self._labels = labels
        self._started = client.started.labels(*labels)
        self._handling = client.handling.labels(*labels)
        self._received = client.received.labels(*labels)
        self._sent = client.sent.labels(*labels)
        # By code, as calls end with it (at most the 17 codes): labels()
        # costs 2.6 µs a call, a kept child's inc() 0.5.
        self._handled: dict[grpc.StatusCode, Any] = {}

    def start(self, received: bool) -> None:
        self._started.inc()
        if received:
            self._received.inc()

    def receive(self) -> None:
        self._received.inc()

    def send(self) -> None:
        self._sent.inc()

    def handled(self, code: grpc.StatusCode, seconds: float, sent: int = 0) -> None:
        child = self._handled.get(code)
        if child is None:
            child = self._handled.setdefault(
                code, self._handled_family.labels(*self._labels, GO_CODE_NAMES[code])
            )
        if sent:
            self._sent.inc(sent)
        child.inc()
        self._handling.observe(seconds)


class _ClientSeries:
    """The per-method series as prometheus_client's own metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(*_STARTED, _METHOD_LABELS, registry=registry)
        self.handled = Counter(*_HANDLED, (*_METHOD_LABELS, "grpc_code"), registry=registry)
        self.handling = Histogram(*_HANDLING, _METHOD_LABELS, registry=registry)
        self.received = Counter(*_RECEIVED, _METHOD_LABELS, registry=registry)
        self.sent = Counter(*_SENT, _METHOD_LABELS, registry=registry)


class Metrics:
    def __init__(self, multiprocess_dir: str | None = None) -> None:
        # go-grpc-prometheus has no *_created series; they would double the
        # number of series for nothing a dashboard uses.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        registry = self.registry
        # The per-method series: prometheus_client's own metrics where other
        # processes must see them, plain numbers otherwise (module docstring).
        self.client: _ClientSeries | None = None
        self._lean: LeanCollector | None = None
        if multiprocess_dir is not None:
            self.client = _ClientSeries(registry)
        else:
            self._lean = LeanCollector()
            registry.register(self._lean)
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
        self._lock = threading.Lock()

    def method(
        self, full_method: str, request_streaming: bool, response_streaming: bool
    ) -> MethodMetrics:
        key = (full_method, request_streaming, response_streaming)
        found = self._methods.get(key)
        if found is None:
            service, _, name = full_method.lstrip("/").partition("/")
            labels = (grpc_type(request_streaming, response_streaming), service, name)
            with self._lock:
                found = self._methods.get(key)
                if found is None:
                    if self.client is not None:
                        found = ClientMethodMetrics(self.client, labels)
                    else:
                        assert self._lean is not None  # one of the two, always
                        lean = LeanMethodMetrics(labels)
                        self._lean.methods.append(lean)
                        found = lean
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
