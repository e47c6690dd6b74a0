"""--http-cors-origins: a page on another origin may call the HTTP API, as
a browser's CORS protocol checks it; off by default; no other origin, and
nothing that is no header name, gets through a preflight; any header name
does (the gateway ignores those it does not read)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from http_client import Http, Seeded, seed_runs, start_http_server
from spur_runs.runtime.server import RunsServer

UI = "http://ui.example:3000"

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


pytest_plugins = ["http_fixtures"]


@pytest.fixture
def http_server(migrated_url: str) -> Iterator[RunsServer]:
    """http_fixtures' server (and so its `client`), with CORS on."""
    server = start_http_server(migrated_url, http_cors_origins=f"{UI}, https://other.example")
    yield server
    server.stop(grace=1)


def _preflight(client: Http, path: str, origin: str, method: str, headers: str = "") -> object:
    asked = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        asked["Access-Control-Request-Headers"] = headers
    return client.request("OPTIONS", path, asked)


def test_a_preflight_from_an_allowed_origin(client: Http, migrated_url: str) -> None:
    run = seed_runs(migrated_url).parent
    reply = _preflight(client, f"/run/{run}/", UI, "DELETE", "authorization, grpc-timeout")
    assert reply.status == 204, reply.body  # type: ignore[attr-defined]
    headers = reply.headers  # type: ignore[attr-defined]
    assert headers["Access-Control-Allow-Origin"] == UI
    assert "DELETE" in headers["Access-Control-Allow-Methods"]
    assert headers["Access-Control-Allow-Headers"] == "authorization, grpc-timeout"
    assert "Access-Control-Allow-Credentials" not in headers


def test_a_preflight_allows_headers_the_api_does_not_read(client: Http) -> None:
    """What browser SDKs add (X-Requested-With; OpenTelemetry's; Sentry's):
    it was 403 "request headers x-requested-with are not read here"."""
    for asked in (
        "x-requested-with",
        "authorization, baggage, sentry-trace, traceparent, tracestate, x-requested-with",
    ):
        reply = _preflight(client, "/run/R1/status/", UI, "GET", asked)
        assert reply.status == 204, reply.body  # type: ignore[attr-defined]
        headers = reply.headers  # type: ignore[attr-defined]
        assert headers["Access-Control-Allow-Headers"] == asked
        assert headers["Access-Control-Allow-Origin"] == UI
    # Names are echoed lowercased, once each.
    reply = _preflight(client, "/run/", UI, "GET", "X-Requested-With,x-requested-with, X-Custom")
    assert reply.status == 204  # type: ignore[attr-defined]
    allowed = reply.headers["Access-Control-Allow-Headers"]  # type: ignore[attr-defined]
    assert allowed == "x-requested-with, x-custom"


@pytest.mark.parametrize(
    ("origin", "headers"),
    [
        ("http://evil.example", ""),
        ("http://ui.example:3001", ""),
        ("http://evil.example", "x-requested-with"),
        (UI, "x custom"),  # no header name
        (UI, "x-ok, bad@name"),
        (UI, "x-" + "a" * 200),  # a name too long
        (UI, ", ".join(f"x-h{i}" for i in range(65))),  # over cors.MAX_REQUEST_HEADERS
    ],
)
def test_a_preflight_refused(client: Http, origin: str, headers: str) -> None:
    reply = _preflight(client, "/run/", origin, "GET", headers)
    assert reply.status == 403  # type: ignore[attr-defined]
    assert "Access-Control-Allow-Origin" not in reply.headers  # type: ignore[attr-defined]


def test_answers_to_an_allowed_origin_carry_cors(client: Http, migrated_url: str) -> None:
    seeded: Seeded = seed_runs(migrated_url)
    reply = client.get("/run/?page_size=1", Origin=UI)
    assert reply.status == 200
    assert reply.headers["Access-Control-Allow-Origin"] == UI
    assert "Link" in reply.headers["Access-Control-Expose-Headers"]
    assert reply.headers["Vary"] == "Origin"
    missing = client.get("/run/R999999/", Origin=UI)  # errors too: the page reads them
    assert missing.status == 404 and missing.headers["Access-Control-Allow-Origin"] == UI
    stream = client.get(f"/run/{seeded.parent}/watch", Origin=UI)  # an ended run: ends
    assert stream.status == 200 and stream.headers["Access-Control-Allow-Origin"] == UI
    other = client.get("/run/?page_size=1", Origin="http://evil.example")
    assert other.status == 200 and "Access-Control-Allow-Origin" not in other.headers


def test_off_by_default(migrated_url: str) -> None:
    server = start_http_server(migrated_url)
    try:
        assert server.http_port is not None
        client = Http(server.http_port)
        reply = _preflight(client, "/run/", UI, "GET")
        assert reply.status == 405  # type: ignore[attr-defined]
        assert "Access-Control-Allow-Origin" not in client.get("/run/", Origin=UI).headers
        client.close()
    finally:
        server.stop(grace=1)
