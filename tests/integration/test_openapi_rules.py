"""/openapi.json is exactly as strict as the server about what a client sends:
each request field's rule (api/rules.py) is stated on its parameter (ids'
patterns and lengths, page numbers' and sizes' ranges and defaults, only the
statuses a filter takes), and every bound the document states is probed on
a real server over HTTP with values just inside (accepted) and just outside
(400 naming the parameter). Each probe is first checked against the
document's own schema, so a probe that no longer straddles the stated bound
fails here, as does a stated bound that no probe covers."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import jsonschema_rs
import pytest
import schemathesis
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from http_client import Http, Reply, Seeded
from spur.runs.v1 import run_pb2

pytest_plugins = ["http_fixtures"]

RUN_ID = {"type": "string", "pattern": r"^(?:R(?:0|-?[1-9][0-9]{0,18}))$", "maxLength": 21}
# (minimum, maximum, default) of each integer query parameter, by seed path
# (the /v1 face's are the same).
RANGES = {
    ("/run", "page"): (1, 2**31 - 1, 1),
    ("/run", "page_size"): (1, 100, 10),
    ("/run/{run_id}/tasks", "page_size"): (1, 1000, 1000),
    ("/run/{run_id}/children", "page_size"): (1, 100, 100),
}

# String parameters with a stated pattern or length: values just inside
# (ids of no run: 404, not 400) and just outside.
TEXT_PROBES: dict[str, tuple[list[str], list[str]]] = {
    "run_id": (
        ["R0", "R-1", "R" + "9" * 19, "R-" + "9" * 19],
        ["R", "R-0", "R01", "X1", "r1", "R1 ", "R1\n", "R" + "1" * 20, "R-" + "1" * 20],
    ),
    "workflow_id": (
        ["", "S1", "S" + "9" * 19],  # empty: the filter unset
        ["S0", "S-1", "S01", "R1", "S1 ", "S" + "1" * 20],
    ),
    "run_type": (
        ["", "batch", "x" * 100, "é" * 100],  # characters, not bytes
        ["x" * 101, "é" * 101, "a\tb", "a\nb", "\x7f"],
    ),
}
# The proto enum of each enum parameter: the values the document leaves out
# (and one past the last) must be refused.
ENUMS: dict[str, EnumTypeWrapper] = {"status": run_pb2.Run.Status, "view": run_pb2.RunView}


@pytest.fixture
def document(client: Http) -> dict[str, Any]:
    reply = client.get("/openapi.json")
    assert reply.status == 200
    return dict(reply.json())


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (verb, path, operation)
        for path, item in document["paths"].items()
        for verb, operation in item.items()
    ]


def _by_name(operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in operation.get("parameters", [])}


def test_document_states_the_servers_rules(document: dict[str, Any]) -> None:
    # Valid OpenAPI 3.1 (schemathesis' check: the meta-schema, by jsonschema-rs).
    schemathesis.openapi.from_dict(document).validate()
    seen_ranges = set()
    for _, path, operation in _operations(document):
        parameters = _by_name(operation)
        if "{run_id}" in path:
            assert parameters["run_id"]["schema"] == RUN_ID, path
        for name, parameter in parameters.items():
            schema = parameter["schema"]
            if schema.get("type") == "integer":
                # A page number or size: the server's range and default, not int32's.
                key = (path.replace("/v1/runs", "/run"), name)  # either face
                low, high, default = RANGES[key]
                assert schema == {
                    "type": "integer",
                    "format": "int32",
                    "minimum": low,
                    "maximum": high,
                    "default": default,
                }, (path, name)
                seen_ranges.add(key)
    assert seen_ranges == set(RANGES)
    listed = _by_name(document["paths"]["/run"]["get"])
    names, numbers = listed["status"]["schema"]["items"]["anyOf"]
    # STATUS_UNSPECIFIED, which no run has, is refused as a filter...
    assert names["enum"] == ["PENDING", "RUNNING", "COMPLETED", "FAILED", "PAUSED", "CANCELED"]
    assert numbers["enum"] == [1, 2, 3, 4, 5, 6]
    # ...but a view may be unset by name (the full view), as the server takes it.
    assert listed["view"]["schema"]["anyOf"][0]["enum"] == list(run_pb2.RunView.keys())
    assert listed["workflow_id"]["schema"]["pattern"] == r"^(?:(?:S[1-9][0-9]{0,18})?)$"
    assert listed["workflow_id"]["schema"]["maxLength"] == 20
    assert listed["run_type"]["schema"]["maxLength"] == 100
    # A response still spells the proto's whole enum (the request rules narrow
    # what a client sends, not the message a client reads).
    schemas = document["components"]["schemas"]
    for name in ("spur.runs.v1.Run", "spur.runs.v1.Run-pyspur"):
        assert schemas[name]["properties"]["status"]["enum"] == list(run_pb2.Run.Status.keys())


def _probes(parameter: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """Values just inside and just outside what `parameter` states."""
    schema = parameter["schema"]
    item = schema.get("items", schema)
    name = parameter["name"]
    if "anyOf" in item:  # an enum, by name or number
        names, numbers = (option["enum"] for option in item["anyOf"])
        enum = ENUMS[name]
        left_out = [k for k in enum.keys() if k not in names]
        left_out += [v for v in enum.values() if v not in numbers]
        return names + numbers, [*left_out, max(enum.values()) + 1, "NO_SUCH_VALUE"]
    if item.get("type") == "integer":
        low, high = item["minimum"], item["maximum"]
        return [low, high], [low - 1, high + 1]
    if "pattern" in item or "maxLength" in item or "enum" in item:
        return TEXT_PROBES[name]
    return [], []


def _send(client: Http, verb: str, path: str, run_id: str, query: str = "") -> Reply:
    target = path.replace("{run_id}", quote(run_id, safe=""))
    return client.request(verb.upper(), target + (f"?{query}" if query else ""))


def _refused(reply: Reply, name: str, what: str) -> None:
    assert reply.status == 400, what
    (detail,) = reply.error(3)["details"]
    assert detail["field_violations"][0]["field"] == name, what


def test_each_stated_rule_is_the_servers(
    document: dict[str, Any], client: Http, seeded: Seeded
) -> None:
    probed = set()
    for verb, path, operation in _operations(document):
        for name, parameter in _by_name(operation).items():
            inside, outside = _probes(parameter)
            if not inside:
                continue
            probed.add(name)
            schema = parameter["schema"].get("items", parameter["schema"])
            validator = jsonschema_rs.validator_for(schema)
            for value in inside + outside:
                what = f"{verb.upper()} {path} {name}={value!r}"
                # The probe is where it means to be, by the document's schema...
                assert validator.is_valid(value) == (value in inside), what
                # ...and the server agrees.
                if parameter["in"] == "path":
                    reply = _send(client, verb, path, str(value))
                    if value in inside:  # an id no run has
                        assert reply.status == 404 and reply.error(5), what
                    else:
                        _refused(reply, name, what)
                    continue
                query = f"{name}={quote(str(value), safe='')}"
                reply = _send(client, verb, path, seeded.parent, query)
                if value in inside:
                    assert reply.status == 200, (what, reply.body[:300])
                else:
                    _refused(reply, name, what)
            default = parameter["schema"].get("default")
            if default is not None:
                # Unset means the stated default.
                unset = _send(client, verb, path, seeded.parent)
                given = _send(client, verb, path, seeded.parent, f"{name}={default}")
                assert unset.status == given.status == 200
                assert unset.json() == given.json(), (path, name)
    assert probed == {"run_id", "page", "page_size", "workflow_id", "status", "run_type", "view"}
