"""The OpenAPI 3.1 document of the gateway, built from the same routes and
descriptors that serve the requests, so the two cannot drift apart.

Schemas describe the JSON that transcode.py writes: proto field names, every
field present, fields with presence nullable, int64 as strings, enums by
name, well-known types in their JSON forms. Descriptions are the comments of
the protos (comments.py).

What a client sends is described as strictly as the server checks it: the
rules of api/rules.py (patterns, lengths, ranges and defaults, the enum
values a field takes) narrow the schemas of request fields, so that a
client generated from the document knows what is refused with 400.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from ..api.rules import Choice, Count, Rule, Text
from .links import pages_by_link
from .routes import Route
from .transcode import QUERY_MESSAGES

Schema = dict[str, Any]

STATUS_REF = "#/components/schemas/google.rpc.Status"

_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
# int64 and uint64 are JSON strings (numbers would lose precision in JavaScript).
_INT64 = {"type": "string", "format": "int64", "pattern": r"^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": r"^[0-9]+$"}

_SCALARS: dict[int, Schema] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
}

_DURATION = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"}
# JSON forms of the well-known types (the proto3 JSON mapping).
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": _DURATION,
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
    "google.protobuf.DoubleValue": _SCALARS[FieldDescriptor.TYPE_DOUBLE],
    "google.protobuf.FloatValue": _SCALARS[FieldDescriptor.TYPE_FLOAT],
    "google.protobuf.Int64Value": _INT64,
    "google.protobuf.UInt64Value": _UINT64,
    "google.protobuf.Int32Value": _INT32,
    "google.protobuf.UInt32Value": _UINT32,
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "format": "byte"},
}


# A time in PySpur's bodies (gateway/render.py's Renderer(pyspur=True)): the
# naive UTC text pydantic writes, which "date-time" (RFC 3339) refuses.
_NAIVE_TIME: Schema = {
    "type": "string",
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{6})?$",
    "description": "UTC, written without an offset, as PySpur writes its times.",
}
# The suffix of the schemas of PySpur's bodies, where they differ from proto3's.
_PYSPUR_SUFFIX = "-pyspur"


def _nullable(schema: Schema) -> Schema:
    if "$ref" in schema or "type" not in schema:
        return {"anyOf": [schema, {"type": "null"}]} if schema else {}
    kind = schema["type"]
    return {**schema, "type": [kind, "null"] if isinstance(kind, str) else [*kind, "null"]}


def _in_real_oneof(field: FieldDescriptor) -> bool:
    oneof = field.containing_oneof
    # A proto3 `optional` sits alone in a synthetic oneof named "_<field>".
    return oneof is not None and not (len(oneof.fields) == 1 and oneof.name == "_" + field.name)


class _Builder:
    """`pyspur`: the schemas of PySpur's bodies (an HttpRule's
    response_body), named with _PYSPUR_SUFFIX, whose times are _NAIVE_TIME;
    `schemas` is shared with the builder of the other bodies."""

    def __init__(
        self,
        comments: Mapping[str, str],
        schemas: dict[str, Schema] | None = None,
        *,
        pyspur: bool = False,
        rules: Mapping[str, Rule] | None = None,
    ) -> None:
        self.comments = comments
        self.schemas: dict[str, Schema] = {} if schemas is None else schemas
        self.pyspur = pyspur
        # Request field (full name) -> what the server accepts of it.
        self.rules: Mapping[str, Rule] = rules or {}

    def describe(self, schema: Schema, full_name: str) -> Schema:
        text = self.comments.get(full_name)
        return {**schema, "description": text} if text else schema

    # --- JSON bodies ---

    def message(self, descriptor: Descriptor, for_input: bool = False) -> Schema:
        """A reference to the schema of a message (built once). Responses
        carry every field (all `required`, nothing else allowed); a request
        body may leave any field out and, as grpc-gateway, have unknown ones,
        so it gets a schema of its own, "<name>Input"."""
        if self.pyspur and descriptor.full_name == "google.protobuf.Timestamp":
            return dict(_NAIVE_TIME)
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        name = descriptor.full_name + ("Input" if for_input else "")
        if self.pyspur:
            name += _PYSPUR_SUFFIX
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursive types refer to it
            schema: Schema = {
                "type": "object",
                "properties": {f.name: self.field(f, for_input) for f in descriptor.fields},
            }
            if not for_input:
                # transcode.py emits every field but the members of a oneof.
                schema["required"] = [f.name for f in descriptor.fields if not _in_real_oneof(f)]
                schema["additionalProperties"] = False
            self.schemas[name] = self.describe(schema, descriptor.full_name)
        return {"$ref": f"#/components/schemas/{name}"}

    def value(self, field: FieldDescriptor, for_input: bool = False) -> Schema:
        """The schema of one value of `field`; `for_input`: as a client
        sends it, narrowed by the field's rule."""
        if field.message_type is not None:
            return self.message(field.message_type, for_input)
        rule = self.rules.get(field.full_name) if for_input else None
        if field.enum_type is not None:
            values = field.enum_type.values
            if isinstance(rule, Choice):
                values = [v for v in values if v.number in rule.numbers]
            names: Schema = {"type": "string", "enum": [v.name for v in values]}
            if not for_input:
                # transcode.py writes names. The whole enum, a response's
                # values being what the server writes, not what it takes.
                return names
            # What a client sends may be the name or the number, as
            # grpc-gateway (query parameters) and proto3 JSON (bodies) accept.
            return {"anyOf": [names, {"type": "integer", "enum": [v.number for v in values]}]}
        return _narrowed(dict(_SCALARS[field.type]), rule)

    def field(self, field: FieldDescriptor, for_input: bool = False) -> Schema:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            schema: Schema = {
                "type": "object",
                "additionalProperties": self.value(entry.fields_by_name["value"], for_input),
            }
        elif field.is_repeated:
            schema = {"type": "array", "items": self.value(field, for_input)}
        else:
            schema = self.value(field, for_input)
            if field.has_presence:
                schema = _nullable(schema)
        return self.describe(schema, field.full_name)

    # --- query parameters ---

    def parameters(self, route: Route) -> list[Schema]:
        request = route.method.input_type
        found: list[Schema] = []
        for variable in route.template.variables:
            field = _resolve(request, variable.field_path)
            found.append(
                self.describe(
                    {
                        "name": ".".join(variable.field_path),
                        "in": "path",
                        "required": True,
                        "schema": self.value(field, for_input=True),
                    },
                    field.full_name,
                )
            )
        if route.query_allowed:
            skip = route.bound | ({(route.body,)} if route.body else set())
            self._query(request, (), skip, (request.full_name,), found)
        return found

    def _query(
        self,
        message: Descriptor,
        prefix: tuple[str, ...],
        skip: frozenset[tuple[str, ...]] | set[tuple[str, ...]],
        seen: tuple[str, ...],
        found: list[Schema],
    ) -> None:
        for field in message.fields:
            path = (*prefix, field.name)
            if path in skip:
                continue
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:
                continue  # `field[key]=value` has no OpenAPI spelling
            if entry is not None and entry.full_name not in QUERY_MESSAGES:
                if not field.is_repeated and entry.full_name not in seen:
                    self._query(entry, path, skip, (*seen, entry.full_name), found)
                continue
            schema = self.value(field, for_input=True)
            parameter: Schema = {"name": ".".join(path), "in": "query", "required": False}
            if field.is_repeated:
                parameter.update(schema={"type": "array", "items": schema}, explode=True)
            else:
                parameter["schema"] = schema
            found.append(self.describe(parameter, field.full_name))


def _narrowed(schema: Schema, rule: Rule | None) -> Schema:
    """A scalar's schema with what its rule adds (enums: _Builder.value)."""
    if isinstance(rule, Text):
        # JSON Schema's `pattern` matches anywhere (ECMA-262 search); the
        # server's must match the whole value (re.fullmatch).
        return {**schema, "pattern": f"^(?:{rule.pattern})$", "maxLength": rule.max_length}
    if isinstance(rule, Count):
        # The rule's bounds, within the type's (int32's, where the rule
        # leaves the maximum to the type), and the value an unset field means.
        schema = {**schema, "minimum": rule.minimum, "default": rule.default}
        if rule.maximum is not None:
            schema["maximum"] = rule.maximum
    return schema


def _resolve(message: Descriptor, path: Sequence[str]) -> FieldDescriptor:
    field = None
    for name in path:
        field = message.fields_by_name[name]
        if field.message_type is not None:
            message = field.message_type
    assert field is not None
    return field


_STATUS: Schema = {
    "type": "object",
    "description": "The error: a google.rpc.Status. `code` is the gRPC code (3 "
    "INVALID_ARGUMENT, 5 NOT_FOUND, 9 FAILED_PRECONDITION, 14 UNAVAILABLE, ...); "
    "`details` hold google.rpc messages such as google.rpc.BadRequest.",
    "properties": {
        "code": {"type": "integer", "format": "int32"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": _WELL_KNOWN["google.protobuf.Any"]},
    },
    "required": ["code", "message", "details"],
}

_DESCRIPTION = """\
The HTTP/JSON face of the gRPC API, derived from its `google.api.http` annotations.

- PySpur's own paths (`/run/...`) answer PySpur's bodies: the run itself, or a bare
  list whose next page, if any, is in a `Link: <...>; rel="next"` header. The
  resource paths (`/v1/runs...`) answer whole response messages, with
  `next_page_token` and `total_size`.
- Paths match with or without a trailing slash.
- Bodies are proto3 JSON with the proto field names; every field is present, and a
  field that is not set is `null`. int64 values are strings, enums are names,
  timestamps are RFC 3339.
- Errors are a `google.rpc.Status` with the HTTP status of its code
  (grpc-gateway's mapping).
- A `Grpc-Timeout` header (e.g. `500m`, `2S`) sets the call's deadline;
  `Authorization` and `Grpc-Metadata-*` headers are passed on as gRPC metadata.
"""


def _stream_responses(name: str, body: Schema) -> dict[str, Any]:
    """A server-streaming method (gateway/streaming.py): newline-delimited JSON in
    grpc-gateway's shape, or server-sent events when the client asks."""
    return {
        "200": {
            "description": (
                f"A stream of {name} messages, each sent when it happens. As "
                'newline-delimited JSON: one line per message, `{"result": ...}`, and '
                "after an error that comes once the stream is open, a last line "
                '`{"error": <google.rpc.Status>}`. With `Accept: text/event-stream`, '
                "as server-sent events: `data: <message>` per message, an `error` "
                "event whose data is the Status. Errors before the first message "
                "(bad id, unknown run) are ordinary error replies."
            ),
            "content": {
                "application/x-ndjson": {
                    "schema": {
                        "type": "object",
                        "description": f"One line: a {name}, or the error that ended the stream.",
                        "properties": {"result": body, "error": {"$ref": STATUS_REF}},
                        "minProperties": 1,
                        "maxProperties": 1,
                        "additionalProperties": False,
                    }
                },
                "text/event-stream": {"schema": {"type": "string"}},
            },
        }
    }


_LINK_HEADER: Schema = {
    "description": 'RFC 8288 `<...>; rel="next"`: the address of the next page, this '
    "request's path and query with `page_token` set (and `page` dropped). Absent on "
    "the last page. A bare list holds no `next_page_token`: follow this until it is gone.",
    "schema": {"type": "string"},
}


# A line whose break is Markdown's: a list item, or indented (code).
_OWN_LINE = re.compile(r"[ \t]|[-*+] |[0-9]+[.)] ")
# A sentence ends at ., ! or ? before white space, unless that is "e.g." or
# the like.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_ABBREVIATION = re.compile(r"\b(?:[a-z]\.[a-z]|etc|vs|cf)\.$")


def _joined(comment: str) -> str:
    """`comment` with the line breaks protoc keeps, which fall mid-sentence
    wherever the proto's lines wrap, made spaces; paragraphs, list items and
    indented lines keep theirs."""
    lines: list[str] = []
    for line in comment.strip().split("\n"):
        last = lines[-1] if lines else ""
        if last and line and not _OWN_LINE.match(line) and last[0] not in " \t":
            lines[-1] = f"{last} {line}"
        else:
            lines.append(line)
    return "\n".join(lines)


def _summary(comment: str) -> str:
    """The first sentence of `comment`'s first paragraph, whole. The whole
    paragraph when no sentence ends before it does."""
    paragraph = " ".join(_joined(comment).split("\n\n", 1)[0].split())
    for end in _SENTENCE_END.finditer(paragraph):
        if not _ABBREVIATION.search(paragraph[: end.start()]):
            return paragraph[: end.start()]
    return paragraph


def build_openapi(
    routes: Sequence[Route],
    comments: Mapping[str, str],
    title: str,
    version: str,
    prefix: str = "",
    rules: Mapping[str, Rule] | None = None,
) -> dict[str, Any]:
    """`rules`: what the server accepts of request fields, by full name
    (api/rules.py's REQUEST_RULES); unruled fields take their type's range."""
    builder = _Builder(comments, rules=rules)
    pyspur = _Builder(comments, builder.schemas, pyspur=True)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        method = route.method
        text = comments.get(method.full_name, "")
        output = method.output_type
        if route.response_body:
            target = _resolve(output, route.response_body.split("."))
            if target.message_type is not None and not target.is_repeated:
                # The answer is that message itself (GetRun's run), never null.
                body = pyspur.message(target.message_type)
            else:
                body = pyspur.field(target)
            what = f"The `{route.response_body}` of a {output.name}, alone."
        else:
            body = builder.message(output)
            what = f"A {output.name}."
        success: dict[str, Any]
        if route.streaming:
            success = _stream_responses(output.name, body)
        elif not output.fields and not route.response_body:
            success = {"204": {"description": "Done; no content."}}
        else:
            success = {
                "200": {
                    "description": what,
                    "content": {"application/json": {"schema": body}},
                }
            }
            if pages_by_link(method, route.response_body):
                success["200"]["headers"] = {"Link": _LINK_HEADER}
        operation: dict[str, Any] = {
            # protoc-gen-openapiv2's names: additional bindings get 2, 3, ...
            "operationId": f"{method.containing_service.name}_{method.name}"
            + (str(route.binding + 1) if route.binding else ""),
            "tags": [method.containing_service.name],
            "summary": _summary(text) or method.name,
            "parameters": builder.parameters(route),
            "responses": {
                **success,
                "default": {
                    "description": "An error.",
                    "content": {"application/json": {"schema": {"$ref": STATUS_REF}}},
                },
            },
        }
        if text:
            operation["description"] = _joined(text)  # the whole comment
        if route.body:
            request = method.input_type
            schema = (
                builder.message(request, for_input=True)
                if route.body == "*"
                else builder.field(request.fields_by_name[route.body], for_input=True)
            )
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": schema}},
            }
        paths.setdefault(route.template.openapi_path, {})[route.verb.lower()] = operation
    schemas = dict(sorted(builder.schemas.items()))
    schemas["google.rpc.Status"] = _STATUS
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": _DESCRIPTION},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if prefix:
        # --http-path-prefix: every path is relative to this server URL.
        document["servers"] = [{"url": prefix}]
    return document
