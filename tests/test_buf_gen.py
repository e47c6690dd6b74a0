"""buf.gen.yaml, the recipe README gives for Go, TypeScript and Java stubs:
local plugins only, and what it feeds them. The Go, TS and Java plugins are
not installed here, so each is replaced by a small plugin (this file, run as
one) that writes down the CodeGeneratorRequest it receives: the files to
generate and their options after buf's managed mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from google.protobuf.compiler import plugin_pb2
from tools import ROOT, tool


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
        }
        for name in request.file_to_generate
    }
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    response.file.add(
        name=f"request-{request.parameter or 'none'}.json", content=json.dumps(described)
    )
    sys.stdout.buffer.write(response.SerializeToString())


def test_buf_gen_uses_local_plugins_and_sets_packages(tmp_path: Path) -> None:
    template = yaml.safe_load((ROOT / "buf.gen.yaml").read_text())
    plugins = template["plugins"]
    assert all(set(p) & {"local", "protoc_builtin"} and "remote" not in p for p in plugins)
    outputs = {p["out"] for p in plugins}
    assert outputs == {"gen/go", "gen/ts", "gen/java"}
    # Same inputs and managed mode, one recording plugin per output folder.
    template["plugins"] = [
        {"local": [sys.executable, __file__], "out": out, "opt": out.split("/")[1]}
        for out in sorted(outputs)
    ]
    (tmp_path / "buf.gen.yaml").write_text(yaml.safe_dump(template))
    result = subprocess.run(
        [tool("buf"), "generate", "--template", str(tmp_path / "buf.gen.yaml"),
         "-o", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for language in ("go", "ts", "java"):
        seen = json.loads(
            (tmp_path / "out" / "gen" / language / f"request-{language}.json").read_text()
        )
        # The contract only, not the vendored google/api files.
        assert sorted(seen) == ["spur/runs/v1/run.proto", "spur/runs/v1/run_service.proto"]
        service = seen["spur/runs/v1/run_service.proto"]
        assert service["services"] == ["RunService"]
        assert service["go_package"] == "example.com/spur-runs/gen/go/spur/runs/v1;runsv1"
        assert service["java_package"] == "com.example.spur.runs.v1"
        assert service["java_multiple_files"] is True


if __name__ == "__main__":
    dump_request()
