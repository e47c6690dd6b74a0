"""The JSON form of one field value: the scalars (64-bit integers as
strings, doubles, 32-bit floats, bytes, enums) and the well-known types
(Timestamp, Value/Struct/ListValue, the wrappers), as proto3's canonical
JSON has them, and the forms of PySpur's own bodies (Renderer(pyspur=True)).
render.py builds the encoder of each message type from these; they are its
converters, called once per value, so they stay plain module functions (a
generated encoder holds each one by name: no lookup through this module).
tests/unit/test_http_render.py checks them against json_format.

Two choices where the JSON forms allow either: a number that is integral is
written without ".0" (as protojson, grpc-gateway's encoder, writes 1 rather
than 1.0), and a NaN or infinite double is written as the strings
"NaN"/"Infinity"/"-Infinity", as proto3 JSON requires; in a
google.protobuf.Value, which proto3 JSON gives no form for them
(json_format refuses), as null, as PySpur's answers have them.
"""

from __future__ import annotations

import base64
import math
import struct
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

Encode = Callable[[Any], Any]

# Struct contents at least this large (serialized) are converted once per
# distinct content and remembered, up to MEMO_SIZE of them.
_MEMO_MIN_BYTES = 512
MEMO_SIZE = 512
_EPOCH = datetime(1970, 1, 1)
_INT64_TYPES = frozenset(
    (
        FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64,
    )
)  # fmt: skip


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


def encode_bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def scalar(field: FieldDescriptor) -> Encode | None:
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
        return encode_bytes
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


def encode_timestamp(message: Any) -> str:
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


def encode_naive_timestamp(message: Any) -> str:
    """A time as PySpur's answers write it: the naive UTC datetime it stores,
    as pydantic (datetime.isoformat) writes one: no offset, microseconds
    only when there are any. PySpur's own UI reads run times as
    `Date.parse(time + "Z")`, which is NaN for a time that has its "Z"
    already (a review, 2026-12-04)."""
    text = _whole_seconds(message.seconds)
    micros = message.nanos // 1_000  # PySpur's times hold microseconds at most
    return f"{text}.{micros:06d}" if micros else text


def encode_pyspur_float(value: float) -> float | None:
    """A double field (duration, percentage_complete) as pydantic writes a
    float: 100.0, not 100; NaN and the infinities as null."""
    return value if math.isfinite(value) else None


# --- Value, Struct, ListValue, the wrappers and the rest ---


def encode_value(message: Any) -> Any:
    # The kinds by how often a run's JSON holds them. A Struct's map is read
    # by key rather than through .items(), which protobuf's map container
    # inherits from collections.abc as a Python generator (15% slower).
    kind = message.WhichOneof("kind")
    if kind == "string_value":
        return message.string_value
    if kind == "struct_value":
        fields = message.struct_value.fields
        return {key: encode_value(fields[key]) for key in fields}
    if kind == "number_value":
        number = _number(message.number_value)
        # NaN or an infinity: null, as PySpur's own answers have them
        # (pydantic), where proto3 JSON has no form for them in a Value
        # ("NaN" would read back as a string). Stored ones are None already
        # (engine.load_json); this is for any other Value.
        return None if type(number) is str else number
    if kind == "list_value":
        return [encode_value(item) for item in message.list_value.values]
    if kind == "bool_value":
        return message.bool_value
    return None  # null_value, or a Value with no kind set


def encode_struct(message: Any) -> dict[str, Any]:
    fields = message.fields
    return {key: encode_value(fields[key]) for key in fields}


def encode_list_value(message: Any) -> list[Any]:
    return [encode_value(item) for item in message.values]


def memo(convert: Callable[[Any], Any]) -> Encode:
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
            if len(done) > MEMO_SIZE:
                done.popitem(last=False)
        else:
            done.move_to_end(key)
        return found

    return memoized


def wrapper(descriptor: Descriptor) -> Encode:
    convert = scalar(descriptor.fields_by_name["value"])
    if convert is None:
        return lambda message: message.value
    return lambda message: convert(message.value)


def encode_generic(message: Message) -> Any:
    # Any, Duration, FieldMask, Empty: rare in responses, left to json_format.
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
