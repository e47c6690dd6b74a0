"""Routes from HttpRules and HTTP requests -> request messages, on a test
service (gateway_testproto) with what RunService's rules do not use:
`**`, nested and multi-segment variables, custom verbs and methods,
additional bindings, bodies, every kind of query value."""

from __future__ import annotations

from typing import Any

import pytest
from google.api import http_pb2
from google.protobuf import json_format

from gateway_testproto import load
from spur.runs.v1 import run_service_pb2
from spur_runs.errors import InvalidArgument
from spur_runs.gateway.routes import Match, Route, RouteError, Router, parse_template, routes_for
from spur_runs.gateway.transcode import RequestBuilder

T = load()


@pytest.fixture(scope="module")
def router() -> Router[Route]:
    return Router([(route, route) for route in routes_for([T.Things])])


def match(router: Router[Route], verb: str, path: str) -> Match[Route]:
    found = router.match(verb, path)
    assert isinstance(found, Match), (verb, path, found)
    return found


def build(router: Router[Route], verb: str, target: str, body: bytes = b"") -> Any:
    path, _, query = target.partition("?")
    found = match(router, verb, path)
    return RequestBuilder(found.payload).build(found.variables, query, body)


# --- routes ---


def test_routes_come_from_every_rule_and_binding() -> None:
    routes = routes_for([T.Things])
    assert sorted((r.verb, r.template.text, r.method.name) for r in routes) == sorted(
        [
            ("GET", "/v1/{name=things/*}", "Get"),
            ("GET", "/v1/things:search", "Get"),
            ("POST", "/v1/things", "Create"),
            ("PATCH", "/v1/{inner.name=things/*/parts/**}", "Update"),
            ("LOCK", "/v1/{name}:lock", "Lock"),
            ("GET", "/v1/tags/{n}", "Tags"),
        ]
    )  # Unrouted has no rule: no route


def test_run_service_routes() -> None:
    service = run_service_pb2.DESCRIPTOR.services_by_name["RunService"]
    assert {(r.verb, r.template.openapi_path) for r in routes_for([service])} == {
        ("GET", "/run/{run_id}"),
        ("GET", "/run/{run_id}/status"),
        ("GET", "/run"),
        ("GET", "/run/{run_id}/tasks"),
        ("DELETE", "/run/{run_id}"),
        ("GET", "/run/{run_id}/children"),
        ("GET", "/run/{run_id}/watch"),  # server streaming: NDJSON or server-sent events
        ("GET", "/v1/runs/{run_id}"),
        ("GET", "/v1/runs"),
        ("GET", "/v1/runs/{run_id}/tasks"),
        ("DELETE", "/v1/runs/{run_id}"),
        ("GET", "/v1/runs/{run_id}/children"),
        ("GET", "/v1/runs/{run_id}:watch"),
        ("GET", "/v1/runs/{run_id}:status"),
    }
    streaming = [r.method.name for r in routes_for([service]) if r.streaming]
    assert streaming == ["WatchRun", "WatchRun"]  # at its two paths


def test_paths_match_their_templates(router: Router[Route]) -> None:
    found = match(router, "GET", "/v1/things/abc")
    assert (found.payload.method.name, found.variables) == ("Get", {("name",): "things/abc"})
    found = match(router, "GET", "/v1/things:search")  # the literal binding, not name=things:...
    assert (found.payload.template.text, found.variables) == ("/v1/things:search", {})
    found = match(router, "PATCH", "/v1/things/t1/parts/a/b/c/")
    assert found.variables == {("inner", "name"): "things/t1/parts/a/b/c"}
    found = match(router, "LOCK", "/v1/x%20y:lock")
    assert (found.payload.method.name, found.variables) == ("Lock", {("name",): "x y"})


def test_escaped_slashes(router: Router[Route]) -> None:
    # One segment: %2F is part of the value. Several: it stays escaped.
    assert match(router, "LOCK", "/v1/a%2Fb:lock").variables == {("name",): "a/b"}
    assert match(router, "GET", "/v1/things/a%2Fb").variables == {("name",): "things/a%2Fb"}


def test_no_match_and_wrong_verb(router: Router[Route]) -> None:
    assert router.match("GET", "/v1/things/a/b") is None
    assert router.match("GET", "/v2/things/a") is None
    assert router.match("GET", "/v1/things") == ["POST"]
    assert router.match("DELETE", "/v1/things/a") == ["GET"]
    with pytest.raises(UnicodeDecodeError):
        router.match("LOCK", "/v1/%ff:lock")


@pytest.mark.parametrize(
    "template",
    ["run/{id}", "/run/{id", "/run/{a.}", "/run/{a={b}}", "/run/ x", "/v1/{name=**}:bad verb"],
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(RouteError):
        parse_template(template)


def test_rules_naming_missing_or_unusable_fields_are_refused() -> None:
    get = T.Things.methods_by_name["Get"]
    for rule in (
        http_pb2.HttpRule(get="/v1/{nope}"),
        http_pb2.HttpRule(get="/v1/{inner}"),  # a message cannot be a path variable
        http_pb2.HttpRule(get="/v1/{tags}"),  # nor a repeated field
        http_pb2.HttpRule(post="/v1/x", body="nope"),
    ):
        from spur_runs.gateway.routes import _route

        with pytest.raises(RouteError):
            _route(get, rule)


# --- query parameters ---


def test_query_values_of_every_kind(router: Router[Route]) -> None:
    request = build(
        router,
        "GET",
        "/v1/things/t1?tags=a&tags=b%20c&inner.name=n&inner.big=-5&color=GREEN&colors=1"
        "&colors=RED&flag=T&raw=_-8&ratio=1e3&since=2026-01-02T03:04:05.5Z&limit=7"
        "&labels[k]=v&big=18446744073709551615&mask=a.b,c&n=%2B4",
    )
    assert json_format.MessageToDict(request, preserving_proto_field_name=True) == {
        "name": "things/t1",
        "tags": ["a", "b c"],
        "inner": {"name": "n", "big": "-5"},
        "color": "GREEN",
        "colors": ["RED", "RED"],
        "flag": True,
        "raw": "/+8=",  # URL-safe "_-" are "/+"
        "ratio": 1000.0,
        "since": "2026-01-02T03:04:05.500Z",
        "limit": 7,
        "labels": {"k": "v"},
        "big": "18446744073709551615",
        "mask": "a.b,c",
        "n": 4,
    }


def test_json_names_work_and_unknown_names_are_ignored(router: Router[Route]) -> None:
    request = build(router, "GET", "/v1/things:search?name=x&cacheBuster=1&inner.nope=2&a.b.c=3")
    assert request.name == "x" and not request.HasField("inner")


@pytest.mark.parametrize(
    ("query", "flag", "n"),
    [
        ("flag=YES&n=%204", True, 4),
        ("flag=off&n=4.00", False, 4),
        ("flag=n&n=-0", False, 0),
        ("flag=1&n=1_000", True, 1000),  # Python's digit separator, as pydantic reads it
        ("flag=on&n=%2B1_0.0", True, 10),
    ],
)
def test_pydantics_spellings_of_booleans_and_integers(
    router: Router[Route], query: str, flag: bool, n: int
) -> None:
    """What PySpur's FastAPI (pydantic, lax) reads as a bool or an int is
    read so here too, beside strconv's spellings (grpc-gateway's)."""
    request = build(router, "GET", f"/v1/things:search?{query}")
    assert (request.flag, request.n) == (flag, n)


def test_bytes_that_are_not_utf8_fail_only_a_parameter_that_is_read(
    router: Router[Route],
) -> None:
    assert build(router, "GET", "/v1/things:search?cacheBuster=%FF&n=3").n == 3
    assert build(router, "GET", "/v1/things:search?%FF=1&n%FF.x=2&n=4").n == 4  # keys too
    with pytest.raises(InvalidArgument) as raised:
        build(router, "GET", "/v1/things:search?tags=%FF")
    assert raised.value.field == "tags"


def test_path_bound_fields_ignore_the_query(router: Router[Route]) -> None:
    assert build(router, "GET", "/v1/things/t1?name=other").name == "things/t1"


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("n=abc", "n"),
        ("n=1__000", "n"),
        ("n=_1", "n"),
        ("n=4.", "n"),  # pydantic reads "4.0", not "4."
        ("flag=%20true", "flag"),  # no spaces around a boolean (pydantic, strconv)
        ("flag=true%09", "flag"),
        ("n=4%1C", "n"),  # Python's str.strip takes \x1c-\x1f for spaces; pydantic does not
        ("n=%1F4", "n"),
        ("n=2147483648", "n"),
        ("big=-1", "big"),
        ("flag=maybe", "flag"),
        ("n=4.5", "n"),
        ("n=" + "9" * 5000, "n"),  # past int()'s digit limit: not a ValueError's 500
        ("n=1e3", "n"),
        ("color=PURPLE", "color"),
        ("color=9", "color"),
        ("color=" + "1" * 5000, "color"),
        ("ratio=1,5", "ratio"),
        ("raw=%%%", "raw"),
        ("since=yesterday", "since"),
        ("limit=x", "limit"),
        ("n=1&n=2", "n"),
        ("tags.x=1", "tags.x"),  # a repeated field has no fields
        ("labels=x", "labels"),  # a map takes labels[key]=value
        ("blob=%7B%7D", "blob"),  # Struct: JSON belongs in a body
        ("inner=x", "inner"),
    ],
)
def test_bad_query_values_name_the_parameter(
    router: Router[Route], query: str, parameter: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        build(router, "GET", f"/v1/things:search?{query}")
    assert raised.value.field == parameter


def test_an_unknown_enum_name_is_told_the_names_to_use(router: Router[Route]) -> None:
    with pytest.raises(InvalidArgument) as raised:
        build(router, "GET", "/v1/things:search?color=PURPLE")
    assert raised.value.description == "'PURPLE' is not one of RED, GREEN"


# --- bodies ---


def test_body_star_is_the_request_and_the_query_is_not_read(router: Router[Route]) -> None:
    request = build(
        router, "POST", "/v1/things?n=9", b'{"name": "x", "n": 3, "inner": {"big": "7"}, "zz": 1}'
    )
    assert (request.name, request.n, request.inner.big) == ("x", 3, 7)  # unknown "zz" ignored
    assert build(router, "POST", "/v1/things", b"").name == ""  # no body: an empty request


def test_body_field_then_path_then_query(router: Router[Route]) -> None:
    request = build(
        router,
        "PATCH",
        "/v1/things/t/parts/p?name=q&inner.big=1",
        b'{"name": "from-body", "big": "5", "children": [{"name": "c"}]}',
    )
    # The path wins over the body; the query cannot touch the body's field.
    assert request.inner.name == "things/t/parts/p"
    assert (request.inner.big, request.inner.children[0].name, request.name) == (5, "c", "q")


@pytest.mark.parametrize("body", [b"{", b'{"n": "x"}', b"\xff", b'{"tags": 5}'])
def test_bad_bodies_are_invalid_argument(router: Router[Route], body: bytes) -> None:
    with pytest.raises(InvalidArgument) as raised:
        build(router, "POST", "/v1/things", body)
    assert raised.value.field == "body"
