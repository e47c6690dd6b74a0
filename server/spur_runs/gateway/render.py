"""Messages -> JSON bytes: the response bodies and the error bodies.

The output is proto3's canonical JSON as json_format writes it with
preserving_proto_field_name=True and always_print_fields_with_no_presence=True
(proto field names, int64 as strings, enums by name, Timestamps in RFC 3339,
well-known types in their JSON forms), plus what json_format leaves out:
fields with presence (messages, `optional` scalars) are emitted as null when
unset, so that a JSON client always sees every key. grpc-gateway's
EmitUnpopulated does the same for messages but omits `optional` scalars;
PySpur's own REST answers (pydantic) show them as null, and so do we.

Why not json_format itself: it walks every message generically and was half
of the gateway's cost per GetRun (450 us of a 1.5 ms call, seed data). Here
each message type gets a generated encoder function once (_Plan: one dict
display per message), and a large Struct (a run's workflow definition, the
same for every run of that version) is converted once per distinct content.
tests/unit/test_http_render.py checks the output against json_format's on
every field type, test_http_render_plans.py byte for byte on random messages.

A null read back by a proto3 JSON parser leaves the field unset, except for a
google.protobuf.Value field, where null is a Value holding null: the JSON
cannot tell those apart (protojson's EmitUnpopulated writes the same null).

This module renders messages (Renderer, and each type's generated encoder);
render_values.py holds the converters of single values: the scalars and the
well-known types, and the choices made where the JSON forms allow either
(integral numbers, NaN and the infinities).
"""

from __future__ import annotations

import keyword
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import status_pb2

from ..api.spliced import Spliced
from ..errors import DataLoss
from ..rpc.status import NESTED_TOO_DEEPLY

# The converters of single values, imported by name: an encoder holds them
# itself (no attribute lookup through render_values per value).
from .render_values import (
    MEMO_SIZE,
    Encode,
    encode_bytes,
    encode_generic,
    encode_list_value,
    encode_naive_timestamp,
    encode_pyspur_float,
    encode_struct,
    encode_timestamp,
    encode_value,
    memo,
    scalar,
    wrapper,
)


def dumps(document: Any) -> bytes:
    # orjson: the same bytes as json.dumps(ensure_ascii=False, compact), in a
    # tenth of the time (6 us rather than 60 for a GetRun).
    try:
        return orjson.dumps(document)
    except TypeError as error:
        # orjson writes at most 255 levels; deeper is stored JSON (a Struct
        # in the answer) that gRPC carries but JSON here cannot: DATA_LOSS,
        # as for a document too deep to read, not an INTERNAL bug.
        if str(error) == "Recursion limit reached":
            raise DataLoss(NESTED_TOO_DEEPLY) from None
        raise


class Renderer:
    """The encoders of one gateway, built once per message type. Not shared
    between threads: each gateway renders on its own event loop.

    `pyspur`: the bodies of PySpur's own paths (an HttpRule with a
    response_body: `/run/...`), whose JSON is PySpur's pydantic's rather
    than proto3's where the two differ: a time is naive UTC
    (encode_naive_timestamp) and a double field a float (encode_pyspur_float)."""

    def __init__(self, *, pyspur: bool = False) -> None:
        self._pyspur = pyspur
        self._messages: dict[str, MessageEncoder] = {}
        self._building = 0
        # (namespace, name, encoder): a generated function's reference to a
        # message type's encoder, swapped for its function once built.
        self._pending: list[tuple[dict[str, Any], str, MessageEncoder]] = []
        self._versions: OrderedDict[bytes, Any] = OrderedDict()  # see _version
        self._well_known: dict[str, Encode] = {
            "google.protobuf.Timestamp": encode_naive_timestamp if pyspur else encode_timestamp,
            "google.protobuf.Struct": memo(encode_struct),
            "google.protobuf.Value": encode_value,
            "google.protobuf.ListValue": encode_list_value,
        }

    def message(self, descriptor: Descriptor) -> MessageEncoder:
        found = self._messages.get(descriptor.full_name)
        if found is None:
            found = self._messages[descriptor.full_name] = MessageEncoder()
            self._building += 1
            try:
                found.build(descriptor, self)  # after registering: types may recurse
            finally:
                self._building -= 1
            if not self._building:
                for namespace, name, encoder in self._pending:
                    namespace[name] = encoder.function
                self._pending.clear()
        return found

    def element(self, field: FieldDescriptor) -> Encode | None:
        """The converter of one value of a field (one element if repeated);
        None when the Python value is already the JSON one."""
        message = field.message_type
        if message is None:
            if self._pyspur and field.type == FieldDescriptor.TYPE_DOUBLE:
                return encode_pyspur_float
            return scalar(field)
        name = message.full_name
        if name in self._well_known:
            return self._well_known[name]
        if name.startswith("google.protobuf.") and name.endswith("Value"):
            return wrapper(message)  # DoubleValue, Int64Value, ...
        if name.startswith("google.protobuf."):
            return encode_generic  # Any, Duration, FieldMask, Empty
        return self.message(message)

    def response(self, descriptor: Descriptor, field: str = "") -> Callable[[Any], bytes]:
        """The body of a response message, or of one of its top-level fields
        (an HttpRule's response_body): only that field is encoded. The
        response may be an api.spliced.Spliced (GetRun, ListRuns,
        GetChildRuns): the message without its runs' workflow versions,
        rendered, then each version's JSON, rendered once per version, put
        in its run's "workflow_version" key (there already, as null: the
        same place, the same bytes as the whole message's)."""
        encode: Callable[[Any], Any]
        if not field:
            encoder = self.message(descriptor)
            encode = lambda message: encoder.function(message)  # noqa: E731 - built later
        else:
            plan = _Plan(self)
            expression = plan.field(descriptor.fields_by_name[field])
            encode = plan.compile(f"return {expression}")
        runs_of = _runs_of(descriptor, field)

        def render(response: Any) -> bytes:
            if type(response) is not Spliced:
                return dumps(encode(response))
            if runs_of is None:  # no runs in this body: nothing to put in
                return dumps(encode(response.materialize()))
            document = encode(response.for_render())
            for run, version in zip(runs_of(document), response.versions, strict=True):
                if version is not None:
                    run["workflow_version"] = self._version(version)
            return dumps(document)

        return render

    def _version(self, version: tuple[Message, bytes]) -> Any:
        """A workflow version's JSON object, rendered once per version (by
        its bytes, the same object every time: a dict whose hash is kept)."""
        message, key = version
        found = self._versions.get(key)
        if found is None:
            encoder = self.message(message.DESCRIPTOR)  # type: ignore[arg-type]
            found = self._versions[key] = encoder.function(message)
            if len(self._versions) > MEMO_SIZE:
                self._versions.popitem(last=False)
        return found

    def later(self, namespace: dict[str, Any], name: str, encoder: MessageEncoder) -> None:
        if self._building:
            self._pending.append((namespace, name, encoder))
        else:
            namespace[name] = encoder.function


def _runs_of(descriptor: Descriptor, field: str) -> Callable[[Any], list[Any]] | None:
    """Where a body of `descriptor` (or of its `field`) holds the runs of a
    Spliced answer, in order: its "runs" list or its "run" object."""
    if field == "runs":
        return lambda document: document  # type: ignore[no-any-return]
    if field == "run":
        return lambda document: [document]
    if not field and "runs" in descriptor.fields_by_name:
        return lambda document: document["runs"]  # type: ignore[no-any-return]
    if not field and "run" in descriptor.fields_by_name:
        return lambda document: [document["run"]]
    return None


# --- messages ---


class MessageEncoder:
    """Encodes messages of one type to JSON-ready Python objects. `function`
    is the encoder itself (callers on a hot path call it directly)."""

    def __init__(self) -> None:
        self.function: Callable[[Any], dict[str, Any]] = self._unbuilt

    @staticmethod
    def _unbuilt(message: Any) -> dict[str, Any]:
        raise RuntimeError(f"{type(message).__name__}: its encoder is still being built")

    def build(self, descriptor: Descriptor, renderer: Renderer) -> None:
        self.function = _Plan(renderer).message(descriptor)

    def __call__(self, message: Any) -> dict[str, Any]:
        return self.function(message)


def _is_synthetic(field: FieldDescriptor) -> bool:
    # A proto3 `optional` field sits alone in a synthetic oneof "_<name>".
    oneof = field.containing_oneof
    return oneof is not None and len(oneof.fields) == 1 and oneof.name == "_" + field.name


class _Plan:
    """The source of one generated encoder function. Why generated: a
    message's fields as one dict display, one expression per field, rather
    than a closure call and a dict store per field (~70 for a GetRun's run
    with its tasks; the whole rendering went from 160 to 105 us with the
    memo change, seed data). The names in the source are the descriptor's
    (identifiers, read by getattr when they are Python keywords) and the
    converters are passed in the namespace, so nothing from a message's
    content ever reaches the source."""

    def __init__(self, renderer: Renderer) -> None:
        self._renderer = renderer
        self._namespace: dict[str, Any] = {}

    def _bind(self, value: Any) -> str:
        name = f"_c{len(self._namespace)}"
        self._namespace[name] = value
        return name

    def _call(self, convert: Encode | None, argument: str) -> str:
        if convert is None:
            return argument
        if convert is str:
            return f"str({argument})"
        if isinstance(convert, MessageEncoder):
            name = f"_c{len(self._namespace)}"
            self._namespace[name] = None
            self._renderer.later(self._namespace, name, convert)
            return f"{name}({argument})"
        return f"{self._bind(convert)}({argument})"

    def field(self, field: FieldDescriptor) -> str:
        """An expression of `m` that is the field's JSON value."""
        name = field.name
        read = (
            f"m.{name}"
            if name.isidentifier() and not keyword.iskeyword(name)
            else f"getattr(m, {name!r})"
        )
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            return f"{self._bind(_map(entry, self._renderer))}({read})"
        convert = self._renderer.element(field)
        if field.is_repeated:
            if convert is None:
                return f"list({read})"
            return f"[{self._call(convert, 'v')} for v in {read}]"
        if field.has_presence:
            return f"({self._call(convert, read)} if m.HasField({name!r}) else None)"
        return self._call(convert, read)

    def message(self, descriptor: Descriptor) -> Callable[[Any], dict[str, Any]]:
        real_oneofs = any(
            f.containing_oneof is not None and not _is_synthetic(f) for f in descriptor.fields
        )
        if not real_oneofs:
            items = ", ".join(f"{f.name!r}: {self.field(f)}" for f in descriptor.fields)
            return self.compile(f"return {{{items}}}")
        # A member of a real oneof only when it is the one set, as
        # json_format; keys in field order all the same.
        lines = ["d = {}"]
        for field in descriptor.fields:
            oneof = field.containing_oneof
            put = f"d[{field.name!r}] = {self.field(field)}"
            if oneof is not None and not _is_synthetic(field):
                lines.append(f"if m.WhichOneof({oneof.name!r}) == {field.name!r}: {put}")
            else:
                lines.append(put)
        lines.append("return d")
        return self.compile("\n    ".join(lines))

    def compile(self, body: str) -> Callable[[Any], Any]:
        source = f"def encode(m):\n    {body}\n"
        exec(compile(source, "<render.py encoder>", "exec"), self._namespace)  # noqa: S102
        function: Callable[[Any], Any] = self._namespace["encode"]
        return function


def _map(entry: Descriptor, renderer: Renderer) -> Encode:
    key_field = entry.fields_by_name["key"]
    key_convert = scalar(key_field)
    bool_keys = key_field.type == FieldDescriptor.TYPE_BOOL
    value_convert = renderer.element(entry.fields_by_name["value"])

    def map_key(key: Any) -> str:
        if bool_keys:
            return "true" if key else "false"
        return str(key if key_convert is None else key_convert(key))

    def encode_map(container: Any) -> dict[str, Any]:
        items = container.items()
        if value_convert is None:
            return {map_key(k): v for k, v in items}
        return {map_key(k): value_convert(v) for k, v in items}

    return encode_map


def status_json(status: status_pb2.Status) -> bytes:
    """The body of an error: google.rpc.Status as JSON, details as Any with "@type"."""
    details: list[dict[str, Any]] = []
    for detail in status.details:
        try:
            details.append(json_format.MessageToDict(detail, preserving_proto_field_name=True))
        except (TypeError, KeyError):
            # A detail type this process does not know: keep its bytes, as
            # the JSON form of an unknown Any cannot be written otherwise.
            details.append({"@type": detail.type_url, "value": encode_bytes(detail.value)})
    return dumps({"code": status.code, "message": status.message, "details": details})
