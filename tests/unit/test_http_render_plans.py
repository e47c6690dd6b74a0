"""render.py's generated encoders (one function per message type) write,
byte for byte, json_format's document plus a null for each unset field with
presence, keys in field order, an integral double without ".0": checked on
many random messages of every field kind (gateway_testproto.Everything) and
of the RunService's own (runs with tasks, ListRuns pages), with {} Structs,
NaN/Infinity doubles, large integers and non-ASCII text.

The reference is built here from json_format, not from render.py: the
document of test_http_render.expected, its keys put in field order and its
numbers written as render_values.py documents it writes them."""

from __future__ import annotations

import math
import random
import string
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway_testproto import load
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur_runs.gateway.render import Renderer

T = load()
_TEXT = string.ascii_letters + string.digits + ' "\\\n\t\x00\x1f/<>&é日本語🙂\u2028'


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(_TEXT) for _ in range(rng.randrange(0, 12)))


def _json(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value as a Struct holds one: numbers are doubles (2**60 too,
    which a double holds exactly), {} and [] at any depth."""
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return _text(rng)
    if kind == 1:
        return rng.choice([0, -0.0, 1, -7, 0.1, 2.5, 1e300, -1e-300, 2**53, 2**53 + 2, 2**60])
    if kind == 2:
        return rng.choice([True, False])
    if kind == 3:
        return None
    if kind == 4:
        return rng.choice([{}, []])
    if kind in (5, 6):
        return {_text(rng): _json(rng, depth + 1) for _ in range(rng.randrange(0, 4))}
    return [_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]


_INTS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_DOUBLES = [0.0, -0.0, 3.0, -2.5, 0.1, 1e300, 2.0**60, math.nan, math.inf, -math.inf]


def _scalar(field: FieldDescriptor, rng: random.Random) -> Any:
    kind = field.type
    if kind in _INTS:
        low, high = _INTS[kind]
        return rng.choice([low, high, 0, 1, -1 if low else 2, rng.randint(low, high)])
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return rng.choice(_DOUBLES)
    if kind == FieldDescriptor.TYPE_BOOL:
        return rng.choice([True, False])
    if kind == FieldDescriptor.TYPE_STRING:
        return _text(rng)
    if kind == FieldDescriptor.TYPE_BYTES:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 6)))
    assert kind == FieldDescriptor.TYPE_ENUM and field.enum_type is not None
    return rng.choice([v.number for v in field.enum_type.values])


def _well_known(target: Message, rng: random.Random) -> None:
    name = target.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        target.seconds = rng.choice([0, -62135596800, 253402300799, rng.randrange(2**31)])  # type: ignore[attr-defined]
        target.nanos = rng.choice([0, 1_000_000, 123_000, 999_999_999])  # type: ignore[attr-defined]
    elif name == "google.protobuf.Struct":
        fields = {_text(rng): _json(rng, 1) for _ in range(rng.randrange(0, 4))}
        target.update(rng.choice([{}, fields]))  # type: ignore[attr-defined]
    elif name == "google.protobuf.Value":
        json_format.ParseDict(_json(rng), target)
    elif name == "google.protobuf.ListValue":
        target.extend([_json(rng, 1) for _ in range(rng.randrange(0, 3))])  # type: ignore[attr-defined]
    elif name == "google.protobuf.Duration":
        target.FromJsonString(rng.choice(["0s", "-1.5s", "3600.000001s"]))  # type: ignore[attr-defined]
    elif name == "google.protobuf.FieldMask":
        target.paths.extend(["a.b", "c"][: rng.randrange(3)])  # type: ignore[attr-defined]
    elif name == "google.protobuf.Any":
        target.Pack(T.Inner(name=_text(rng)))  # type: ignore[attr-defined]
    elif name == "google.protobuf.Empty":
        target.SetInParent()
    else:  # a wrapper
        value = _scalar(target.DESCRIPTOR.fields_by_name["value"], rng)
        target.value = value  # type: ignore[attr-defined]


def _fill(message: Message, rng: random.Random, depth: int = 0) -> Message:
    """Each field set, or left unset, at random."""
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.25 or (field.message_type is not None and depth > 2):
            continue
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            container = getattr(message, field.name)
            key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
            for _ in range(rng.randrange(0, 3)):
                key = _scalar(key_field, rng)
                if value_field.message_type is None:
                    container[key] = _scalar(value_field, rng)
                elif value_field.message_type.full_name.startswith("google.protobuf."):
                    _well_known(container[key], rng)
                else:
                    _fill(container[key], rng, depth + 1)
        elif field.is_repeated:
            container = getattr(message, field.name)
            for _ in range(rng.randrange(0, 3)):
                if entry is None:
                    container.append(_scalar(field, rng))
                elif entry.full_name.startswith("google.protobuf."):
                    _well_known(container.add(), rng)
                else:
                    _fill(container.add(), rng, depth + 1)
        elif entry is None:
            setattr(message, field.name, _scalar(field, rng))
        elif entry.full_name.startswith("google.protobuf."):
            _well_known(getattr(message, field.name), rng)
        else:
            _fill(getattr(message, field.name), rng, depth + 1)
    return message


# --- the reference ---


def _add_nulls(message: Message, document: dict[str, Any]) -> None:
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        synthetic = oneof is not None and oneof.name == "_" + field.name
        if field.has_presence and not field.is_repeated and not message.HasField(field.name):
            if oneof is None or synthetic:
                document[field.name] = None


def _number(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) <= 2**53 and (value or math.copysign(1.0, value) > 0):
        return int(value)
    return value


def _numbers(value: Any) -> Any:
    """Integral doubles without ".0", larger ones as doubles (json_format may
    write a Value's 2**60 as an int), in every Struct/Value/ListValue."""
    if isinstance(value, dict):
        return {key: _numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers(item) for item in value]
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        return float(value)
    return value


def _ordered(message: Message, document: dict[str, Any]) -> dict[str, Any]:
    """json_format's document of `message` with nulls, keys in field order."""
    _add_nulls(message, document)
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.name not in document:
            continue  # an unset member of a real oneof
        value, entry = document[field.name], field.message_type
        if entry is None:
            if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
                value = [_numbers(v) for v in value] if field.is_repeated else _numbers(value)
        elif entry.GetOptions().map_entry:
            inner = entry.fields_by_name["value"].message_type
            items = getattr(message, field.name)
            if inner is not None and not inner.full_name.startswith("google.protobuf."):
                value = {str(k): _ordered(items[k], value[str(k)]) for k in items}
            elif inner is not None:
                value = _numbers(value)
        elif entry.full_name == "google.protobuf.Any" and value is not None:
            # render.py leaves Any to json_format without the unset fields
            # of the message it holds (as before the generated encoders).
            value = json_format.MessageToDict(
                getattr(message, field.name), preserving_proto_field_name=True
            )
        elif entry.full_name.startswith("google.protobuf."):
            value = _numbers(value) if entry.full_name.endswith(("Struct", "Value")) else value
        elif field.is_repeated:
            value = [
                _ordered(m, d) for m, d in zip(getattr(message, field.name), value, strict=True)
            ]
        elif value is not None:
            value = _ordered(getattr(message, field.name), value)
        out[field.name] = value
    return out


def reference(message: Message) -> bytes:
    document = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return orjson.dumps(_ordered(message, document))


def _no_special_values(message: Message) -> bool:
    """json_format cannot write a NaN or infinite number inside a Value."""
    try:
        json_format.MessageToJson(message)
    except (ValueError, json_format.SerializeToJsonError):
        return False
    return True


@pytest.mark.parametrize(
    "kind",
    [T.Everything, run_pb2.Run, run_pb2.Task, pb.ListRunsResponse],
    ids=["Everything", "Run", "Task", "ListRunsResponse"],
)
def test_generated_encoders_write_json_formats_bytes(kind: Any) -> None:
    rng = random.Random(17)
    renderer = Renderer()
    encode = renderer.response(kind.DESCRIPTOR)
    checked = 0
    for _ in range(300):
        message = _fill(kind(), rng)
        if not _no_special_values(message):
            continue
        assert encode(message) == reference(message), message
        checked += 1
    assert checked > 200


def test_response_body_field_is_the_fields_json() -> None:
    """An HttpRule's response_body: only that field, a message (GetRun's
    run) or a repeated one (ListRuns' runs, PySpur's bare list)."""
    rng = random.Random(5)
    renderer = Renderer()
    run_body = renderer.response(pb.GetRunResponse.DESCRIPTOR, "run")
    list_body = renderer.response(pb.ListRunsResponse.DESCRIPTOR, "runs")
    for _ in range(100):
        response = _fill(pb.ListRunsResponse(), rng)
        if not _no_special_values(response):
            continue
        assert list_body(response) == orjson.dumps(orjson.loads(reference(response))["runs"])
        for run in response.runs:
            # (a copy: its Structs' maps may iterate in another order)
            single = pb.GetRunResponse(run=run)
            assert run_body(single) == reference(single.run)
    assert run_body(pb.GetRunResponse()) == b"null"


def test_structs_keep_empty_objects_and_memoized_ones_stay_equal() -> None:
    """{} and [] at every depth stay themselves; a large Struct (memoized)
    renders the same the second time, and a changed one is not served from
    the memo."""
    run = run_pb2.Run(id="R1")
    run.initial_inputs.update({"a": {}, "b": [], "c": [{}, []], "d": {"e": {}}})
    run.workflow_version.definition.update({"nodes": [{"id": "n" * 600, "cfg": {}}]})
    encode = Renderer().response(run_pb2.Run.DESCRIPTOR)
    first = encode(run)
    assert first == encode(run) == reference(run)
    assert b'"initial_inputs":{"a":{},"b":[],"c":[{},[]],"d":{"e":{}}}' in first or (
        orjson.loads(first)["initial_inputs"] == {"a": {}, "b": [], "c": [{}, []], "d": {"e": {}}}
    )
    run.workflow_version.definition["nodes"][0]["cfg"] = {"x": 1}  # type: ignore[index]
    assert encode(run) == reference(run) != first


def _keyword_descriptor() -> Descriptor:
    """A message whose field names are Python keywords: the generated source
    must read them with getattr."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="kw_test.proto", package="kw", syntax="proto3")
    message = proto.message_type.add(name="Keywords")
    for number, name in enumerate(["from", "class", "None", "lambda", "m", "d"], start=1):
        message.field.add(
            name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    found = pool.FindMessageTypeByName("kw.Keywords")
    message_factory.GetMessageClass(found)
    return found


def test_field_names_that_are_python_keywords() -> None:
    from google.protobuf import message_factory

    descriptor = _keyword_descriptor()
    message = message_factory.GetMessageClass(descriptor)()
    for name in ("from", "class", "None", "lambda", "m", "d"):
        setattr(message, name, f"<{name}>")
    assert Renderer().response(descriptor)(message) == reference(message)
