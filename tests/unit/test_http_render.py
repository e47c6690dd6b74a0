"""The gateway's JSON encoder (render.py) says what json_format says, on
every kind of field (gateway_testproto.Everything) and on the RunService's
own messages, plus a null for each unset field with presence; and its
output parses back (json_format.Parse) into the message it came from."""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from gateway_testproto import load
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur_runs.gateway.render import Renderer, status_json

T = load()


def render(message: Message) -> Any:
    return json.loads(Renderer().response(message.DESCRIPTOR)(message))


def expected(message: Message) -> Any:
    """json_format's document, with null for every unset field with
    presence outside a real oneof, recursively."""
    document = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _add_nulls(message, document)
    return document


def _add_nulls(message: Message, document: dict[str, Any]) -> None:
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        synthetic = oneof is not None and oneof.name == "_" + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_type = field.message_type.fields_by_name["value"].message_type
            if value_type is not None and not value_type.full_name.startswith("google.protobuf"):
                for key, item in getattr(message, field.name).items():
                    _add_nulls(item, document[field.name][str(key)])
            continue
        if field.is_repeated:
            if field.message_type is not None and not field.message_type.full_name.startswith(
                "google.protobuf"
            ):
                for item, doc in zip(
                    getattr(message, field.name), document[field.name], strict=True
                ):
                    _add_nulls(item, doc)
            continue
        if not message.HasField(field.name) if field.has_presence else False:
            if oneof is None or synthetic:
                document[field.name] = None
            continue
        if field.message_type is not None and not field.message_type.full_name.startswith(
            "google.protobuf"
        ):
            _add_nulls(getattr(message, field.name), document[field.name])


def same(a: Any, b: Any) -> None:
    """Equal JSON values; NaN equals NaN, and 3 equals 3.0 (render_values.py
    writes an integral number without ".0", as protojson does)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (a, b)
        for key in a:
            same(a[key], b[key])
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (a, b)
        for x, y in zip(a, b, strict=True):
            same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b)
    else:
        assert a == b and type(a) in (type(b), int, float) and type(b) in (type(a), int, float), (
            a,
            b,
        )


def full() -> Message:
    m = T.Everything(
        d=-2.5,
        f=0.1,
        i32=-7,
        i64=-(2**62),
        u32=2**32 - 1,
        u64=2**64 - 1,
        s32=-3,
        s64=2**63 - 1,
        fx32=9,
        fx64=10,
        sf32=-11,
        sf64=-12,
        b=True,
        s='héllo "quoted" \n 日本 \x00',
        by=b"\x00\xff binary",
        color=2,
        opt="",
        opt64=0,
        r64=[1, -(2**63)],
        colors=[1, 2, 0],
        m64={"a": 1, "b": -(2**40)},
        mb={True: "yes", False: "no"},
        a="chosen",
        rd=[1.0, 0.5, -0.0, 1e300],
        rby=[b"", b"\x01"],
        ratio=100.0,
    )
    m.inner.name = "in"
    m.inner.children.add(name="kid", big=3)
    m.inners.add(name="x")
    m.inners.add()
    m.mi[5].name = "five"
    m.mi[-1].children.add()
    m.ts.FromJsonString("2026-11-02T09:00:00.123456Z")
    m.tss.add(seconds=0)
    m.tss.add(seconds=-62135596800)  # 0001-01-01
    m.tss.add(seconds=253402300799, nanos=999999999)  # 9999-12-31T23:59:59.999999999
    m.dur.FromJsonString("-1.5s")
    m.st.update({"k": [1, 2.5, "x", None, True, {"deep": {}}], "n": 3})
    m.v.string_value = "value"
    m.lv.extend([1, "two", None])
    m.w64.value = 2**53 + 1
    m.ws.value = ""
    m.wb.value = False
    m.fm.paths.extend(["a.b", "c"])
    m.any.Pack(struct_pb2.Value(number_value=1.5))
    m.empty.SetInParent()
    m.mv["x"].string_value = "y"
    m.mv["n"].null_value = 0
    return m


@pytest.mark.parametrize(
    "make",
    [
        full,
        lambda: T.Everything(),  # nothing set: defaults and nulls
        lambda: T.Everything(in_choice=T.Inner(name="c"), d=math.nan, f=math.inf, rd=[-math.inf]),
        lambda: T.Everything(v=struct_pb2.Value(struct_value={"big": 2**60, "f": 0.1})),
    ],
    ids=["full", "empty", "oneof-and-specials", "value-numbers"],
)
def test_matches_json_format(make: Any) -> None:
    message = make()
    same(render(message), expected(message))


def test_output_parses_back_to_the_message() -> None:
    message = full()
    assert (
        json_format.Parse(Renderer().response(message.DESCRIPTOR)(message), T.Everything())
        == message
    )
    # An unset google.protobuf.Value is written null, which reads back as a
    # Value holding null (proto3 JSON cannot tell them apart; protojson's
    # EmitUnpopulated writes the same). Every other null reads back unset.
    back = json_format.Parse(
        Renderer().response(T.Everything.DESCRIPTOR)(T.Everything()), T.Everything()
    )
    assert back.v.WhichOneof("kind") == "null_value"
    back.ClearField("v")
    assert back == T.Everything()


def test_run_messages_match_json_format() -> None:
    run = run_pb2.Run(id="R1", status=run_pb2.Run.PAUSED, duration=2.0, task_count=2)
    run.start_time.FromJsonString("2026-11-02T09:00:00Z")
    run.initial_inputs.update({"input_node": {"q": "hi", "n": 1}})
    run.outputs.list_value.extend([1, {"a": None}])
    run.tasks.add(id="T1", run_id="R1", status=run_pb2.Task.COMPLETED, error="")
    run.tasks.add(id="T2", run_id="R1", is_downstream_of_pause=True)
    run.workflow_version.definition.update({"nodes": [{"id": "n" * 600}]})  # memoized size
    response = pb.ListRunsResponse(runs=[run, run_pb2.Run(id="R2")], next_page_token="t")
    renderer = Renderer()
    encode = renderer.response(response.DESCRIPTOR)
    for _ in range(2):  # the second time from the memo
        same(json.loads(encode(response)), expected(response))


def test_integral_numbers_have_no_fraction() -> None:
    text = Renderer().response(T.Everything.DESCRIPTOR)(
        T.Everything(d=3.0, v=struct_pb2.Value(number_value=4.0))
    )
    assert b'"d":3,' in text and b'"v":4,' in text


def test_nan_and_infinity_are_null_in_a_value_and_strings_in_a_double() -> None:
    """PySpur's json.dumps stores NaN in its JSON columns and its answers
    (pydantic) write null; a double field keeps proto3 JSON's strings."""
    task = run_pb2.Task(id="T1")
    task.outputs.struct_value.update({"n": math.nan, "big": math.inf, "ok": 1.5})
    task.inputs.list_value.extend([-math.inf])
    body = render(task)
    assert body["outputs"] == {"n": None, "big": None, "ok": 1.5}
    assert body["inputs"] == [None]
    assert render(T.Everything(d=math.nan))["d"] == "NaN"


def test_status_json_renders_any_details() -> None:
    status = status_pb2.Status(code=3, message="bad")
    status.details.add().Pack(struct_pb2.Value(string_value="x"))
    status.details.add(type_url="type.googleapis.com/acme.Unknown", value=b"\x01\x02")
    assert json.loads(status_json(status)) == {
        "code": 3,
        "message": "bad",
        "details": [
            {"@type": "type.googleapis.com/google.protobuf.Value", "value": "x"},
            {
                "@type": "type.googleapis.com/acme.Unknown",
                "value": base64.b64encode(b"\x01\x02").decode(),
            },
        ],
    }


def _float32_values() -> list[float]:
    """32-bit floats of every kind: a sweep over the bit patterns (both
    signs, all exponents), subnormals, the largest, and decimals that a
    float cannot hold exactly."""
    patterns = list(range(1, 2**32, 2**32 // 4099))
    patterns += [0x00000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0x3F800001, 0x4B800001]
    values = [struct.unpack("<f", struct.pack("<I", bits))[0] for bits in patterns]
    values += [0.1, 1 / 3, 2.2, 16777217.0, 3.4028235e38, 1e-45, 123456.789]
    return [v for v in values if math.isfinite(v)]


def test_float_fields_are_printed_as_json_format_prints_them() -> None:
    """A float field's value widened to a double is printed in the shortest
    decimal form of the 32-bit float, as json_format's own helper does
    (render_values.py reimplements it: protobuf's lives in
    google.protobuf.internal)."""
    encode = Renderer().response(T.Everything.DESCRIPTOR)
    checked = 0
    for value in _float32_values():
        message = T.Everything(f=value)
        got = json.loads(encode(message))["f"]
        want = json_format.MessageToDict(message, preserving_proto_field_name=True)["f"]
        same(got, want)
        assert repr(float(got)) == repr(float(want)), (value, got, want)
        checked += 1
    assert checked > 4000


@pytest.mark.parametrize("micros", [0, 246_000, 246, 1, 999_999])
def test_pyspur_bodies_write_times_and_floats_as_pydantic_does(micros: int) -> None:
    """PySpur's paths (a response_body) answer what PySpur's pydantic
    schemas write: a naive UTC time, microseconds only when there are any,
    and a float field as a float. PySpur's UI reads `Date.parse(t + "Z")`."""
    from datetime import datetime

    from pydantic import TypeAdapter

    when = datetime(2026, 11, 2, 9, 0, 5, micros)
    run = run_pb2.Run(id="R1", duration=300.0, percentage_complete=100.0)
    run.start_time.FromDatetime(when)
    response = pb.GetRunResponse(run=run)
    body = Renderer(pyspur=True).response(response.DESCRIPTOR, "run")(response)
    document = json.loads(body)
    assert document["start_time"] == json.loads(TypeAdapter(datetime).dump_json(when))
    assert b'"duration":300.0' in body and b'"percentage_complete":100.0' in body
    # The whole message (/v1/...) keeps proto3 JSON's forms.
    whole = json.loads(Renderer().response(response.DESCRIPTOR)(response))
    assert whole["run"]["start_time"] == run.start_time.ToJsonString()
    assert whole["run"]["duration"] == 300 and type(whole["run"]["duration"]) is int
