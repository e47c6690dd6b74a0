"""gRPC health that reflects reality: SERVING only while the database answers.

A daemon thread pings the database every `interval` seconds and flips the
status of the whole server ("") and of RunService; it comes back to SERVING
on its own when the database returns. A ping that gets no answer within
PING_TIMEOUT_S counts as a failure: a database that stops answering without
closing its connections (a network partition) must not leave health stuck at
its last SERVING. That ping is then abandoned (Database.abandon_ping) and the
next one starts at once, on a new connection: a ping left waiting for its
answer came back only with the kernel's next retransmission, up to 2 s
after the partition healed, and calls were refused until then.

The Health service itself is ours (health_service.py): grpc's HealthServicer
deadlocks when Watch streams churn.
"""

from __future__ import annotations

import logging
import threading
import time

from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

from spur.runs.v1 import run_service_pb2

from ..store.db import Database
from .health_service import HealthServicer

log = logging.getLogger(__name__)

SERVICE_NAME = run_service_pb2.DESCRIPTOR.services_by_name["RunService"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# Above connect_timeout (engine.py: 2 s), so that a database that refuses or
# times out a connection is reported by the ping itself.
PING_TIMEOUT_S = 5.0
# How long an abandoned ping may take to end once its connection is shut
# down (it returns at once; a busy machine may take a while to run it).
ABANDONED_WAIT_S = 0.5


class DatabaseHealth:
    def __init__(
        self,
        db: Database,
        interval: float = 2.0,
        max_watchers: int = 1000,
        registry: CollectorRegistry | None = None,
        max_per_address: int = 100,
    ) -> None:
        self.servicer = HealthServicer(max_watchers, registry, max_per_address)
        self._db = db
        self._interval = interval
        self._stop = threading.Event()
        self._serving: bool | None = None
        self._thread = threading.Thread(target=self._run, name="db-health", daemon=True)
        self._stuck: threading.Thread | None = None  # a ping that never returned

    def start(self) -> None:
        self.check()
        self._thread.start()
        self.servicer.non_readers.start(self.servicer.sender_states, self._stop)

    def check(self) -> bool:
        try:
            self._ping()
            serving = True
        except Exception as error:  # noqa: BLE001 - any failure means "not serving"
            serving = False
            if self._serving is not False:
                log.warning("database unreachable, health NOT_SERVING: %s", error)
        if serving and self._serving is False:
            log.info("database reachable again, health SERVING")
        # Only on a change (HealthServicer.set ignores a repeat too): Watch
        # promises one message per change.
        if serving != self._serving and not self._stop.is_set():
            self._set(_SERVING if serving else _NOT_SERVING)
        self._serving = serving
        return serving

    def _ping(self) -> None:
        """db.ping() in a thread of its own, waited for PING_TIMEOUT_S: the
        driver has no client-side bound on a query whose answer never comes.
        Then it is abandoned, and ends (its connection shut down). One that
        does not (SQLite's, a connection still being made) is left waiting,
        at most one; while it waits, the database counts as unreachable."""
        if self._stuck is not None:
            if self._stuck.is_alive():
                raise TimeoutError("the previous database ping has still not returned")
            self._stuck = None
        failure: list[BaseException] = []

        def ping() -> None:
            try:
                self._db.ping()
            except BaseException as error:  # noqa: BLE001 - handed to check()
                failure.append(error)

        pinging = threading.Thread(target=ping, name="db-health-ping", daemon=True)
        pinging.start()
        pinging.join(PING_TIMEOUT_S)
        if pinging.is_alive():
            self._db.abandon_ping()
            pinging.join(ABANDONED_WAIT_S)
            if pinging.is_alive():
                self._stuck = pinging
            raise TimeoutError(f"the database did not answer a ping within {PING_TIMEOUT_S} s")
        if failure:
            raise failure[0]

    def _set(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.servicer.set(name, status)

    def _run(self) -> None:
        # Every `interval` from the start of the previous ping, or at once
        # when it took longer: after a ping abandoned (PING_TIMEOUT_S) or a
        # connection attempt that timed out (connect_timeout) during a
        # partition, the next one goes now, so that one is on its way within
        # about a second whenever the link comes back (a new connection's
        # SYN goes again after 1 s, then after 2 s more).
        began = time.monotonic()
        while not self._stop.wait(max(0.0, began + self._interval - time.monotonic())):
            began = time.monotonic()
            self.check()
            self.servicer.memory.after_tick()

    def shutdown(self) -> None:
        """Report NOT_SERVING for good (graceful shutdown has begun)."""
        self._stop.set()
        self.servicer.enter_graceful_shutdown()

    def close(self) -> None:
        """After the gRPC server stopped: free the Watch senders."""
        self.servicer.close()
