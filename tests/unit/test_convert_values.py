"""JSON to google.protobuf.Value (api/convert.py) against protobuf's own
json_format.ParseDict: the same message for every shape of document, empty
objects and lists kept as such at every depth (the seed's `{}` fidelity)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from wire_rows import DOCUMENTS

from spur_runs.api import convert


@pytest.mark.parametrize("document", DOCUMENTS, ids=repr)
def test_set_value_builds_what_json_format_parses(document: Any) -> None:
    ours = struct_pb2.Value()
    convert.set_value(ours, document)
    expected = json_format.ParseDict(document, struct_pb2.Value())
    assert ours == expected
    assert ours.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )
    assert json_format.MessageToDict(ours) == document


def test_an_empty_object_in_a_list_is_an_object_not_null() -> None:
    value = struct_pb2.Value()
    convert.set_value(value, {"a": [{}, []]})
    items = value.struct_value.fields["a"].list_value.values
    assert [item.WhichOneof("kind") for item in items] == ["struct_value", "list_value"]
