"""A throwaway service, compiled at test time, whose HTTP rules and messages
use what RunService does not: templates with `**`, nested and multi-segment
variables, custom verbs and methods, additional bindings, bodies, and every
kind of field. The gateway's parts are tested on it without a server."""

from __future__ import annotations

import sys
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

from google.api import annotations_pb2  # noqa: F401 - registers google/api/*.proto
from google.protobuf import (
    any_pb2,  # noqa: F401 - the imports register the well-known types
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,  # noqa: F401
    empty_pb2,  # noqa: F401
    field_mask_pb2,  # noqa: F401
    message_factory,
    struct_pb2,  # noqa: F401
    timestamp_pb2,  # noqa: F401
    wrappers_pb2,  # noqa: F401
)

from tools import ROOT

PROTO = """
syntax = "proto3";
package gwtest;

import "google/api/annotations.proto";
import "google/protobuf/any.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

// A color.
enum Color {
  COLOR_UNSPECIFIED = 0;
  // Red, as in stop.
  RED = 1;
  GREEN = 2;
}

// A part of a thing.
message Inner {
  // The name of the part.
  string name = 1;
  int64 big = 2;
  repeated Inner children = 3;
}

message Everything {
  double d = 1;
  float f = 2;
  int32 i32 = 3;
  int64 i64 = 4;
  uint32 u32 = 5;
  uint64 u64 = 6;
  sint32 s32 = 7;
  sint64 s64 = 8;
  fixed32 fx32 = 9;
  fixed64 fx64 = 10;
  sfixed32 sf32 = 11;
  sfixed64 sf64 = 12;
  bool b = 13;
  string s = 14;
  bytes by = 15;
  Color color = 16;
  optional string opt = 17;
  optional int64 opt64 = 18;
  Inner inner = 19;
  repeated Inner inners = 20;
  repeated int64 r64 = 21;
  repeated Color colors = 22;
  map<string, int64> m64 = 23;
  map<int32, Inner> mi = 24;
  map<bool, string> mb = 25;
  oneof choice {
    string a = 26;
    Inner in_choice = 27;
  }
  google.protobuf.Timestamp ts = 28;
  google.protobuf.Duration dur = 29;
  google.protobuf.Struct st = 30;
  google.protobuf.Value v = 31;
  google.protobuf.ListValue lv = 32;
  google.protobuf.Int64Value w64 = 33;
  google.protobuf.StringValue ws = 34;
  google.protobuf.FieldMask fm = 35;
  google.protobuf.Any any = 36;
  google.protobuf.Empty empty = 37;
  repeated google.protobuf.Timestamp tss = 38;
  google.protobuf.BoolValue wb = 39;
  repeated double rd = 40;
  map<string, google.protobuf.Value> mv = 41;
  repeated bytes rby = 42;
  double ratio = 43;
}

message Request {
  // The thing's name.
  string name = 1;
  Inner inner = 2;
  repeated string tags = 3;
  Color color = 4;
  int32 n = 5;
  map<string, string> labels = 6;
  google.protobuf.Timestamp since = 7;
  bool flag = 8;
  bytes raw = 9;
  double ratio = 10;
  google.protobuf.Int32Value limit = 11;
  uint64 big = 12;
  google.protobuf.FieldMask mask = 13;
  repeated Color colors = 14;
  google.protobuf.Struct blob = 15;
}

// Things, for testing.
service Things {
  // Gets a thing.
  rpc Get(Request) returns (Everything) {
    option (google.api.http) = {
      get: "/v1/{name=things/*}"
      additional_bindings { get: "/v1/things:search" }
    };
  }
  rpc Create(Request) returns (Everything) {
    option (google.api.http) = {post: "/v1/things" body: "*"};
  }
  rpc Update(Request) returns (Everything) {
    option (google.api.http) = {patch: "/v1/{inner.name=things/*/parts/**}" body: "inner"};
  }
  rpc Lock(Request) returns (google.protobuf.Empty) {
    option (google.api.http) = {
      custom: {kind: "LOCK" path: "/v1/{name}:lock"}
      response_body: ""
    };
  }
  rpc Tags(Request) returns (Request) {
    option (google.api.http) = {get: "/v1/tags/{n}" response_body: "tags"};
  }
  rpc Unrouted(Request) returns (Request);
}
"""


@cache
def load() -> SimpleNamespace:
    """The compiled file: .file, .Things (service), .Everything, .Request, .Inner."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "gwtest.proto"
        source.write_text(PROTO)
        out = Path(tmp) / "set.binpb"
        well_known = resources.files("grpc_tools") / "_proto"
        code = protoc.main(
            [
                "protoc",
                f"--proto_path={tmp}",
                f"--proto_path={ROOT / 'third_party' / 'googleapis'}",
                f"--proto_path={well_known}",
                "--include_source_info",
                f"--descriptor_set_out={out}",
                str(source),
            ]
        )
        if code != 0:
            sys.exit("cannot compile the test proto")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.Default()
    try:
        file = pool.FindFileByName("gwtest.proto")
    except KeyError:
        file = pool.Add(files.file[0])
    classes = {
        name: message_factory.GetMessageClass(file.message_types_by_name[name])
        for name in ("Everything", "Request", "Inner")
    }
    return SimpleNamespace(
        file=file, source=files, Things=file.services_by_name["Things"], **classes
    )
