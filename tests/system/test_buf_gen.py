"""buf.gen.yaml, the recipe README gives for Go and Java stubs, and
clients/ts/buf.gen.yaml, the one CI uses for the TypeScript client: local
plugins only, and what they feed them. Each plugin is replaced by a small one
(this file, run as one) that writes down the CodeGeneratorRequest it
receives: the files to generate and their options after buf's managed mode.
(tests/test_ts_client.py runs the real protoc-gen-es.)"""

from __future__ import annotations

import hashlib
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


def requests_seen(out: Path) -> dict[str, dict[str, object]]:
    """What the recording plugin was asked for, over all its calls."""
    seen: dict[str, dict[str, object]] = {}
    for written in out.glob("request-*.json"):
        seen.update(json.loads(written.read_text()))
    return seen


def test_buf_gen_uses_local_plugins_and_sets_packages(tmp_path: Path) -> None:
    template = yaml.safe_load((ROOT / "buf.gen.yaml").read_text())
    plugins = template["plugins"]
    assert all(set(p) & {"local", "protoc_builtin"} and "remote" not in p for p in plugins)
    outputs = {p["out"] for p in plugins}
    assert outputs == {"gen/go", "gen/java"}
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
    for language in ("go", "java"):
        seen = requests_seen(tmp_path / "out" / "gen" / language)
        # The contract only, not the vendored google/api files.
        assert sorted(seen) == ["spur/runs/v1/run.proto", "spur/runs/v1/run_service.proto"]
        service = seen["spur/runs/v1/run_service.proto"]
        assert service["parameter"] == language
        assert service["services"] == ["RunService"]
        assert service["go_package"] == "example.com/spur-runs/gen/go/spur/runs/v1;runsv1"
        assert service["java_package"] == "com.example.spur.runs.v1"
        assert service["java_multiple_files"] is True


def test_ts_template_generates_the_contract_and_the_google_files_it_needs(tmp_path: Path) -> None:
    template = yaml.safe_load((ROOT / "clients" / "ts" / "buf.gen.yaml").read_text())
    (plugin,) = template["plugins"]
    # The plugin from clients/ts's own npm packages, run from the repo root.
    assert plugin["local"] == "clients/ts/node_modules/.bin/protoc-gen-es"
    assert plugin["out"] == "clients/ts/src/gen"
    assert "target=ts" in plugin["opt"]
    plugin["local"] = [sys.executable, __file__]
    plugin["opt"] = ",".join(plugin["opt"])
    (tmp_path / "buf.gen.yaml").write_text(yaml.safe_dump(template))
    result = subprocess.run(
        [tool("buf"), "generate", "--template", str(tmp_path / "buf.gen.yaml"),
         "-o", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = requests_seen(tmp_path / "out" / "clients" / "ts" / "src" / "gen")
    # The contract, google/api/* (its imports), google/rpc/error_details.proto
    # (BadRequest); not the well-known types, which @bufbuild/protobuf ships.
    assert sorted(seen) == [
        "google/api/annotations.proto",
        "google/api/field_behavior.proto",
        "google/api/http.proto",
        "google/rpc/error_details.proto",
        "spur/runs/v1/run.proto",
        "spur/runs/v1/run_service.proto",
    ]
    assert seen["spur/runs/v1/run_service.proto"]["services"] == ["RunService"]
    assert seen["spur/runs/v1/run.proto"]["parameter"] == "target=ts,import_extension=js"


if __name__ == "__main__":
    dump_request()
