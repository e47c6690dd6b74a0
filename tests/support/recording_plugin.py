"""A protoc plugin that records what it is asked for (tests/system/test_buf_gen.py
runs it in place of each real plugin): one JSON file describing the
CodeGeneratorRequest, the files to generate and their options after buf's
managed mode."""

from __future__ import annotations

import hashlib
import json
import sys

from google.protobuf.compiler import plugin_pb2


def dump_request() -> None:
    """Plugin mode: answer with one JSON file describing the request."""
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    files = {f.name: f for f in request.proto_file}
    described = {
        name: {
            "go_package": files[name].options.go_package,
            "java_package": files[name].options.java_package,
            "java_multiple_files": files[name].options.java_multiple_files,
            "services": [s.name for s in files[name].service],
            "parameter": request.parameter,
        }
        for name in request.file_to_generate
    }
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    # buf may call a plugin several times (per directory, per input): one
    # file per call, named after the files it was asked for.
    key = hashlib.sha256("\n".join(request.file_to_generate).encode()).hexdigest()[:12]
    response.file.add(name=f"request-{key}.json", content=json.dumps(described))
    sys.stdout.buffer.write(response.SerializeToString())


if __name__ == "__main__":
    dump_request()
