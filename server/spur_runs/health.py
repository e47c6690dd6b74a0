"""gRPC health that reflects reality: SERVING only while the database answers.

A daemon thread pings the database every `interval` seconds and flips the
status of the whole server ("") and of RunService; it comes back to SERVING
on its own when the database returns.
"""

from __future__ import annotations

import logging
import threading

from grpc_health.v1 import health, health_pb2

from spur.runs.v1 import run_service_pb2

from .db import Database

log = logging.getLogger(__name__)

SERVICE_NAME = run_service_pb2.DESCRIPTOR.services_by_name["RunService"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DatabaseHealth:
    def __init__(self, db: Database, interval: float = 2.0) -> None:
        self.servicer = health.HealthServicer()
        self._db = db
        self._interval = interval
        self._stop = threading.Event()
        self._serving: bool | None = None
        self._thread = threading.Thread(target=self._run, name="db-health", daemon=True)

    def start(self) -> None:
        self.check()
        self._thread.start()

    def check(self) -> bool:
        try:
            self._db.ping()
            serving = True
        except Exception as error:  # noqa: BLE001 - any failure means "not serving"
            serving = False
            if self._serving is not False:
                log.warning("database unreachable, health NOT_SERVING: %s", error)
        if serving and self._serving is False:
            log.info("database reachable again, health SERVING")
        # Only on a change: HealthServicer.set sends every Watch stream a
        # message each time, and Watch promises one per change.
        if serving != self._serving and not self._stop.is_set():
            self._set(_SERVING if serving else _NOT_SERVING)
        self._serving = serving
        return serving

    def _set(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.servicer.set(name, status)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.check()

    def shutdown(self) -> None:
        """Report NOT_SERVING for good (graceful shutdown has begun)."""
        self._stop.set()
        self.servicer.enter_graceful_shutdown()
