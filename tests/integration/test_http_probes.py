"""The HTTP port's health endpoints (issue 14), against real servers:
/healthz is 200 while the process serves; /readyz follows gRPC health (a
PostgreSQL that refuses connections, a SQLite file that cannot be opened);
both need no token, live under the path prefix, and are in /openapi.json.

Moved out of test_http_safety.py (which had grown past 600 lines) unchanged.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from databases import PG_ADMIN_URL
from http_client import Http, Seeded, seed_runs, start_http_server
from spur_runs.store.migrate import migrate

UNAVAILABLE = 14


@pytest.fixture
def sqlite_db(sqlite_url: str) -> tuple[str, Seeded]:
    migrate(sqlite_url)
    return sqlite_url, seed_runs(sqlite_url)


def _status_of(port: int, path: str) -> int:
    client = Http(port, timeout=5)
    try:
        reply = client.get(path)
        if reply.status == 200:
            assert reply.json() == {"status": "SERVING"}
        else:
            assert reply.error(UNAVAILABLE)
        return reply.status
    finally:
        client.close()


def _wait_status(port: int, path: str, want: int, timeout: float = 15) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if _status_of(port, path) == want:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{path} did not become {want} within {timeout} s")


def _allow_connections(url: str, allowed: bool) -> None:
    name = make_url(url).database
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}'))
            if not allowed:
                c.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :n AND pid <> pg_backend_pid()"
                    ),
                    {"n": name},
                )
    finally:
        admin.dispose()


def test_readyz_follows_grpc_health_while_healthz_stays_200(postgres_url: str) -> None:
    migrate(postgres_url)
    server = start_http_server(postgres_url, health_interval=0.2)
    assert server.http_port
    port = server.http_port
    try:
        assert _status_of(port, "/healthz") == _status_of(port, "/readyz") == 200
        _allow_connections(postgres_url, False)
        try:
            down = _wait_status(port, "/readyz", 503)
            assert _status_of(port, "/healthz") == 200
        finally:
            _allow_connections(postgres_url, True)
        up = _wait_status(port, "/readyz", 200)
        print(f"\n/readyz 503 {down:.2f} s after the database went away, 200 {up:.2f} s after")
        # Neither takes a method but GET, nor a token.
        client = Http(port)
        try:
            reply = client.request("POST", "/readyz")
            assert reply.status == 405 and reply.headers["Allow"] == "GET, HEAD"
        finally:
            client.close()
    finally:
        server.stop(grace=1)


def test_readyz_is_503_while_sqlite_cannot_be_opened_then_200(tmp_path: Path) -> None:
    folder = tmp_path / "later"
    server = start_http_server(f"sqlite:///{folder / 'runs.db'}", health_interval=0.2)
    assert server.http_port
    try:
        assert _status_of(server.http_port, "/readyz") == 503  # (no such folder)
        assert _status_of(server.http_port, "/healthz") == 200
        folder.mkdir()
        _wait_status(server.http_port, "/readyz", 200)
    finally:
        server.stop(grace=1)


def test_probes_need_no_token(sqlite_db: tuple[str, Seeded], tmp_path: Path) -> None:
    tokens = tmp_path / "admins"
    tokens.write_text("adm1n-token\n")
    server = start_http_server(sqlite_db[0], admin_tokens_file=str(tokens))
    assert server.http_port
    client = Http(server.http_port)
    try:
        assert client.get("/run").status == 401
        assert _status_of(server.http_port, "/healthz") == 200
        assert _status_of(server.http_port, "/readyz") == 200
    finally:
        client.close()
        server.stop(grace=1)


def test_the_probes_live_under_the_path_prefix(sqlite_db: tuple[str, Seeded]) -> None:
    server = start_http_server(sqlite_db[0], http_path_prefix="/api")
    assert server.http_port
    try:
        assert _status_of(server.http_port, "/api/healthz") == 200
        assert _status_of(server.http_port, "/api/readyz") == 200
        client = Http(server.http_port)
        try:
            assert client.get("/healthz").status == 404
        finally:
            client.close()
    finally:
        server.stop(grace=1)


def test_openapi_documents_the_probes(sqlite_db: tuple[str, Seeded]) -> None:
    server = start_http_server(sqlite_db[0])
    assert server.http_port
    client = Http(server.http_port)
    try:
        document = client.get("/openapi.json").json()
    finally:
        client.close()
        server.stop(grace=1)
    for path in ("/healthz", "/readyz"):
        operation = document["paths"][path]["get"]
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        name = schema["$ref"].rsplit("/", 1)[1]
        assert document["components"]["schemas"][name]["required"] == ["status"]
    assert "503" in document["paths"]["/readyz"]["get"]["responses"]
    assert re.fullmatch(r"[A-Za-z]+", document["paths"]["/readyz"]["get"]["operationId"])
