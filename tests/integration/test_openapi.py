"""GET /openapi.json: generated from the descriptors that make the routes,
checked against the live server (every documented operation answers as
documented, every other method of a documented path is 405), described with
the protos' comments; and schemathesis, run against it, finds no 5xx and no
response that breaks the schema."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from gateway_testproto import load
from http_client import Http, Seeded
from spur.runs.v1 import run_pb2, run_service_pb2
from spur_runs.gateway.comments import comments_of, load_comments
from spur_runs.gateway.openapi import build_openapi
from spur_runs.gateway.routes import routes_for
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database
from spur_runs.store.models import Run, RunStatus
from tools import tool

pytest_plugins = ["http_fixtures"]

VERBS = {"GET", "PUT", "POST", "DELETE", "PATCH"}


@pytest.fixture
def document(client: Http) -> dict[str, Any]:
    reply = client.get("/openapi.json")
    assert reply.status == 200
    return dict(reply.json())


@pytest.mark.slow
def test_document_matches_the_live_routes(
    document: dict[str, Any], client: Http, http_server: RunsServer, seeded: Seeded
) -> None:
    assert document["openapi"] == "3.1.0"
    documented = {(verb.upper(), path) for path, item in document["paths"].items() for verb in item}
    assert documented == {
        (r.verb, r.template.openapi_path) for r in routes_for(http_server.services)
    } | {("GET", "/healthz"), ("GET", "/readyz")}  # (gateway/probes.py)
    # Every documented operation answers with a documented status...
    deletable = iter(seeded.others)
    for verb, path in sorted(documented, key=lambda p: p[0] == "DELETE"):  # DELETE last
        operation = document["paths"][path][verb.lower()]
        run = next(deletable) if verb == "DELETE" else seeded.parent
        reply = client.request(verb, path.replace("{run_id}", run))
        assert str(reply.status) in operation["responses"], (verb, path, reply.status)
        content = operation["responses"].get("200", {}).get("content", {})
        if reply.status == 200 and "application/x-ndjson" in content:  # a stream (WatchRun)
            assert reply.headers["Content-Type"] == "application/x-ndjson"
            line_schema = content["application/x-ndjson"]["schema"]
            lines = [json.loads(line) for line in reply.body.splitlines()]
            assert lines and all(set(line) <= set(line_schema["properties"]) for line in lines)
        elif reply.status == 200:
            schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
            if schema.get("type") == "array":  # a seed path's bare list
                items = reply.json()
                assert isinstance(items, list) and items, (verb, path)
                assert all(
                    set(item) == set(_properties(document, schema["items"])) for item in items
                )
            else:
                assert set(reply.json()) == set(_properties(document, schema))
    # ...and every other method of a documented path is 405 with what it allows.
    for path, item in document["paths"].items():
        live = path.replace("{run_id}", seeded.parent)
        for verb in VERBS - {v.upper() for v in item}:
            reply = client.request(verb, live)
            assert reply.status == 405, (verb, path)
            documented = {v.upper() for v in item}
            # HEAD comes with GET (served as GET without the body).
            assert set(reply.headers["Allow"].split(", ")) == documented | (
                {"HEAD"} if "GET" in documented else set()
            )


def _properties(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema["$ref"]
    return dict(document["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"])


def test_parameters_are_the_request_fields(document: dict[str, Any]) -> None:
    def parameters(path: str, verb: str) -> set[tuple[str, str]]:
        return {(p["name"], p["in"]) for p in document["paths"][path][verb]["parameters"]}

    assert parameters("/run", "get") == {
        ("page", "query"),
        ("page_size", "query"),
        ("page_token", "query"),
        ("workflow_id", "query"),
        ("status", "query"),
        ("run_type", "query"),
        ("parent_only", "query"),
        ("start_time_after", "query"),
        ("start_time_before", "query"),
        ("view", "query"),
        ("include_total_size", "query"),
    }
    assert parameters("/run/{run_id}", "get") == {("run_id", "path"), ("view", "query")}
    assert parameters("/run/{run_id}/tasks", "get") == {
        ("run_id", "path"),
        ("page_size", "query"),
        ("page_token", "query"),
    }
    assert parameters("/run/{run_id}/children", "get") == {
        ("run_id", "path"),
        ("page_size", "query"),
        ("page_token", "query"),
        ("view", "query"),
    }
    schemas = {p["name"]: p for p in document["paths"]["/run"]["get"]["parameters"]}
    # Repeated: an array, one `status=` per value; enums by name or number
    # (as grpc-gateway reads them), those the filter takes
    # (test_openapi_rules.py); a Timestamp as an RFC 3339 string.
    status = schemas["status"]
    assert status["schema"]["type"] == "array" and status["explode"] is True
    names, numbers = status["schema"]["items"]["anyOf"]
    assert names == {"type": "string", "enum": list(run_pb2.Run.Status.keys())[1:]}
    assert numbers == {"type": "integer", "enum": list(run_pb2.Run.Status.values())[1:]}
    assert schemas["view"]["schema"]["anyOf"][0]["enum"] == list(run_pb2.RunView.keys())
    for name in ("start_time_after", "start_time_before"):
        assert schemas[name]["schema"] == {"type": "string", "format": "date-time"}
    for name in ("parent_only", "include_total_size"):
        assert schemas[name]["schema"] == {"type": "boolean"}
    assert schemas["workflow_id"]["schema"]["type"] == "string"
    assert schemas["start_time_after"]["description"].startswith("Only runs that started at or")
    total = document["components"]["schemas"]["spur.runs.v1.ListRunsResponse"]["properties"]
    assert total["total_size"]["type"] == ["integer", "null"]
    page_size = next(
        p for p in document["paths"]["/run"]["get"]["parameters"] if p["name"] == "page_size"
    )
    assert page_size["schema"]["type"] == "integer"
    assert page_size["description"] == "Runs per page, 1 to 100; 10 when unset."
    delete = document["paths"]["/run/{run_id}"]["delete"]["responses"]
    assert set(delete) == {"204", "default"}


@pytest.mark.slow
def test_descriptions_are_the_proto_comments(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    run = schemas["spur.runs.v1.Run"]
    assert run["description"] == "One execution of a workflow."
    assert run["properties"]["id"]["description"].startswith('Public id of the run, "R" followed')
    assert run["properties"]["status"]["enum"][0] == "STATUS_UNSPECIFIED"
    assert run["properties"]["start_time"]["type"] == ["string", "null"]
    assert run["properties"]["start_time"]["format"] == "date-time"
    assert set(run["required"]) == set(run["properties"])
    get_run = document["paths"]["/run/{run_id}"]["get"]
    assert get_run["summary"] == "Returns one run with its workflow version and tasks."
    assert get_run["description"] == (
        "Returns one run with its workflow version and tasks. NOT_FOUND when no run has that id."
    )
    assert get_run["operationId"] == "RunService_GetRun2"  # an additional binding
    assert document["paths"]["/v1/runs/{run_id}"]["get"]["operationId"] == "RunService_GetRun"
    operations = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(operations) == len(set(operations))
    # A bare list documents the Link header that carries its next page.
    listed = document["paths"]["/run"]["get"]["responses"]["200"]
    assert listed["content"]["application/json"]["schema"]["type"] == "array"
    assert 'rel="next"' in listed["headers"]["Link"]["description"]
    assert "headers" not in document["paths"]["/v1/runs"]["get"]["responses"]["200"]
    assert schemas["google.rpc.Status"]["required"] == ["code", "message", "details"]


def test_summaries_are_whole_sentences_and_descriptions_whole_comments(
    document: dict[str, Any],
) -> None:
    comments = load_comments()
    for path, item in document["paths"].items():
        for verb, operation in item.items():
            service, _, method = operation["operationId"].partition("_")
            if not method:
                continue  # the probes (probes.py), no RPC's
            comment = comments[f"spur.runs.v1.{service}.{method.rstrip('0123456789')}"]
            summary, description = operation["summary"], operation["description"]
            # The comment's first sentence, whole, though the proto's lines
            # wrap inside it; the description, all of the comment.
            assert "\n" not in summary and summary.endswith("."), (verb, path, summary)
            assert description.startswith(summary), (verb, path)
            assert description.split() == comment.split(), (verb, path)
            assert "\n" not in description, (verb, path)  # one paragraph, joined
    children = document["paths"]["/run/{run_id}/children"]["get"]["summary"]
    assert children == (
        "Returns the runs started by a run (its direct children), newest first like ListRuns, "
        "one page at a time."
    )
    # A sentence does not end at "e.g."; a paragraph break stays one.
    routes = routes_for([run_service_pb2.DESCRIPTOR.services_by_name["RunService"]])
    comment = "Reads a run, e.g. R42, with\nits tasks. Then more.\n\nA second paragraph."
    built = build_openapi(routes, {"spur.runs.v1.RunService.GetRun": comment}, "t", "1")
    get_run = built["paths"]["/v1/runs/{run_id}"]["get"]
    assert get_run["summary"] == "Reads a run, e.g. R42, with its tasks."
    assert get_run["description"] == (
        "Reads a run, e.g. R42, with its tasks. Then more.\n\nA second paragraph."
    )


def test_bodies_custom_verbs_and_nesting_are_documented() -> None:
    test = load()
    routes = routes_for([test.Things])
    document = build_openapi(routes, comments_of(test.source), "gwtest.Things", "1")
    paths = document["paths"]
    assert set(paths) == {
        "/v1/{name}",
        "/v1/things:search",
        "/v1/things",
        "/v1/{inner.name}",
        "/v1/{name}:lock",
        "/v1/tags/{n}",
    }
    create = paths["/v1/things"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/gwtest.RequestInput"
    }
    assert create["parameters"] == []  # body "*": no query
    update = paths["/v1/{inner.name}"]["patch"]
    assert {p["name"] for p in update["parameters"]} >= {"inner.name", "name", "tags", "n"}
    assert not any(
        p["name"].startswith("inner.") and p["in"] == "query" for p in update["parameters"]
    )
    assert "lock" in paths["/v1/{name}:lock"]  # a custom method is an operation too
    tags = paths["/v1/tags/{n}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert tags["schema"]["type"] == "array"  # response_body: the field's own schema
    schemas = document["components"]["schemas"]
    assert "required" not in schemas["gwtest.RequestInput"]  # a body may leave fields out
    assert schemas["gwtest.Inner"]["properties"]["name"]["description"] == "The name of the part."
    assert schemas["gwtest.Inner"]["properties"]["children"]["items"] == {
        "$ref": "#/components/schemas/gwtest.Inner"  # a recursive type refers to itself
    }
    everything = schemas["gwtest.Everything"]["properties"]
    assert everything["i64"]["type"] == "string" and everything["opt"]["type"] == ["string", "null"]
    assert everything["m64"]["additionalProperties"]["format"] == "int64"
    assert "a" not in schemas["gwtest.Everything"]["required"]  # oneof members may be absent


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    http_server: RunsServer, seeded: Seeded, migrated_url: str, tmp_path: Path
) -> None:
    # A watch of a run that has not ended streams until it ends, and
    # schemathesis reads whole answers (each a 10 s timeout): now that the
    # document states what a run id is, schemathesis sends the seeded running
    # runs' ids. Ended, each watch answers one message.
    ended = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED)
    db = Database.from_url(migrated_url, pool_size=1)
    try:
        with db.write() as conn:
            conn.execute(
                update(Run).where(Run.status.not_in(ended)).values(status=RunStatus.CANCELED)
            )
    finally:
        db.dispose()
    checks = [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "unsupported_method",
        "allow_header_conformance",
    ]
    result = subprocess.run(
        [
            tool("st"),
            "run",
            f"http://127.0.0.1:{http_server.http_port}/openapi.json",
            "--checks",
            ",".join(checks),
            "--max-examples",
            "30",
            "--seed",
            "1",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
