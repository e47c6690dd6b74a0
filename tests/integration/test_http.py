"""The HTTP/JSON gateway, end to end: a real server (gRPC + HTTP on loopback
ports) over SQLite and PostgreSQL, driven with real HTTP requests. Every
route, with and without the trailing slash; paging; 204, 405, 404; query
values; the error mapping; deadlines; headers passed on as metadata."""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from certs import make_tls_files
from http_client import Http, Seeded, seed_runs, start_http_server
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database
from spur_runs.store.migrate import migrate

pytest_plugins = ["http_fixtures"]

RUN_FIELDS = {f.name for f in run_pb2.Run.DESCRIPTOR.fields}
TASK_FIELDS = {f.name for f in run_pb2.Task.DESCRIPTOR.fields}
INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, UNIMPLEMENTED, UNAVAILABLE = 3, 5, 9, 12, 14
DEADLINE_EXCEEDED, UNAUTHENTICATED, PERMISSION_DENIED = 4, 16, 7


@pytest.fixture
def stub(http_server: RunsServer) -> Iterator[RunServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{http_server.port}") as channel:
        yield RunServiceStub(channel)


def as_json(message: Any) -> Any:
    """What the gRPC answer says, in the gateway's JSON (json_format, proto
    names), for comparing with an HTTP answer."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


_TIME_KEYS = frozenset(("start_time", "end_time", "created_at", "updated_at"))


def same_content(http: Any, grpc_json: Any, *, pyspur: bool = False, key: str = "") -> None:
    """The HTTP document holds what json_format printed of the gRPC answer;
    the keys json_format left out are null there. `pyspur` (PySpur's paths):
    times are the same instants written as PySpur writes them, naive UTC."""
    if isinstance(grpc_json, dict):
        assert isinstance(http, dict)
        for name, value in http.items():
            if name in grpc_json:
                same_content(value, grpc_json[name], pyspur=pyspur, key=name)
            else:
                assert value is None, (name, value)
        assert set(grpc_json) <= set(http)
    elif isinstance(grpc_json, list):
        assert isinstance(http, list) and len(http) == len(grpc_json)
        for a, b in zip(http, grpc_json, strict=True):
            same_content(a, b, pyspur=pyspur, key=key)
    elif pyspur and key in _TIME_KEYS and isinstance(grpc_json, str):
        assert isinstance(http, str) and not http.endswith("Z"), (key, http)
        theirs = datetime.fromisoformat(grpc_json.replace("Z", "+00:00"))
        assert datetime.fromisoformat(http).replace(tzinfo=UTC) == theirs, (key, http)
    else:
        assert http == grpc_json


# --- every route ---


@pytest.mark.slow
def test_get_run_with_and_without_trailing_slash(
    client: Http, seeded: Seeded, stub: RunServiceStub
) -> None:
    plain, slashed = client.get(f"/run/{seeded.parent}"), client.get(f"/run/{seeded.parent}/")
    assert plain.status == slashed.status == 200
    assert plain.body == slashed.body
    run = plain.json()  # the seed's shape: the run itself
    assert set(run) == RUN_FIELDS  # every field, set or not
    assert run["id"] == seeded.parent
    assert run["status"] == "COMPLETED"  # PySpur's spelling
    # Naive UTC, as PySpur writes its times (its UI appends the "Z").
    assert run["start_time"] == "2026-11-02T09:00:00"
    assert run["end_time"] == "2026-11-02T09:05:00"
    assert run["parent_run_id"] is None and run["message"] is None  # unset: null
    assert run["initial_inputs"] == {"input_node": {"question": "héllo", "n": 3}}
    assert run["outputs"] == {"output": {"answer": 42, "ratio": 0.5, "list": [1, "a", None, True]}}
    assert run["task_count"] == 6 and run["percentage_complete"] == 100
    assert b'"percentage_complete":100.0' in plain.body  # a float, as pydantic writes it
    assert [t["node_id"] for t in run["tasks"]][:2] == ["input_node", "llm"]
    assert all(set(t) == TASK_FIELDS for t in run["tasks"])
    assert run["workflow_version"]["definition"]["nodes"][0]["id"] == "input_node"
    assert run["duration"] == 300
    answer = stub.GetRun(pb.GetRunRequest(run_id=seeded.parent))
    same_content(run, as_json(answer.run), pyspur=True)
    # The resource path answers the whole GetRunResponse; the UI's status
    # path, the run again.
    same_content(client.get(f"/v1/runs/{seeded.parent}").json(), as_json(answer))
    assert client.get(f"/run/{seeded.parent}/status/").body == plain.body


@pytest.mark.slow
def test_list_runs_by_page_number(client: Http, seeded: Seeded, stub: RunServiceStub) -> None:
    reply = client.get("/run/?page=2&page_size=5&parent_only=false")
    assert reply.status == 200
    runs = reply.json()  # the seed's shape: a bare list
    expected = stub.ListRuns(pb.ListRunsRequest(page=2, page_size=5, parent_only=False))
    assert [r["id"] for r in runs] == [r.id for r in expected.runs]
    assert len(runs) == 5
    same_content(runs, as_json(expected)["runs"], pyspur=True)
    first = client.get("/run")
    assert first.status == 200 and first.body == client.get("/run/").body
    assert len(first.json()) == 10  # the default page size
    # Top-level runs when parent_only is not given, as PySpur's router lists them.
    top = [r["id"] for r in client.get("/run?page_size=100").json()]
    assert sorted(top) == sorted([seeded.parent, *seeded.others])
    whole = client.get("/v1/runs?page=2&page_size=5&parent_only=false").json()
    same_content(whole, as_json(expected))


def _walk(client: Http, path: str) -> tuple[list[Any], int]:
    """Follow a bare list's Link: rel="next" headers to the end, as a client
    of the seed's paths does; the items and the number of pages."""
    items: list[Any] = []
    pages = 0
    next_path: str | None = path
    while next_path is not None:
        reply = client.get(next_path)
        assert reply.status == 200
        items += reply.json()
        pages += 1
        link = reply.headers.get("Link")
        if link is None:
            next_path = None
        else:
            assert link.startswith("</") and link.endswith('>; rel="next"'), link
            next_path = link[1 : link.index(">")]
    return items, pages


@pytest.mark.slow
def test_list_runs_by_token_walks_every_run_once(client: Http, seeded: Seeded) -> None:
    seen: list[str] = []
    path = "/v1/runs?page_size=4&parent_only=false"
    while True:
        page = client.get(path).json()
        seen += [r["id"] for r in page["runs"]]
        if not page["next_page_token"]:
            break
        path = f"/v1/runs?page_size=4&parent_only=false&page_token={page['next_page_token']}"
    assert sorted(seen) == sorted([seeded.parent, *seeded.children, *seeded.others])
    # The seed's path: the same walk through Link headers, page numbers dropped.
    linked, pages = _walk(client, "/run/?page=1&page_size=4&parent_only=false")
    assert [r["id"] for r in linked] == seen and pages == 4


@pytest.mark.slow
def test_get_run_tasks(client: Http, seeded: Seeded, stub: RunServiceStub) -> None:
    for path in (f"/run/{seeded.parent}/tasks", f"/run/{seeded.parent}/tasks/"):
        reply = client.get(path)
        assert reply.status == 200
        assert len(reply.json()) == 6 and "Link" not in reply.headers  # all of them
    whole = client.get(f"/v1/runs/{seeded.parent}/tasks").json()
    assert len(whole["tasks"]) == 6 and whole["next_page_token"] == ""
    same_content(whole, as_json(stub.GetRunTasks(pb.GetRunTasksRequest(run_id=seeded.parent))))
    first = client.get(f"/v1/runs/{seeded.parent}/tasks?page_size=4").json()
    assert len(first["tasks"]) == 4 and first["next_page_token"]
    rest = client.get(
        f"/v1/runs/{seeded.parent}/tasks?page_size=4&page_token={first['next_page_token']}"
    ).json()
    assert [t["id"] for t in first["tasks"] + rest["tasks"]] == [t["id"] for t in whole["tasks"]]
    linked, pages = _walk(client, f"/run/{seeded.parent}/tasks/?page_size=4")
    assert [t["id"] for t in linked] == [t["id"] for t in whole["tasks"]] and pages == 2


@pytest.mark.slow
def test_get_child_runs(client: Http, seeded: Seeded) -> None:
    for path in (f"/run/{seeded.parent}/children", f"/run/{seeded.parent}/children/"):
        reply = client.get(path)
        assert reply.status == 200
        runs = reply.json()
        assert sorted(r["id"] for r in runs) == sorted(seeded.children)
        assert {r["parent_run_id"] for r in runs} == {seeded.parent}
        assert all(r["start_time"] is None and r["duration"] is None for r in runs)
    whole = client.get(f"/v1/runs/{seeded.parent}/children?page_size=1").json()
    assert len(whole["runs"]) == 1 and whole["next_page_token"]
    linked, pages = _walk(client, f"/run/{seeded.parent}/children/?page_size=1")
    assert sorted(r["id"] for r in linked) == sorted(seeded.children) and pages == 2


@pytest.mark.slow
def test_delete_answers_204_with_no_body_and_the_run_is_gone(client: Http, seeded: Seeded) -> None:
    reply = client.request("DELETE", f"/run/{seeded.parent}/")
    assert reply.status == 204
    assert reply.body == b""
    assert client.get(f"/run/{seeded.parent}").status == 404
    assert client.get(f"/run/{seeded.children[0]}").status == 404  # children went with it
    again = client.request("DELETE", f"/run/{seeded.parent}")
    assert again.status == 404
    again.error(NOT_FOUND)


# --- what is not a route ---


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/run/R1", {"GET", "DELETE"}),
        ("PUT", "/run/R1/", {"GET", "DELETE"}),
        ("DELETE", "/run", {"GET"}),
        ("PATCH", "/run/R1/tasks", {"GET"}),
        ("POST", "/run/R1/children/", {"GET"}),
        ("DELETE", "/openapi.json", {"GET"}),
    ],
)
def test_wrong_method_is_405_with_allow(
    client: Http, method: str, path: str, allowed: set[str]
) -> None:
    reply = client.request(method, path)
    assert reply.status == 405
    # Where GET is, HEAD is too (test_head_is_get_without_the_body).
    assert set(reply.headers["Allow"].split(", ")) == allowed | {"HEAD"}
    assert method not in reply.error(UNIMPLEMENTED)["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/run/R1/",
        "/run/R1",
        "/run/?page=1&page_size=2",
        "/run/R1/tasks/",
        "/v1/runs?page_size=1",
        "/run/R99999/",
        "/run/X1/",
        "/openapi.json",
        "/readyz",
        "/healthz",
    ],
)
def test_head_is_get_without_the_body(client: Http, seeded: Seeded, path: str) -> None:
    """RFC 9110 9.3.2, and PySpur's Starlette: HEAD answers what GET would,
    headers and all, with no body; the connection then serves the next
    request (a body sent after all would garble it)."""
    path = path.replace("R1", seeded.parent)
    get = client.get(path)
    head = client.request("HEAD", path)
    assert head.status == get.status
    assert head.body == b""
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    assert int(head.headers["Content-Length"]) == len(get.body)  # runs that have ended
    if "Link" in get.headers:
        assert head.headers["Link"] == get.headers["Link"]
    assert client.get(path).status == get.status


def test_head_of_a_stream_is_405(client: Http, seeded: Seeded) -> None:
    """A watch's HEAD would hold the call open until the run ends: refused."""
    reply = client.request("HEAD", f"/run/{seeded.parent}/watch")
    assert reply.status == 405 and reply.headers["Allow"] == "GET"
    assert client.get(f"/run/{seeded.parent}/status/").status == 200


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/nope", "/run/R1/unknown", "/run/R1/tasks/extra", "/", "//run"])
def test_unknown_path_is_404_status_json(client: Http, path: str) -> None:
    reply = client.get(path)
    assert reply.status == 404
    reply.error(NOT_FOUND)


# --- query parameters ---


def test_a_path_bound_field_is_the_paths_under_any_spelling(client: Http, seeded: Seeded) -> None:
    """?runId= (run_id's JSON name) must not turn the path's run into
    another: not for a read, and not for a delete."""
    run, other = seeded.parent, seeded.others[0]
    assert client.get(f"/run/{run}/?runId={other}").json()["id"] == run
    reply = client.request("DELETE", f"/run/R999999/?runId={other}&run_id={other}")
    assert reply.status == 404
    assert client.get(f"/run/{other}/").status == 200


@pytest.mark.parametrize(
    ("query", "ids"),
    [
        ("page=1.0&page_size=2", 2),  # pydantic's integers, as PySpur reads them
        ("page=%201&page_size=2&parent_only=YES", 2),
        ("page_size=2&cache=%FF%FE", 2),  # not UTF-8, in a parameter that is ignored
        ("pageSize=3", 3),  # the field's JSON name, as grpc-gateway reads it
    ],
)
def test_query_values_pyspur_reads(client: Http, seeded: Seeded, query: str, ids: int) -> None:
    reply = client.get(f"/run/?{query}")
    assert reply.status == 200, reply.body
    assert len(reply.json()) == ids


def test_one_field_under_two_spellings_is_given_twice(client: Http) -> None:
    reply = client.get("/run/?page_size=2&pageSize=3")
    assert reply.status == 400
    assert "given 2 times" in reply.error(INVALID_ARGUMENT)["message"]


def test_escaped_unreserved_characters_in_the_path(client: Http, seeded: Seeded) -> None:
    """RFC 3986 6.2.2.2: %73 is "s" wherever it is, as PySpur's server reads it."""
    run = seeded.parent
    assert client.get(f"/%72un/{run}/%73tatus/").json()["id"] == run
    assert client.get(f"/run/{run}/%74asks/").status == 200
    assert client.get(f"/run/{run}%2F/").status == 400  # a slash stays in its segment


@pytest.mark.slow
@pytest.mark.parametrize(
    ("query", "parameter", "says"),
    [
        ("page=abc", "page", "'abc' is not an integer"),
        ("page_size=1.5", "page_size", "not an integer"),
        ("page_size=99999999999", "page_size", "out of range"),
        ("page=1&page=2", "page", "given 2 times"),
        ("pageSize=x", "pageSize", "not an integer"),  # JSON names work too
        ("page_size=%FF", "page_size", "not valid UTF-8"),
    ],
)
def test_malformed_query_value_is_400_naming_the_parameter(
    client: Http, query: str, parameter: str, says: str
) -> None:
    reply = client.get(f"/run?{query}")
    assert reply.status == 400
    error = reply.error(INVALID_ARGUMENT)
    assert parameter in error["message"] and says in error["message"]
    (detail,) = error["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert detail["field_violations"][0]["field"] == parameter


def test_unknown_and_path_bound_query_parameters_are_ignored(client: Http, seeded: Seeded) -> None:
    """As grpc-gateway (and PySpur's FastAPI) do: a cache-buster or a
    parameter of a newer client does not break the call."""
    reply = client.get("/run?page_size=2&_=1700000000&bogus=x")
    assert reply.status == 200 and len(reply.json()) == 2
    assert len(client.get("/run?pageSize=3").json()) == 3  # JSON name
    bound = client.get(f"/run/{seeded.parent}?run_id={seeded.others[0]}")
    assert bound.json()["id"] == seeded.parent  # the path wins


def test_query_that_is_not_utf8_is_400(client: Http) -> None:
    reply = client.get("/run?page_token=%ff")
    assert reply.status == 400
    reply.error(INVALID_ARGUMENT)
    reply = client.get("/run/%ff")
    assert reply.status == 400
    reply.error(INVALID_ARGUMENT)


# --- errors from the service ---


def test_invalid_argument_is_400_with_bad_request_details(client: Http, seeded: Seeded) -> None:
    for path, field in [
        ("/run/X1", "run_id"),
        ("/run?page_size=101", "page_size"),
        (f"/run/{seeded.parent}/tasks?page_token=garbage", "page_token"),
    ]:
        reply = client.get(path)
        assert reply.status == 400, path
        error = reply.error(INVALID_ARGUMENT)
        (detail,) = error["details"]
        assert detail == {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "field_violations": [
                {"field": field, "description": detail["field_violations"][0]["description"]}
            ],
        }


@pytest.mark.slow
def test_not_found_is_404(client: Http, seeded: Seeded) -> None:
    for path in ("/run/R999999", "/run/R999999/tasks", "/run/R999999/children"):
        reply = client.get(path)
        assert reply.status == 404
        assert "R999999" in reply.error(NOT_FOUND)["message"]


@pytest.mark.slow
def test_failed_precondition_is_400(client: Http, seeded: Seeded, migrated_url: str) -> None:
    db = Database.from_url(migrated_url, pool_size=1)
    try:
        with db.write() as s:
            s.execute(
                text(
                    "CREATE TABLE messages (_intid INTEGER PRIMARY KEY, id VARCHAR, "
                    "run_id VARCHAR REFERENCES runs(id))"
                )
            )
            s.execute(
                text("INSERT INTO messages (_intid, id, run_id) VALUES (1, 'M1', :r)"),
                {"r": seeded.children[1]},
            )
        reply = client.request("DELETE", f"/run/{seeded.parent}")
        assert reply.status == 400
        assert "messages" in reply.error(FAILED_PRECONDITION)["message"]
        assert client.get(f"/run/{seeded.parent}").status == 200  # nothing deleted
    finally:
        db.dispose()


def test_unavailable_sqlite_is_503(tmp_path: Path) -> None:
    # A database file in a folder that does not exist cannot be opened.
    server = start_http_server(f"sqlite:///{tmp_path / 'gone' / 'runs.db'}")
    try:
        client = Http(server.http_port or 0)
        for path in ("/run", "/run/R1"):
            reply = client.get(path)
            assert reply.status == 503, reply.body
            reply.error(UNAVAILABLE)
    finally:
        server.stop(grace=1)


def test_postgres_going_away_is_503_then_back_to_200(postgres_url: str) -> None:
    migrate(postgres_url)
    run = seed_runs(postgres_url).parent
    name = make_url(postgres_url).database
    admin = create_engine(
        make_url(postgres_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    server = start_http_server(postgres_url)
    client = Http(server.http_port or 0)
    try:
        assert client.get(f"/run/{run}").status == 200
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            c.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
        reply = client.get(f"/run/{run}")
        assert reply.status == 503
        reply.error(UNAVAILABLE)
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        assert client.get(f"/run/{run}").status == 200
    finally:
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
        server.stop(grace=1)


# --- headers: deadline, request id, authorization ---


@pytest.mark.slow
def test_grpc_timeout_header_bounds_the_call(postgres_url: str) -> None:
    """A GetRun stuck behind a lock answers 504 DEADLINE_EXCEEDED when the
    header's deadline passes, not when the lock goes."""
    migrate(postgres_url)
    run = seed_runs(postgres_url).parent
    server = start_http_server(postgres_url)
    locker = create_engine(postgres_url)
    connection = locker.connect()
    try:
        client = Http(server.http_port or 0)
        transaction = connection.begin()
        connection.execute(text("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        reply = client.request("GET", f"/run/{run}", {"Grpc-Timeout": "800m"})
        waited = time.monotonic() - started
        assert reply.status == 504
        reply.error(DEADLINE_EXCEEDED)
        assert 0.7 < waited < 5, waited
        transaction.rollback()
        assert client.request("GET", f"/run/{run}", {"Grpc-Timeout": "10S"}).status == 200
    finally:
        connection.close()
        locker.dispose()
        server.stop(grace=1)


@pytest.mark.slow
def test_malformed_grpc_timeout_is_400(client: Http) -> None:
    for value in ("soon", "5", "123456789S", "1.5S", "-1S"):
        reply = client.request("GET", "/run", {"Grpc-Timeout": value})
        assert reply.status == 400, value
        assert "Grpc-Timeout" in reply.error(INVALID_ARGUMENT)["message"]


def test_request_id_goes_through_and_comes_back(client: Http) -> None:
    reply = client.request("GET", "/run", {"X-Request-Id": "req-42"})
    assert reply.status == 200
    assert reply.headers["X-Request-Id"] == "req-42"
    made = client.get("/run/R424242")  # an error answer carries one too
    assert len(made.headers["X-Request-Id"]) == 32


@pytest.mark.slow
def test_authorization_header_is_checked_like_grpc_metadata(
    migrated_url: str, seeded: Seeded, tmp_path: Path
) -> None:
    readers, admins = tmp_path / "readers", tmp_path / "admins"
    readers.write_text("reader-token\n")
    admins.write_text("admin-token\n")
    server = start_http_server(
        migrated_url, reader_tokens_file=str(readers), admin_tokens_file=str(admins)
    )
    client = Http(server.http_port or 0)
    try:
        anonymous = client.get(f"/run/{seeded.parent}")
        assert anonymous.status == 401
        assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
        anonymous.error(UNAUTHENTICATED)
        wrong = client.request("GET", "/run", {"Authorization": "Bearer nope"})
        assert wrong.status == 401
        reader = {"Authorization": "Bearer reader-token"}
        assert client.request("GET", f"/run/{seeded.parent}", reader).status == 200
        refused = client.request("DELETE", f"/run/{seeded.parent}", reader)
        assert refused.status == 403
        refused.error(PERMISSION_DENIED)
        admin = {"Authorization": "Bearer admin-token"}
        assert client.request("DELETE", f"/run/{seeded.parent}", admin).status == 204
    finally:
        server.stop(grace=1)


# --- life cycle ---


@pytest.mark.slow
def test_stop_lets_an_in_flight_request_finish(postgres_url: str) -> None:
    migrate(postgres_url)
    run = seed_runs(postgres_url).parent
    server = start_http_server(postgres_url)
    locker = create_engine(postgres_url)
    connection = locker.connect()
    result: dict[str, Any] = {}
    try:
        transaction = connection.begin()
        connection.execute(text("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE"))

        def call() -> None:
            result["status"] = Http(server.http_port or 0).get(f"/run/{run}").status

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.5)  # the request is in flight, blocked on the lock
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 10})
        stopper.start()
        time.sleep(0.5)
        assert stopper.is_alive(), "stop() returned with a request in flight"
        transaction.rollback()
        caller.join(timeout=10)
        stopper.join(timeout=15)
        assert result == {"status": 200}
        assert not stopper.is_alive()
    finally:
        connection.close()
        locker.dispose()


def test_http_port_has_the_grpc_ports_mutual_tls(
    migrated_url: str, seeded: Seeded, tmp_path: Path
) -> None:
    files = make_tls_files(tmp_path)
    client_cert, client_key = files.client.write(tmp_path, "client")
    stranger_cert, stranger_key = files.stranger.write(tmp_path, "stranger")
    server = start_http_server(
        migrated_url, tls_cert=files.cert, tls_key=files.key, tls_client_ca=files.ca
    )
    port = server.http_port or 0

    def get(cert: tuple[str, str] | None) -> int:
        context = ssl.create_default_context(cadata=files.ca_pem.decode())
        if cert is not None:
            context.load_cert_chain(*cert)
        connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
        try:
            connection.request("GET", f"/run/{seeded.parent}")
            return connection.getresponse().status
        finally:
            connection.close()

    try:
        assert get((client_cert, client_key)) == 200
        for refused in (None, (stranger_cert, stranger_key)):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                get(refused)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            Http(port).get("/run")  # plaintext HTTP on the TLS port
    finally:
        server.stop(grace=1)
