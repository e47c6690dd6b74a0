"""Shared fixtures: real databases (SQLite files and the PostgreSQL at
127.0.0.1:5432), a real gRPC server on a loopback port, the generated stubs.

Every database test runs on both engines. Under CI (CI=true) a PostgreSQL that
cannot be reached fails the suite; elsewhere its tests are skipped.

The folders say what a test needs: unit/ (neither a server nor a database),
integration/ (a real database and/or a server in this process), system/
(processes: the command, workers, clients, tools); each test gets the marker
of its folder. Helpers shared by tests live in support/ (on sys.path through
pyproject's `pythonpath`): no test module imports another.

The suite runs on pytest-xdist's workers by default (support/parallel.py):
`-n 0` or `-p no:xdist` runs it in this one process.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import grpc
import pytest

from databases import new_postgres_database
from parallel import turn, use_workers
from servers import start_server
from spur.runs.v1 import run_service_pb2_grpc
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database

KINDS = ("unit", "integration", "system")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Workers by default (before xdist reads -n); see support/parallel.py."""
    use_workers(config)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """A test marked `exclusive` runs while no other test runs (on xdist's
    workers). The outermost wrapper: pytest-timeout's clock starts after the
    wait, and the lock covers setup and teardown too."""
    with turn(item.config, exclusive=item.get_closest_marker("exclusive") is not None):
        return (yield)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the kind its folder names (-m unit, ...)."""
    for item in items:
        kind = item.path.parent.name
        if kind in KINDS:
            item.add_marker(kind)


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
