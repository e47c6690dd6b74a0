"""The wheel installs beside PyPI's unrelated `spur` (an SSH library).

Our stubs' import name is `spur.runs.v1`; `spur` and `spur.runs` are
namespace packages (PEP 420, protos/generate.py). The wheel used to ship an
empty spur/__init__.py: installed after PyPI's spur 0.3.23 it overwrote that
package's own (`import spur; spur.LocalShell` broke), and uninstalled it
deleted it. Both are installed here into one fresh environment: PyPI's
spur with its dependencies (paramiko: `import spur` needs it), from the
package index, then ours --no-deps from the wheel built from this tree, and
the two packages its modules import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tools import ROOT

PYPI_SPUR = "spur==0.3.23"
# What spur.runs.v1's modules import (no grpc: run_service_pb2 alone).
STUB_DEPENDENCIES = ("protobuf", "googleapis-common-protos")
CHECK = """
import importlib.resources, spur, spur.runs.v1.run_service_pb2 as pb
assert callable(spur.LocalShell), spur
assert pb.DESCRIPTOR.package == "spur.runs.v1"
assert importlib.resources.files("spur.runs.v1").joinpath("descriptor_set.binpb").is_file()
"""


def _run(*command: str | Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return done.stdout


def _wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of this tree (pip builds in the tree it is given)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("server", "generated"):
        shutil.copytree(ROOT / name, tree / name, ignore=ignore)
    out = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", out, tree)  # fmt: skip
    (wheel,) = out.glob("spur_runs-*.whl")
    return wheel


def test_the_wheel_installs_beside_pypi_spur(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "spur/runs/v1/run_service_pb2.py" in names and "spur/runs/v1/py.typed" in names
    assert not [n for n in names if n in ("spur/__init__.py", "spur/runs/__init__.py")], names
    assert not [n for n in names if n.startswith("spur/") and n.count("/") == 1], names

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    pip = (sys.executable, "-m", "pip", "--python", python)
    # PyPI's spur first, then ours over it: both import.
    _run(*pip, "install", "-q", PYPI_SPUR, *STUB_DEPENDENCIES)
    _run(*pip, "install", "-q", "--no-deps", wheel)
    _run(python, "-c", CHECK)
    # Ours uninstalled: PyPI's spur is whole.
    _run(*pip, "uninstall", "-y", "-q", "spur-runs")
    _run(python, "-c", "import spur; assert callable(spur.LocalShell)")
