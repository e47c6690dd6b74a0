"""Paths of the command-line tools the dev extra installs next to Python."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    """A tool from this environment's bin folder (or PATH); fails when absent,
    since `pip install -e '.[dev]'` installs every one of them."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return found
