"""buf.gen.yaml, the recipe README gives for Go and Java stubs, and
clients/ts/buf.gen.yaml, the one CI uses for the TypeScript client: local
plugins only, and what they feed them. Each plugin is replaced by a small one
(tests/support/recording_plugin.py) that writes down the CodeGeneratorRequest it
receives: the files to generate and their options after buf's managed mode.
(tests/system/test_ts_client.py runs the real protoc-gen-es.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tools import ROOT, tool

# The recording plugin buf runs in place of each real one.
PLUGIN = str(ROOT / "tests" / "support" / "recording_plugin.py")


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
        {"local": [sys.executable, PLUGIN], "out": out, "opt": out.split("/")[1]}
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
    plugin["local"] = [sys.executable, PLUGIN]
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
