"""HTTP routes derived from the `google.api.http` options of the services.

Every method with an HttpRule (and each of its additional_bindings) becomes a
Route: an HTTP verb, a compiled path template and the fields that the path and
the body fill. Nothing here is written per RPC, so a newly annotated RPC gets
its route at the next start.

Path templates follow google/api/http.proto:

    Template = "/" Segments [ Verb ] ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;

A request path matches with or without one trailing slash (PySpur's own REST
paths end in "/", the annotations do not; grpc-gateway accepts only the
exact form).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import unquote

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Characters a literal segment may hold: RFC 3986 pchar without "%" escapes.
_LITERAL = re.compile(r"[A-Za-z0-9._~!$&'()+,;=@-]+")
T = TypeVar("T")
_ESCAPED_SLASH = re.compile("%2F", re.IGNORECASE)


class RouteError(ValueError):
    """An HttpRule that cannot be served (raised at start-up, never per request)."""


@dataclass(frozen=True)
class Variable:
    """A `{field.path=...}` of a template; `multi` when it may span segments."""

    field_path: tuple[str, ...]
    group: str
    multi: bool


@dataclass(frozen=True)
class PathTemplate:
    text: str
    regex: re.Pattern[str]
    variables: tuple[Variable, ...]
    # Literal segments, to try the most specific template first.
    literals: int
    # The path with each variable as `{field.path}`, as OpenAPI writes it.
    openapi_path: str
    # The custom verb after ":" ("watch"), or "".
    verb: str = ""
    # The literal text before the first variable or wildcard: every path the
    # regex matches starts with it, so a path that does not needs no regex.
    prefix: str = "/"

    def match(self, path: str) -> dict[tuple[str, ...], str] | None:
        """Field path -> decoded value of each variable, or None.
        UnicodeDecodeError when a value is not UTF-8 once decoded."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        values: dict[tuple[str, ...], str] = {}
        for variable in self.variables:
            raw = found.group(variable.group)
            # A single-segment variable decodes everything, "%2F" included; a
            # multi-segment one keeps "%2F" as it is, so that an escaped
            # slash stays distinct from the slashes between segments
            # (http.proto's rule for reserved expansion).
            values[variable.field_path] = (
                "%2F".join(_decode(part) for part in _ESCAPED_SLASH.split(raw))
                if variable.multi
                else _decode(raw)
            )
        return values


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# RFC 3986's unreserved characters: escaped or not, the same URI (6.2.2.2).
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalize_escapes(path: str) -> str:
    """`path` with its escaped unreserved characters decoded ("%73tatus" is
    "status", as PySpur's server reads it), the others left escaped for the
    variables' own decoding ("%2F" stays a slash inside a segment)."""

    def unescape(found: re.Match[str]) -> str:
        char = chr(int(found.group(1), 16))
        return char if char in _UNRESERVED else found.group(0)

    return _ESCAPE.sub(unescape, path)


def _decode(raw: str) -> str:
    return unquote(raw, errors="strict") if "%" in raw else raw


def parse_template(text: str) -> PathTemplate:
    """Compile an http.proto path template; RouteError when it is not one."""
    if not text.startswith("/"):
        raise RouteError(f"path template {text!r} must start with '/'")
    body, verb = text[1:], ""
    last_slash = body.rfind("/")
    colon = body.rfind(":")
    if colon > last_slash and "}" not in body[colon:]:
        body, verb = body[:colon], body[colon + 1 :]
        if not _LITERAL.fullmatch(verb):
            raise RouteError(f"bad verb {verb!r} in path template {text!r}")
    parser = _TemplateParser(text, body)
    pattern, openapi = parser.parse()
    if verb:
        pattern += ":" + re.escape(verb)
        openapi += ":" + verb
    starts = [i for i in (text.find("{"), text.find("*")) if i >= 0]
    return PathTemplate(
        prefix=text[: min(starts)] if starts else text,
        text=text,
        regex=re.compile("/" + pattern),
        variables=tuple(parser.variables),
        literals=parser.literals,
        openapi_path="/" + openapi,
        verb=verb,
    )


class _TemplateParser:
    def __init__(self, text: str, body: str) -> None:
        self.text = text
        self.body = body
        self.pos = 0
        self.variables: list[Variable] = []
        self.literals = 0

    def fail(self, why: str) -> RouteError:
        return RouteError(f"path template {self.text!r}: {why}")

    def parse(self) -> tuple[str, str]:
        pattern, openapi = self.segments(in_variable=False)
        if self.pos != len(self.body):
            raise self.fail(f"unexpected {self.body[self.pos :]!r}")
        return pattern, openapi

    def segments(self, in_variable: bool) -> tuple[str, str]:
        patterns, paths = [], []
        while True:
            pattern, path = self.segment(in_variable)
            patterns.append(pattern)
            paths.append(path)
            if self.pos < len(self.body) and self.body[self.pos] == "/":
                self.pos += 1
                continue
            return "/".join(patterns), "/".join(paths)

    def segment(self, in_variable: bool) -> tuple[str, str]:
        rest = self.body[self.pos :]
        if rest.startswith("**"):
            self.pos += 2
            return "(?:[^/]+(?:/[^/]+)*)?", "**"
        if rest.startswith("*"):
            self.pos += 1
            return "[^/]+", "*"
        if rest.startswith("{"):
            if in_variable:
                raise self.fail("nested variables")
            return self.variable()
        literal = _LITERAL.match(rest)
        if literal is None:
            raise self.fail(f"bad segment at {rest!r}")
        self.pos += literal.end()
        self.literals += 1
        return re.escape(literal.group()), literal.group()

    def variable(self) -> tuple[str, str]:
        self.pos += 1
        names = []
        while True:
            ident = _IDENT.match(self.body, self.pos)
            if ident is None:
                raise self.fail("bad field path in a variable")
            names.append(ident.group())
            self.pos = ident.end()
            if self.body.startswith(".", self.pos):
                self.pos += 1
                continue
            break
        if self.body.startswith("=", self.pos):
            self.pos += 1
            literals = self.literals
            inner, shape = self.segments(in_variable=True)
            self.literals = literals  # literals inside a variable are not "specific"
            multi = "/" in shape or "**" in shape
        else:
            inner, multi = "[^/]+", False
        if not self.body.startswith("}", self.pos):
            raise self.fail("unclosed variable")
        self.pos += 1
        group = f"v{len(self.variables)}"
        self.variables.append(Variable(tuple(names), group, multi))
        return f"(?P<{group}>{inner})", "{" + ".".join(names) + "}"


@dataclass(frozen=True)
class Route:
    verb: str
    template: PathTemplate
    method: MethodDescriptor
    # "" (no body), "*" (the whole request) or the name of a request field.
    body: str = ""
    # "" (the whole response) or the name of the response field to answer with.
    response_body: str = ""
    bound: frozenset[tuple[str, ...]] = field(default=frozenset())
    # 0 for the rule itself, n for its n-th additional binding (OpenAPI
    # names operations after it, as protoc-gen-openapiv2 does).
    binding: int = 0

    @property
    def grpc_path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def streaming(self) -> bool:
        """A server-streaming method: answered as newline-delimited JSON or
        server-sent events (streaming.py), one message at a time."""
        return bool(self.method.server_streaming)

    @property
    def query_allowed(self) -> bool:
        # grpc-gateway reads no query parameters when the body is the whole request.
        return self.body != "*"


def resolve_field(message: Descriptor, path: Sequence[str]) -> FieldDescriptor:
    """The field at a dotted path (proto names), through singular messages."""
    descriptor: Descriptor | None = message
    found: FieldDescriptor | None = None
    for i, name in enumerate(path):
        if descriptor is None:
            raise RouteError(f"{'.'.join(path[:i])} of {message.full_name} is not a message")
        found = descriptor.fields_by_name.get(name)
        if found is None:
            raise RouteError(f"{message.full_name} has no field {'.'.join(path[: i + 1])}")
        if i < len(path) - 1 and (found.is_repeated or found.message_type is None):
            raise RouteError(f"{'.'.join(path[: i + 1])} of {message.full_name} is not a message")
        descriptor = found.message_type
    assert found is not None
    return found


def _route(method: MethodDescriptor, rule: http_pb2.HttpRule, binding: int = 0) -> Route:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise RouteError(f"{method.full_name}: HttpRule without a pattern")
    if kind == "custom":
        verb, text = rule.custom.kind.upper(), rule.custom.path
    else:
        verb, text = kind.upper(), getattr(rule, kind)
    template = parse_template(text)
    request = method.input_type
    for variable in template.variables:
        target = resolve_field(request, variable.field_path)
        if target.is_repeated or target.type == FieldDescriptor.TYPE_MESSAGE:
            raise RouteError(
                f"{method.full_name}: path variable {'.'.join(variable.field_path)} "
                "must be a singular scalar field"
            )
    if rule.body not in ("", "*"):
        resolve_field(request, rule.body.split("."))
    if rule.response_body:
        resolve_field(method.output_type, rule.response_body.split("."))
    return Route(
        verb=verb,
        template=template,
        method=method,
        body=rule.body,
        response_body=rule.response_body,
        bound=frozenset(v.field_path for v in template.variables),
        binding=binding,
    )


def routes_for(services: Iterable[ServiceDescriptor]) -> list[Route]:
    """The routes of every annotated method, the most specific template first."""
    routes: list[Route] = []
    for service in services:
        for method in service.methods:
            if method.client_streaming:
                continue  # no HTTP form; server streaming is served (streaming.py)
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rule = options.Extensions[annotations_pb2.http]
            routes.append(_route(method, rule))
            for n, extra in enumerate(rule.additional_bindings, 1):
                routes.append(_route(method, extra, n))
    # Stable sort: among equally specific templates, declaration order wins.
    # (A path ending in a custom verb is its template's alone: Router.match.)
    routes.sort(key=lambda r: -r.template.literals)
    seen: dict[tuple[str, str], Route] = {}
    for route in routes:
        key = (route.verb, route.template.regex.pattern)
        if key in seen:
            raise RouteError(
                f"{route.method.full_name} and {seen[key].method.full_name} both serve "
                f"{route.verb} {route.template.text}"
            )
        seen[key] = route
    return routes


@dataclass(frozen=True)
class Match(Generic[T]):
    payload: T
    variables: dict[tuple[str, ...], str]


class Router(Generic[T]):
    """Finds what serves a request's path and verb among (route, payload) pairs."""

    def __init__(self, entries: Sequence[tuple[Route, T]]) -> None:
        self.entries = tuple(entries)
        self._verbs = tuple(
            {r.template.regex.pattern: r.template for r, _ in entries if r.template.verb}.values()
        )
        self._by_verb: dict[str, list[tuple[Route, T]]] = {}
        for route, payload in self.entries:
            self._by_verb.setdefault(route.verb, []).append((route, payload))

    def match(self, verb: str, path: str) -> Match[T] | list[str] | None:
        """The match; else the verbs the path allows (405); else None (404).

        `path` is the raw (still percent-encoded) path without the query.
        UnicodeDecodeError when a variable is not UTF-8 once decoded.
        """
        if "%" in path:
            path = normalize_escapes(path)
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        # A path that ends in a template's custom verb ("/v1/runs/R1:watch")
        # is that template's alone: "R1:watch" is not a run id for the
        # verb-less templates beside it (GetRun, DeleteRun) to take.
        # (A template's verb follows a ":", so a path without one has none.)
        claimed = (
            next((t.regex.pattern for t in self._verbs if t.regex.fullmatch(path)), None)
            if ":" in path
            else None
        )
        # The routes of the request's verb first, in order; the other verbs'
        # only when none matches, for the 405's list: a found GET costs no
        # regex of the POST and DELETE routes before it.
        for route, payload in self._by_verb.get(verb, ()):
            if claimed is not None and route.template.regex.pattern != claimed:
                continue
            if not path.startswith(route.template.prefix):
                continue
            variables = route.template.match(path)
            if variables is not None:
                return Match(payload, variables)
        allowed: list[str] = []
        for route, _ in self.entries:
            if claimed is not None and route.template.regex.pattern != claimed:
                continue
            if route.verb != verb and route.verb not in allowed:
                if route.template.regex.fullmatch(path):
                    allowed.append(route.verb)
        return allowed or None
