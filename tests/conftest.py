"""Shared fixtures: real databases (SQLite files and the PostgreSQL at
127.0.0.1:5432), a real gRPC server on a loopback port, the generated stubs.

Every database test runs on both engines. Under CI (CI=true) a PostgreSQL that
cannot be reached fails the suite; elsewhere its tests are skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from spur.runs.v1 import run_service_pb2_grpc
from spur_runs.config import Config
from spur_runs.runtime.server import RunsServer, create_server
from spur_runs.store.db import Database

PG_ADMIN_URL = os.environ.get(
    "SPUR_RUNS_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() == "true"


def _postgres_unreachable(error: Exception) -> None:
    message = f"PostgreSQL at {PG_ADMIN_URL} unreachable: {error}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def new_postgres_database(prefix: str = "spur_test") -> Iterator[str]:
    """URL of a new, empty PostgreSQL database, dropped at the end."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # noqa: BLE001
        admin.dispose()
        _postgres_unreachable(error)
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a new, empty PostgreSQL database, dropped afterwards."""
    with new_postgres_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def migrated_url(database_url: str) -> str:
    """A database with the schema our migrations create."""
    from spur_runs.store.migrate import migrate

    migrate(database_url)
    return database_url


@pytest.fixture
def db(migrated_url: str) -> Iterator[Database]:
    database = Database.from_url(migrated_url, pool_size=4)
    yield database
    database.dispose()


def start_server(database_url: str, **config: object) -> RunsServer:
    server, _ = create_server(
        Config(database_url=database_url, grpc_address="127.0.0.1:0", **config)  # type: ignore[arg-type]
    )
    server.start()
    return server


@pytest.fixture
def server(migrated_url: str) -> Iterator[RunsServer]:
    running = start_server(migrated_url)
    yield running
    running.stop(grace=1)


@pytest.fixture
def channel(server: RunsServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.Channel) -> run_service_pb2_grpc.RunServiceStub:
    return run_service_pb2_grpc.RunServiceStub(channel)
