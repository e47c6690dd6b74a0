"""Assemble the gRPC server: RunService, health, reflection, interceptors.

    server, port = create_server(Config(grpc_address="127.0.0.1:0"))
    server.start()
    ...
    server.stop(grace=5)

Tests bind to port 0 and read the port back.
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from spur.runs.v1 import run_service_pb2, run_service_pb2_grpc

from .config import Config
from .db import Database
from .health import DatabaseHealth
from .interceptors import ErrorInterceptor
from .schema_check import warn_missing_indexes
from .service import RunService

log = logging.getLogger(__name__)


class RunsServer:
    """A started-or-not gRPC server with the resources it owns."""

    def __init__(self, config: Config, db: Database) -> None:
        self.config = config
        self.db = db
        self.health = DatabaseHealth(db, config.health_interval)
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=config.max_workers, thread_name_prefix="rpc"
            ),
            interceptors=[ErrorInterceptor()],
        )
        run_service_pb2_grpc.add_RunServiceServicer_to_server(RunService(db), self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self.grpc)
        reflection.enable_server_reflection(
            (
                run_service_pb2.DESCRIPTOR.services_by_name["RunService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.grpc,
        )
        self.port = self.grpc.add_insecure_port(config.grpc_address)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.grpc_address}")

    def start(self) -> None:
        warn_missing_indexes(self.db.engine)
        self.health.start()
        self.grpc.start()
        log.info("serving gRPC on port %d (database %s)", self.port, self.db.engine.url.render_as_string(hide_password=True))

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: health NOT_SERVING, refuse new calls, let in-flight
        calls finish within `grace` seconds, then release the database."""
        self.health.shutdown()
        self.grpc.stop(self.config.grace_seconds if grace is None else grace).wait()
        self.db.dispose()

    def wait(self) -> None:
        self.grpc.wait_for_termination()


def create_server(config: Config, db: Database | None = None) -> tuple[RunsServer, int]:
    server = RunsServer(config, db or Database.from_url(config.database_url, config.pool_size))
    return server, server.port
