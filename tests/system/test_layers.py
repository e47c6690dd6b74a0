"""The package's layers hold (pyproject.toml's [tool.importlinter]: cli >
runtime | seed > gateway > rpc > api > store > shared leaves, no gRPC below
the frame, no cycles), and lint-imports does fail when an import breaks one:
a copy of the package with one bad import added must be refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tools import ROOT, tool


def _lint(server: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first: it wins over the editable install, so that the copy
    # is the spur_runs analysed. No cache: nothing written into the tree.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(server), str(ROOT / "generated")])}
    return subprocess.run(
        [tool("lint-imports"), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_contracts_hold() -> None:
    result = _lint(ROOT / "server", ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # Storage reaching up into the service.
        ("store/runs.py", "from ..api import convert", "Layers"),
        # The RPC frame reaching up into the process that assembles it.
        ("rpc/limits.py", "from ..runtime import server", "Layers"),
        # Storage learning of gRPC.
        ("store/db.py", "import grpc", "know nothing of gRPC"),
        # Two modules of one package importing each other.
        ("api/convert.py", "from . import versions", "No import cycles"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    copy = tmp_path / "server"
    shutil.copytree(
        ROOT / "server" / "spur_runs",
        copy / "spur_runs",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    path = copy / "spur_runs" / module
    path.write_text(path.read_text() + f"\n{line}\n")
    result = _lint(copy, tmp_path)
    assert result.returncode != 0, result.stdout
    broken = [row for row in result.stdout.splitlines() if row.endswith(" BROKEN")]
    assert any(contract in row for row in broken), result.stdout
