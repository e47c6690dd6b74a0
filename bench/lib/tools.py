"""What the bench installs: h2load and wrk, and bench/.data/venv (the PySpur peer, matplotlib)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from collections.abc import Sequence
from pathlib import Path

from .common import TOOLS_VENV, log

# PySpur 0.1.18 without its ~50 dependencies, plus what its Runs router and
# models import, at the versions PySpur pins (pydantic and SQLAlchemy set most
# of its cost). uvicorn[standard] (uvloop, httptools) is what a full
# `pip install pyspur` brings along (through chromadb): the peer at its best.
PEER_PACKAGES = [
    "fastapi==0.115.6",
    "pydantic==2.10.5",
    "sqlalchemy==2.0.36",
    "loguru==0.7.3",
    "jinja2==3.1.6",
    "uvicorn[standard]",
    "psycopg2-binary==2.9.10",  # PySpur's PostgreSQL driver
]
TOOL_PACKAGES = ["matplotlib"]


def ensure_tools() -> None:
    """h2load and wrk, from apt-get when missing."""
    missing = [
        pkg
        for tool, pkg in (("h2load", "nghttp2-client"), ("wrk", "wrk"))
        if not shutil.which(tool)
    ]
    if not missing:
        return
    log(f"installing {', '.join(missing)} with apt-get")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)


def _pip(venv_dir: Path, *args: str) -> None:
    # Quiet: pip warns about each of PySpur's ~50 requirements left out on purpose.
    done = subprocess.run(
        [
            str(venv_dir / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            *args,
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def ensure_tools_venv(profile: bool = False) -> Path:
    """bench/.data/venv with the PySpur peer and matplotlib; returns its python."""
    python = TOOLS_VENV / "bin" / "python"
    wanted = ["pyspur==0.1.18 (--no-deps)", *PEER_PACKAGES, *TOOL_PACKAGES]
    if profile:
        wanted.append("py-spy")
    stamp = TOOLS_VENV / ".bench-packages"
    try:
        installed = set(json.loads(stamp.read_text()))
    except (OSError, ValueError):  # none yet, or another format: install again
        installed = set()
    if python.exists() and set(wanted) <= installed:
        return python
    log(f"installing the peer and chart tools into {TOOLS_VENV}")
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(TOOLS_VENV)
    _pip(TOOLS_VENV, "--no-deps", "pyspur==0.1.18")
    _pip(TOOLS_VENV, *PEER_PACKAGES, *TOOL_PACKAGES, *(["py-spy"] if profile else []))
    # Whatever else PySpur's models and router import would show here.
    check = (
        "import importlib, pkgutil, pyspur.models as m\n"
        "for i in pkgutil.walk_packages(m.__path__, 'pyspur.models.'):\n"
        "    importlib.import_module(i.name)\n"
        "import pyspur.api.run_management, matplotlib, uvicorn\n"
    )
    env = {**os.environ, "SQLITE_OVERRIDE_DATABASE_URL": "sqlite://"}
    subprocess.run([str(python), "-c", check], check=True, env=env)
    stamp.write_text(json.dumps(sorted(set(wanted) | installed)))
    return python


def package_versions(python: Path, names: Sequence[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = '-'\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [str(python), "-c", code, *names], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def tool_versions() -> dict[str, str]:
    h2load = subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    return {
        "h2load": h2load.split("\n")[0].strip(),
        "wrk": wrk.split("\n")[0].split(" [")[0].strip(),
    }
