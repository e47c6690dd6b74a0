"""HTTP request parts -> the request message, as grpc-gateway maps them.

Path variables fill the fields their template names; every query
parameter names a field by its dotted path (proto or JSON names; repeated
fields by repetition, map entries as `field[key]=value`); the body, where
the rule has one, is the JSON of the request ("*") or of one field. As in
grpc-gateway, a parameter that names no field is ignored, and so is one
naming a field the path already binds (under either name); a value that
does not parse is INVALID_ARGUMENT naming the parameter. Booleans and
integers are also read in the spellings PySpur's FastAPI (pydantic) takes:
yes/no/on/off in any case; "2.0", "1_000" and spaces around an integer
(none around a boolean, which pydantic and strconv both refuse).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, cast
from urllib.parse import parse_qsl

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from ..errors import InvalidArgument
from .routes import Route

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(
    r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:Inf|Infinity|inf|infinity)|NaN|nan"
)
_MAP_KEY = re.compile(r"(.+)\[(.*)\]")
# strconv.ParseBool's spellings (grpc-gateway's), and pydantic's that
# PySpur's FastAPI takes (yes, no, on, off, y, n), in any case.
_TRUE = frozenset(("1", "t", "true", "y", "yes", "on"))
_FALSE = frozenset(("0", "f", "false", "n", "no", "off"))
# An integer as pydantic (PySpur's) reads one too: with zeros after a
# decimal point ("2.0", not "2."), spaces around it ("+1" as a form's " 1"),
# digits grouped by single underscores as Python writes them ("1_000").
_INTEGRAL = re.compile(r"([+-]?[0-9]+(?:_[0-9]+)*)(?:\.0+)?")
# The spaces pydantic strips from an integer (Unicode's White_Space): all of
# str.strip's but the separators \x1c-\x1f, which pydantic refuses.
_SPACES = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}

# Well-known messages that a query parameter can hold, written as their JSON
# string (grpc-gateway's list, without Struct/Value/Any: JSON in a URL is
# better sent as a body).
_WRAPPERS = {
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}
QUERY_MESSAGES = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    *_WRAPPERS,
}


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


# --- scalars from text -------------------------------------------------------


def parse_scalar(field: FieldDescriptor, text: str, name: str) -> Any:
    """The Python value of `text` for a scalar or enum field; InvalidArgument
    naming `name` (the parameter as the client wrote it) when it is not one."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return text
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        integral = _INTEGRAL.fullmatch(text.strip(_SPACES)) if len(text) <= 64 else None
        if integral is None:
            raise InvalidArgument(name, f"{_shown(text)} is not an integer")
        value = int(integral.group(1))
        if not low <= value <= high:
            raise InvalidArgument(name, f"{value} is out of range [{low}, {high}]")
        return value
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        if not _FLOAT.fullmatch(text):
            raise InvalidArgument(name, f"{_shown(text)} is not a number")
        return float(text)
    if kind == FieldDescriptor.TYPE_BOOL:
        folded = text.lower()
        if folded in _TRUE:
            return True
        if folded in _FALSE:
            return False
        raise InvalidArgument(name, f"{_shown(text)} is not a boolean (true or false)")
    if kind == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        by_name = enum.values_by_name.get(text)
        if by_name is not None:
            return by_name.number
        if len(text) <= 20 and _INT.fullmatch(text) and int(text) in enum.values_by_number:
            return int(text)
        # The zero value's *_UNSPECIFIED (AIP-126) is what leaving the
        # parameter out means: not a name to suggest (a status filter of it
        # is refused).
        names = ", ".join(
            v.name for v in enum.values if not (v.number == 0 and v.name.endswith("_UNSPECIFIED"))
        )
        raise InvalidArgument(name, f"{_shown(text)} is not one of {names}")
    if kind == FieldDescriptor.TYPE_BYTES:
        return _bytes(text, name)
    raise InvalidArgument(name, "cannot be set from a query parameter")


def _bytes(text: str, name: str) -> bytes:
    # Standard or URL-safe alphabet, padded or not, as grpc-gateway accepts.
    padded = (text + "=" * (-len(text) % 4)).encode("ascii", "replace")
    for altchars in (None, b"-_"):
        try:
            return base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
    raise InvalidArgument(name, f"{_shown(text)} is not base64")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _set_well_known(target: Message, text: str, name: str) -> None:
    descriptor = _descriptor(target)
    full_name = descriptor.full_name
    try:
        if full_name in _WRAPPERS:
            inner = descriptor.fields_by_name["value"]
            target.value = parse_scalar(inner, text, name)  # type: ignore[attr-defined]
        elif full_name == "google.protobuf.FieldMask":
            target.paths.extend(p for p in text.split(",") if p)  # type: ignore[attr-defined]
        elif full_name == "google.protobuf.Timestamp":
            _set_timestamp(target, text, name)
        else:  # Duration: its JSON string form
            target.FromJsonString(text)  # type: ignore[attr-defined]
    except InvalidArgument:
        raise
    except ValueError as error:
        raise InvalidArgument(name, f"{_shown(text)}: {error}") from None


# RFC 3339's numeric offset: hours 00-23, minutes 00-59. protobuf's parser
# takes any two digits (+99:99 moved a filter by four days); Go's, behind
# grpc-gateway, does not.
_OFFSET = re.compile(r"[+-]([0-9]{2}):([0-9]{2})\Z")


def _set_timestamp(target: Message, text: str, name: str) -> None:
    """RFC 3339, as grpc-gateway reads a Timestamp from a query parameter.
    protobuf's parser wants "T" and "Z" upper case, which RFC 3339 does not."""
    try:
        offset = _OFFSET.search(text)
        if offset is not None and (int(offset[1]) > 23 or int(offset[2]) > 59):
            raise ValueError("offset out of range")
        target.FromJsonString(text.upper())  # type: ignore[attr-defined]
    except ValueError:
        hint = ""
        if " " in text and len(text) > 10:
            # `+02:00` unescaped in a URL arrives as ` 02:00` (form encoding).
            hint = " (write a + in a URL as %2B)"
        raise InvalidArgument(
            name, f"{_shown(text)} is not an RFC 3339 time such as 2026-01-01T00:00:00Z{hint}"
        ) from None


# --- the request ------------------------------------------------------------


def _descriptor(message: Message) -> Descriptor:
    # The upb runtime's descriptor classes stand in for these at run time.
    return cast(Descriptor, message.DESCRIPTOR)


def _find_field(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    found = descriptor.fields_by_name.get(name)
    if found is None:
        for candidate in descriptor.fields:
            if candidate.json_name == name:
                return candidate
    return found


def canonical(descriptor: Descriptor, path: Sequence[str]) -> tuple[str, ...]:
    """`path` with each part that names a field (by its proto or JSON name)
    spelled by its proto name: `runId` and `run_id` are one field, for the
    path's bindings and for "given twice" alike. Parts after one that names
    no field, or no message, stay as written."""
    names: list[str] = []
    current: Descriptor | None = descriptor
    for part in path:
        field = _find_field(current, part) if current is not None else None
        if field is None:
            return (*names, *path[len(names) :])
        names.append(field.name)
        current = None if field.is_repeated else field.message_type
    return tuple(names)


def _assign(message: Message, path: Sequence[str], values: Sequence[str], name: str) -> None:
    """Set the field at `path` from `values` (all the values of one query key).
    A path that names no field is ignored, as grpc-gateway does."""
    map_key: str | None = None
    *parents, last = path
    keyed = _MAP_KEY.fullmatch(last)
    for part in parents:
        field = _find_field(_descriptor(message), part)
        if field is None:
            return
        if field.is_repeated or field.message_type is None:
            raise InvalidArgument(name, f"{part} is not a message, it has no fields")
        if field.message_type.full_name in QUERY_MESSAGES:
            raise InvalidArgument(name, f"{part} has no fields to set")
        message = getattr(message, field.name)
    field = _find_field(_descriptor(message), last)
    if field is None and keyed is not None:
        field, map_key = _find_field(_descriptor(message), keyed.group(1)), keyed.group(2)
    if field is None:
        return
    oneof = field.containing_oneof
    if oneof is not None and message.WhichOneof(oneof.name) not in (None, field.name):
        raise InvalidArgument(name, f"another field of {oneof.name} is already set")
    if map_key is not None or _is_map(field):
        _assign_map(message, field, map_key, values, name)
        return
    if field.is_repeated:
        container = getattr(message, field.name)
        for value in values:
            if field.message_type is not None:
                if field.message_type.full_name not in QUERY_MESSAGES:
                    raise InvalidArgument(name, "cannot be set from a query parameter")
                _set_well_known(container.add(), value, name)
            else:
                _store(container.append, parse_scalar(field, value, name), name)
        return
    if len(values) > 1:
        raise InvalidArgument(name, f"is given {len(values)} times; it takes one value")
    if field.message_type is not None:
        if field.message_type.full_name not in QUERY_MESSAGES:
            raise InvalidArgument(name, "cannot be set from a query parameter")
        _set_well_known(getattr(message, field.name), values[0], name)
        return
    _store(partial(setattr, message, field.name), parse_scalar(field, values[0], name), name)


def _store(put: Callable[[Any], object], value: Any, name: str) -> None:
    # protobuf's own range checks (a 32-bit float's, say) as InvalidArgument.
    try:
        put(value)
    except (ValueError, TypeError, OverflowError) as error:
        raise InvalidArgument(name, str(error)) from None


def _is_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    return entry is not None and entry.GetOptions().map_entry


def _assign_map(
    message: Message, field: FieldDescriptor, key: str | None, values: Sequence[str], name: str
) -> None:
    if key is None or not _is_map(field):
        raise InvalidArgument(name, f"set entries of {field.name} as {field.name}[key]=value")
    if len(values) > 1:
        raise InvalidArgument(name, f"is given {len(values)} times; it takes one value")
    entry = field.message_type
    assert entry is not None
    key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
    if value_field.message_type is not None:
        raise InvalidArgument(name, "cannot be set from a query parameter")
    getattr(message, field.name)[parse_scalar(key_field, key, name)] = parse_scalar(
        value_field, values[0], name
    )


def parse_query(query: str) -> dict[str, list[str]]:
    """Values of each key, in order. Bytes that are not UTF-8 once decoded
    are kept as surrogates (errors="surrogateescape"): a parameter that
    names no field is ignored whatever it holds, as PySpur ignores it;
    RequestBuilder refuses them in one that does."""
    grouped: dict[str, list[str]] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, errors="surrogateescape"):
        grouped.setdefault(key, []).append(value)
    return grouped


def _names_a_field(descriptor: Descriptor, path: Sequence[str]) -> bool:
    keyed = _MAP_KEY.fullmatch(path[0])
    return _find_field(descriptor, keyed.group(1) if keyed else path[0]) is not None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class RequestBuilder:
    """Builds the request message of one route from the parts of an HTTP request."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.message_class = message_class(route.method.input_type)
        # Query keys under these field paths are ignored: the path or the
        # body sets them (grpc-gateway's filter).
        self._bound = tuple(route.bound | ({(route.body,)} if route.body else set()))

    def build(self, variables: dict[tuple[str, ...], str], query: str, body: bytes) -> Message:
        """In grpc-gateway's order: the body, then the path (which wins over
        the body), then the query (which cannot touch what those bound)."""
        route = self.route
        request = self.message_class()
        if route.body and body.strip():
            self._body(request, body)
        for path, value in variables.items():
            _assign(request, path, [value], ".".join(path))
        if query and route.query_allowed:
            # One field's values under all its spellings (page_size,
            # pageSize), named in errors as first written.
            fields: dict[tuple[str, ...], tuple[str, list[str]]] = {}
            descriptor = _descriptor(request)
            for key, values in parse_query(query).items():
                if not _is_utf8(key):
                    continue  # names no field (their names are ASCII): ignored
                path = canonical(descriptor, key.split("."))
                if path in fields:
                    fields[path][1].extend(values)
                else:
                    fields[path] = (key, list(values))
            for path, (key, values) in fields.items():
                # A field the path or the body binds is theirs, under any
                # spelling: ?runId=R9 does not turn DELETE /run/R1 into R9's.
                if not any(path[: len(bound)] == bound for bound in self._bound):
                    if _names_a_field(descriptor, path) and not all(map(_is_utf8, values)):
                        raise InvalidArgument(key, "is not valid UTF-8 once percent-decoded")
                    _assign(request, path, values, key)
        return request

    def _body(self, request: Message, body: bytes) -> None:
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise InvalidArgument("body", f"is not JSON: {error}") from None
        if self.route.body != "*":
            document = {self.route.body: document}
        try:
            json_format.ParseDict(document, request, ignore_unknown_fields=True)
        except json_format.ParseError as error:
            raise InvalidArgument("body", str(error)) from None
