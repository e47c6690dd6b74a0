"""grpc.health.v1.Health, served by us over grpc's health protos.

grpcio-health-checking's HealthServicer deadlocks under Watch churn: its
Watch sends the first message while holding the servicer's lock, and a send
waits for grpc's event thread; that thread meanwhile runs the close callback
of another (cancelled) Watch, which waits for the same lock. After that no
call is answered and SIGTERM never finishes. So here:

- no lock is ever held while sending: a status change only records, under a
  short lock, what each watcher is to be sent next, and a small pool of
  sender threads sends it;
- the termination callback (run on grpc's event thread) only takes that
  short lock; it never sends and never waits;
- Watch is grpc's non-blocking form (as WatchRun, watch.py): it registers the
  stream and returns, so no open stream holds one of the RPC threads;
- open Watch streams are bounded (`--max-health-watchers`; beyond it
  RESOURCE_EXHAUSTED), and so are one client address's
  (`--max-health-watchers-per-address`: health takes no token, and one
  client held all 1,000, a review, 2026-12-04), and a watcher holds a few hundred bytes of ours
  until its stream ends; after many have closed, the memory grpc and
  Python freed goes back to the OS (memory.py).

Messages are coalesced per watcher, as grpc's own Watch does: a client that
has not taken the previous message gets the latest status, not a backlog.
When the server stops, every watcher is sent NOT_SERVING and its stream then
ends with UNAVAILABLE (watch again, elsewhere), so that open watches do not
hold the shutdown for its whole grace period.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry, Gauge

from ..api.senders import NonReaders, Stream
from ..trust import AddressCounts, address_of
from .memory import StreamMemory

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

# Threads that write health messages to watchers. A send blocks until the
# transport took the message, so a few, shared by all watchers.
SENDERS = 4
Send = Callable[[Any], None]


class _Watcher:
    """One Watch stream; every field is guarded by the servicer's lock."""

    __slots__ = (
        "service", "peer", "address", "context", "_send", "pending", "ending", "draining",
        "in_send_since", "closed",
    )  # fmt: skip

    def __init__(self, service: str, context: grpc.ServicerContext, send: Send) -> None:
        self.service = service
        self.peer = context.peer()  # its connection (api/senders.py)
        self.address = address_of(self.peer)
        self.context = context
        self._send = send
        self.pending: int | None = None  # the status still to be sent
        self.ending = False  # end the stream (UNAVAILABLE) once pending is sent
        self.draining = False  # a sender is queued or at work for it
        self.in_send_since: float | None = None  # ... and in a send since then
        self.closed = False  # the call is over

    def send(self, item: Any) -> None:
        self.in_send_since = time.monotonic()
        try:
            self._send(item)
        finally:
            self.in_send_since = None


class HealthServicer:
    """Check, List and Watch of grpc.health.v1.Health (register it with
    health_pb2_grpc.add_HealthServicer_to_server)."""

    def __init__(
        self,
        max_watchers: int,
        registry: CollectorRegistry | None = None,
        max_per_address: int | None = None,
    ) -> None:
        self.max_watchers = max_watchers
        # Open watchers per client address, each within its bound.
        self._by_address = AddressCounts(max_per_address or max_watchers)
        # Guards everything below and the watchers' fields. Held only for a
        # few dictionary operations: never while sending or cancelling.
        self._lock = threading.Lock()
        self._statuses: dict[str, int] = {"": SERVING}
        self._watchers: dict[str, set[_Watcher]] = {}
        self._count = 0
        self._shutting_down = False
        self._senders = futures.ThreadPoolExecutor(SENDERS, thread_name_prefix="health-send")
        self.non_readers = NonReaders(SENDERS, "health Watch")  # started by DatabaseHealth
        self.memory = StreamMemory()  # trimmed after a storm (memory.py)
        self._gauge = Gauge(
            "spur_runs_health_watchers", "Open grpc.health.v1.Health/Watch streams.",
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip

    # --- the RPCs ---

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        with self._lock:
            status = self._statuses.get(request.service)
        if status is None:
            # A status, not an exception: the --health-address listener
            # serves this servicer without our interceptors.
            context.set_code(grpc.StatusCode.NOT_FOUND)
            # The name cut short: echoed whole, a long one made the status
            # too large for grpc's metadata limit (RESOURCE_EXHAUSTED).
            name = request.service if len(request.service) <= 100 else request.service[:100] + "..."
            context.set_details(f"unknown service {name!r}")
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=status)

    def List(
        self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthListResponse:
        with self._lock:
            statuses = dict(self._statuses)
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=s) for name, s in statuses.items()
            }
        )

    def Watch(  # grpc's non-blocking form
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.ServicerContext,
        send_response_callback: Send,
    ) -> None:
        """Register the stream and return; its messages go out on the
        sender threads: the current status first, then each change."""
        watcher = _Watcher(request.service, context, send_response_callback)
        with self._lock:
            full = self._count >= self.max_watchers
            taken = not full and self._by_address.take(watcher.address)
            if taken:
                self._watchers.setdefault(watcher.service, set()).add(watcher)
                self._count += 1
                watcher.pending = self._statuses.get(watcher.service, SERVICE_UNKNOWN)
                watcher.ending = self._shutting_down
        if not taken:
            # Ended with a status rather than an exception, as in Check.
            _end(
                watcher,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this server already has {self.max_watchers} open health watches; "
                "retry later or use Check"
                if full
                else f"this client address already holds {self._by_address.limit} open "
                "health watches; close one or use Check",
            )
            return
        self._gauge.inc()
        self.memory.opened()
        # Unregister however the call ends. grpc runs this on its event
        # thread, which every send waits for: it must only take the lock.
        if not context.add_callback(lambda: self._release(watcher)):
            self._release(watcher)  # the call is over already
            return
        self._kick([watcher])

    # grpc calls it with a send callback and frees its thread when it returns.
    Watch.experimental_non_blocking = True  # type: ignore[attr-defined]

    # --- status changes (DatabaseHealth) ---

    def set(self, service: str, status: int) -> None:
        """Set the status of `service`; its watchers are sent it (later, on
        the sender threads). Ignored once shutdown began."""
        with self._lock:
            if self._shutting_down or self._statuses.get(service) == status:
                return
            self._statuses[service] = status
            watchers = list(self._watchers.get(service, ()))
            for watcher in watchers:
                watcher.pending = status
        self._kick(watchers)

    def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for good; every open watch is sent it, then ends."""
        with self._lock:
            if self._shutting_down:
                return
            self._shutting_down = True
            for service in self._statuses:
                self._statuses[service] = NOT_SERVING
            watchers = [w for group in self._watchers.values() for w in group]
            for watcher in watchers:
                # A service we serve changes to NOT_SERVING; an unknown one
                # does not change: its watchers get no message, just the end.
                watcher.pending = self._statuses.get(watcher.service)
                watcher.ending = True
        self._kick(watchers)

    def close(self) -> None:
        """After the server stopped: cancel what is left, free the senders."""
        for watcher in self._snapshot():
            watcher.context.cancel()  # type: ignore[no-untyped-call]
        self._senders.shutdown(wait=False, cancel_futures=True)

    @property
    def watcher_count(self) -> int:
        with self._lock:
            return self._count

    def sender_states(self) -> list[Stream]:
        """Every Watch stream, as the senders' check sees it (api/senders.py)."""
        with self._lock:
            watchers = [w for group in self._watchers.values() for w in group]
        return [
            (w.context, w.peer, w.in_send_since, w.draining and w.in_send_since is None)
            for w in watchers
        ]

    # --- internals ---

    def _snapshot(self) -> list[_Watcher]:
        with self._lock:
            return [w for group in self._watchers.values() for w in group]

    def _release(self, watcher: _Watcher) -> None:
        with self._lock:
            if watcher.closed:
                return
            watcher.closed = True
            group = self._watchers.get(watcher.service)
            if group is not None:
                group.discard(watcher)
                if not group:
                    del self._watchers[watcher.service]
            self._count -= 1
            self._by_address.release(watcher.address)
        self._gauge.dec()
        self.memory.closed()

    def _kick(self, watchers: list[_Watcher]) -> None:
        """Start a sender for each of `watchers` that has none at work."""
        with self._lock:
            idle = [w for w in watchers if not w.draining and not w.closed]
            for watcher in idle:
                watcher.draining = True
        for watcher in idle:
            try:
                self._senders.submit(self._drain, watcher)
            except RuntimeError:  # closed: the server has stopped
                with self._lock:
                    watcher.draining = False

    def _drain(self, watcher: _Watcher) -> None:
        """Send what `watcher` has pending until nothing is (one sender per
        watcher at a time, so its messages keep their order)."""
        while True:
            with self._lock:
                status, watcher.pending = watcher.pending, None
                ending = watcher.ending and status is None
                if watcher.closed or (status is None and not ending):
                    watcher.draining = False
                    return
                if ending:
                    watcher.ending = False
            try:
                if status is not None:
                    watcher.send(health_pb2.HealthCheckResponse(status=status))
                else:
                    _end(
                        watcher,
                        grpc.StatusCode.UNAVAILABLE,
                        "the server is shutting down; watch again",
                    )
            except Exception:  # noqa: BLE001 - one stream's failure is its own
                log.exception("health Watch: sending to a watcher failed")
                watcher.context.cancel()  # type: ignore[no-untyped-call]
                with self._lock:
                    watcher.draining = False
                return


def _end(watcher: _Watcher, code: grpc.StatusCode, details: str) -> None:
    """End the stream with `code`: set on the call, then the close (None)."""
    watcher.context.set_code(code)
    watcher.context.set_details(details)
    watcher.send(None)
