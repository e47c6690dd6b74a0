"""Regenerate the Python code in generated/ from the protos in protos/.

    python protos/generate.py            # rewrite generated/
    python protos/generate.py --out DIR  # write elsewhere (the staleness test)

Also writes generated/spur/runs/v1/descriptor_set.binpb: the FileDescriptorSet
of the protos with their comments (source info), which the _pb2 modules leave
out and the HTTP gateway's OpenAPI document and reflection read them from.

`spur` and `spur.runs` are namespace packages (PEP 420: no __init__.py):
PyPI has an unrelated `spur` (an SSH library) whose spur/__init__.py an
__init__.py of ours overwrote when installed, and deleted when uninstalled.
Only the packages that hold modules (spur/runs/v1) are regular packages,
each with its PEP 561 marker (py.typed) and the data files.

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
# The regular package that holds the descriptor set (a namespace package
# holds no files of ours: they would land in another distribution's folder).
DESCRIPTOR_PACKAGE = Path("spur", "runs", "v1")
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
    (out / DESCRIPTOR_PACKAGE).mkdir(parents=True, exist_ok=True)
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
        f"--descriptor_set_out={out / DESCRIPTOR_PACKAGE / DESCRIPTOR_SET}",
        "--include_source_info",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)
    # protoc writes modules, not packages: the folders that hold modules
    # become packages (__init__.py) with the PEP 561 marker, so that
    # `spur.runs.v1` installs and type-checks; the folders above them stay
    # namespace packages (no __init__.py, nothing of ours in them).
    modules = {p.parent for p in (out / PACKAGE).rglob("*.py")}
    for directory in sorted(modules):
        (directory / "__init__.py").write_text("")
        (directory / "py.typed").write_text("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GENERATED)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
