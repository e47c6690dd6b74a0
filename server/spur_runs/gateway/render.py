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

Two choices where the JSON forms allow either: a number that is integral is
written without ".0" (as protojson, grpc-gateway's encoder, writes 1 rather
than 1.0), and a NaN or infinite double is written as the strings
"NaN"/"Infinity"/"-Infinity", as proto3 JSON requires; in a
google.protobuf.Value, which proto3 JSON gives no form for them
(json_format refuses), as null, as PySpur's answers have them.
"""

from __future__ import annotations

import base64
import keyword
import math
import struct
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import status_pb2

from ..api.spliced import Spliced
from ..errors import DataLoss
from ..rpc.status import NESTED_TOO_DEEPLY

Encode = Callable[[Any], Any]

# Struct contents at least this large (serialized) are converted once per
# distinct content and remembered, up to _MEMO_SIZE of them.
_MEMO_MIN_BYTES = 512
_MEMO_SIZE = 512
_EPOCH = datetime(1970, 1, 1)
_INT64_TYPES = frozenset(
    (
        FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64,
    )
)  # fmt: skip


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


# --- scalars ---


def _number(value: float) -> float | int | str:
    if value.is_integer():
        # Integral and exactly representable: 3 rather than 3.0 (but -0.0
        # keeps its sign, which only a float can carry).
        if abs(value) <= 2**53 and (value or math.copysign(1.0, value) > 0):
            return int(value)
        return value
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


_FLOAT32 = struct.Struct("<f")


def _shortest_float32(value: float) -> float:
    """The double with the fewest significant digits (6 to 9) that is the
    same 32-bit float as `value`: what json_format prints for a float field.
    (protobuf's own helper lives in google.protobuf.internal, which is not
    public API; this is the same loop.)"""
    precision = 6  # every 32-bit float needs between 6 and 9 digits
    rounded = float(f"{value:.{precision}g}")
    while _FLOAT32.unpack(_FLOAT32.pack(rounded))[0] != value:
        precision += 1
        rounded = float(f"{value:.{precision}g}")
    return rounded


def _float32(value: float) -> float | int | str:
    # A float field holds a 32-bit value: its shortest decimal form, as
    # json_format prints it, rather than the double it widens to.
    return _number(_shortest_float32(value) if math.isfinite(value) else value)


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _scalar(field: FieldDescriptor) -> Encode | None:
    """The converter of a scalar field's Python value, None when it is the
    value itself (strings, booleans, 32-bit integers)."""
    kind = field.type
    if kind in _INT64_TYPES:
        return str
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return _number
    if kind == FieldDescriptor.TYPE_FLOAT:
        return _float32
    if kind == FieldDescriptor.TYPE_BYTES:
        return _bytes
    if kind == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        if enum.full_name == "google.protobuf.NullValue":
            return lambda _value: None
        names = {value.number: value.name for value in enum.values}
        # An unknown number (a newer server's value) stays a number, as in json_format.
        return lambda value: names.get(value, value)
    return None


# --- well-known types ---


# The text of recent whole seconds: a run's and its tasks' times mostly fall
# in a few seconds, and the datetime arithmetic is most of a Timestamp's cost.
_SECONDS: dict[int, str] = {}
_SECONDS_SIZE = 4096


def _whole_seconds(seconds: int) -> str:
    text = _SECONDS.get(seconds)
    if text is None:
        text = (_EPOCH + timedelta(seconds=seconds)).isoformat()
        if len(_SECONDS) >= _SECONDS_SIZE:
            _SECONDS.clear()
        _SECONDS[seconds] = text
    return text


def _timestamp(message: Any) -> str:
    seconds, nanos = message.seconds, message.nanos
    text = _whole_seconds(seconds)
    if not nanos:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{nanos // 1_000:06d}Z"
    return f"{text}.{nanos:09d}Z"


# --- PySpur's forms (Renderer(pyspur=True)) ---


def _naive_timestamp(message: Any) -> str:
    """A time as PySpur's answers write it: the naive UTC datetime it stores,
    as pydantic (datetime.isoformat) writes one: no offset, microseconds
    only when there are any. PySpur's own UI reads run times as
    `Date.parse(time + "Z")`, which is NaN for a time that has its "Z"
    already (a review, 2026-12-04)."""
    text = _whole_seconds(message.seconds)
    micros = message.nanos // 1_000  # PySpur's times hold microseconds at most
    return f"{text}.{micros:06d}" if micros else text


def _float(value: float) -> float | None:
    """A double field (duration, percentage_complete) as pydantic writes a
    float: 100.0, not 100; NaN and the infinities as null."""
    return value if math.isfinite(value) else None


def _value(message: Any) -> Any:
    # The kinds by how often a run's JSON holds them. A Struct's map is read
    # by key rather than through .items(), which protobuf's map container
    # inherits from collections.abc as a Python generator (15% slower).
    kind = message.WhichOneof("kind")
    if kind == "string_value":
        return message.string_value
    if kind == "struct_value":
        fields = message.struct_value.fields
        return {key: _value(fields[key]) for key in fields}
    if kind == "number_value":
        number = _number(message.number_value)
        # NaN or an infinity: null, as PySpur's own answers have them
        # (pydantic), where proto3 JSON has no form for them in a Value
        # ("NaN" would read back as a string). Stored ones are None already
        # (engine.load_json); this is for any other Value.
        return None if type(number) is str else number
    if kind == "list_value":
        return [_value(item) for item in message.list_value.values]
    if kind == "bool_value":
        return message.bool_value
    return None  # null_value, or a Value with no kind set


def _struct(message: Any) -> dict[str, Any]:
    fields = message.fields
    return {key: _value(fields[key]) for key in fields}


def _list_value(message: Any) -> list[Any]:
    return [_value(item) for item in message.values]


def _memo(convert: Callable[[Any], Any]) -> Encode:
    """`convert` with its results remembered by serialized bytes, for
    contents at least _MEMO_MIN_BYTES long. Equal bytes mean equal content;
    the converted object is only ever read (by orjson), so it is shared.
    Smaller contents are converted each time: serializing them to look them
    up would cost as much. A closure rather than an object with __call__:
    one call less per field.

    Only Structs are memoized: a run's workflow definition is one, the same
    for every run of its version. Values (a task's inputs and outputs, a
    run's outputs) differ from run to run, and asking each one its size cost
    a third of a GetRun's rendering for no hit (seed data)."""
    done: OrderedDict[bytes, Any] = OrderedDict()

    def memoized(message: Any) -> Any:
        if not message.fields:
            return {}  # a stored {} (initial_inputs, often): nothing to size
        # Serialized straight away rather than sized first: for the large
        # Structs that are looked up, ByteSize walked them a second time.
        key = message.SerializeToString()
        if len(key) < _MEMO_MIN_BYTES:
            return convert(message)
        found = done.get(key)
        if found is None:
            found = done[key] = convert(message)
            if len(done) > _MEMO_SIZE:
                done.popitem(last=False)
        else:
            done.move_to_end(key)
        return found

    return memoized


def _wrapper(descriptor: Descriptor) -> Encode:
    convert = _scalar(descriptor.fields_by_name["value"])
    if convert is None:
        return lambda message: message.value
    return lambda message: convert(message.value)


def _generic(message: Message) -> Any:
    # Any, Duration, FieldMask, Empty: rare in responses, left to json_format.
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class Renderer:
    """The encoders of one gateway, built once per message type. Not shared
    between threads: each gateway renders on its own event loop.

    `pyspur`: the bodies of PySpur's own paths (an HttpRule with a
    response_body: `/run/...`), whose JSON is PySpur's pydantic's rather
    than proto3's where the two differ: a time is naive UTC
    (_naive_timestamp) and a double field a float (_float)."""

    def __init__(self, *, pyspur: bool = False) -> None:
        self._pyspur = pyspur
        self._messages: dict[str, MessageEncoder] = {}
        self._building = 0
        # (namespace, name, encoder): a generated function's reference to a
        # message type's encoder, swapped for its function once built.
        self._pending: list[tuple[dict[str, Any], str, MessageEncoder]] = []
        self._versions: OrderedDict[bytes, Any] = OrderedDict()  # see _version
        self._well_known: dict[str, Encode] = {
            "google.protobuf.Timestamp": _naive_timestamp if pyspur else _timestamp,
            "google.protobuf.Struct": _memo(_struct),
            "google.protobuf.Value": _value,
            "google.protobuf.ListValue": _list_value,
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
                return _float
            return _scalar(field)
        name = message.full_name
        if name in self._well_known:
            return self._well_known[name]
        if name.startswith("google.protobuf.") and name.endswith("Value"):
            return _wrapper(message)  # DoubleValue, Int64Value, ...
        if name.startswith("google.protobuf."):
            return _generic  # Any, Duration, FieldMask, Empty
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
            document = encode(response.message)
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
            if len(self._versions) > _MEMO_SIZE:
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
    key_convert = _scalar(key_field)
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
            details.append({"@type": detail.type_url, "value": _bytes(detail.value)})
    return dumps({"code": status.code, "message": status.message, "details": details})
