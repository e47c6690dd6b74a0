"""Fixtures of the HTTP gateway tests (a server with HTTP on a loopback
port, a client, seeded runs), for test modules that declare
`pytest_plugins = ["http_fixtures"]`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from http_client import Http, Seeded, seed_runs, start_http_server
from spur_runs.runtime.server import RunsServer


@pytest.fixture
def http_server(migrated_url: str) -> Iterator[RunsServer]:
    server = start_http_server(migrated_url)
    yield server
    server.stop(grace=1)


@pytest.fixture
def seeded(migrated_url: str) -> Seeded:
    return seed_runs(migrated_url)


@pytest.fixture
def client(http_server: RunsServer) -> Iterator[Http]:
    assert http_server.http_port is not None
    connection = Http(http_server.http_port)
    yield connection
    connection.close()
