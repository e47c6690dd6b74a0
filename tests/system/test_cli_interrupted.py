"""`spur-runs seed`, `migrate` and `backup` stopped half-way, as an operator
or a supervisor stops them: Ctrl-C (SIGINT), SIGTERM (Kubernetes, systemd,
`timeout`), or a disk that fills. Each says so in one line, with the
signal's exit code (128 + N), and leaves nothing half-done behind: no
runs of an unfinished load, no partial copy beside a backup's DEST."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import disks
from tools import spur_runs


def runs_in(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT count(*) FROM runs").fetchone()[0])


def test_a_full_disk_during_a_sqlite_seed_says_so(tmp_path: Path) -> None:
    """SQLite rolls the load back itself on SQLITE_FULL; the seed's own
    ROLLBACK then failed, and its error was what the operator read."""
    with disks.small_disk(tmp_path / "disk") as disk:
        path = disk / "runs.db"
        url = f"sqlite:///{path}"
        assert spur_runs("migrate", "--database-url", url).returncode == 0
        result = spur_runs("seed", "--database-url", url, "--runs", "20000")
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            "spur-runs seed: database or disk is full (--log-level DEBUG for the traceback)"
        ]
        assert runs_in(path) == 0
