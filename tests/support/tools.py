"""Paths of the command-line tools the dev extra installs next to Python."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def tool(name: str) -> str:
    """A tool from this environment's bin folder (or PATH); fails when absent,
    since `pip install -e '.[dev]'` installs every one of them."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return found


def spur_runs(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The installed `spur-runs` command, run to its end (in this process's
    environment, PYTHONPATH included, plus `env`)."""
    return subprocess.run(
        [tool("spur-runs"), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
