"""Regenerate the Python code in generated/ from the protos in protos/.

    python protos/generate.py            # rewrite generated/
    python protos/generate.py --out DIR  # write elsewhere (the staleness test)

Also writes generated/spur/descriptor_set.binpb: the FileDescriptorSet of the
protos with their comments (source info), which the _pb2 modules leave out
and the HTTP gateway's OpenAPI document reads its descriptions from.

Uses grpcio-tools' bundled protoc and mypy-protobuf's plugins (for the .pyi
stubs), both pinned in pyproject.toml's `dev` extra so that the output is
byte-for-byte reproducible. Generated files are never edited by hand.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
VENDORED = ROOT / "third_party" / "googleapis"
GENERATED = ROOT / "generated"
PACKAGE = "spur"
DESCRIPTOR_SET = "descriptor_set.binpb"


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed next to this Python (mypy-protobuf)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        sys.exit(f"{name} not found: pip install -e '.[dev]'")
    return found


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    if (out / PACKAGE).exists():
        shutil.rmtree(out / PACKAGE)
    (out / PACKAGE).mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTOS}",
        f"--proto_path={VENDORED}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        f"--descriptor_set_out={out / PACKAGE / DESCRIPTOR_SET}",
        "--include_source_info",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)
    # protoc writes modules, not packages: add the __init__.py files and the
    # PEP 561 marker so that `spur.runs.v1` installs and type-checks.
    for directory in sorted(p for p in (out / PACKAGE).rglob("*") if p.is_dir()):
        (directory / "__init__.py").write_text("")
    (out / PACKAGE / "__init__.py").write_text("")
    (out / PACKAGE / "py.typed").write_text("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GENERATED)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
