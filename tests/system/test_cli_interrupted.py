"""`spur-runs seed`, `migrate` and `backup` stopped half-way, as an operator
or a supervisor stops them: Ctrl-C (SIGINT), SIGTERM (Kubernetes, systemd,
`timeout`), or a disk that fills. Each says so in one line, with the
signal's exit code (128 + N), and leaves nothing half-done behind: no
runs of an unfinished load, no partial copy beside a backup's DEST."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import disks
from tools import spur_runs, tool

LOADING = 2_000_000  # far more runs than any test lets a load finish


@contextmanager
def started(*args: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [tool("spur-runs"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)


def wait_for(path: Path, process: subprocess.Popen[str]) -> None:
    """Until `path` exists (what the command makes once its work began)."""
    while not path.exists():
        assert process.poll() is None, process.communicate()
        try:
            process.wait(timeout=0.01)
        except subprocess.TimeoutExpired:
            pass


def runs_in(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT count(*) FROM runs").fetchone()[0])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_a_sqlite_seed_rolls_it_back(tmp_path: Path, signum: int) -> None:
    """The load runs in one transaction; its statements are interrupted
    through the connection's progress handler. That read as "cannot
    rollback - no transaction is active", exit 1 (SQLite had rolled back
    itself, and the second ROLLBACK's error hid the interrupt); SIGTERM
    ended the process with no word."""
    path = tmp_path / "runs.db"
    url = f"sqlite:///{path}"
    assert spur_runs("migrate", "--database-url", url).returncode == 0
    with started("seed", "--database-url", url, "--runs", str(LOADING)) as process:
        # The load switches the file to a rollback journal (seed/sqlite.py):
        # the journal is there while the load's transaction is.
        wait_for(path.with_name("runs.db-journal"), process)
        process.send_signal(signum)
        _out, err = process.communicate(timeout=60)
    name = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
    assert err.strip().splitlines() == [f"spur-runs seed: interrupted{name}"]
    assert process.returncode == 128 + signum
    assert runs_in(path) == 0
    again = spur_runs("seed", "--database-url", url, "--runs", "9")
    assert again.returncode == 0, again.stderr
    assert runs_in(path) == 9


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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_during_a_backup_leaves_no_partial_copy(tmp_path: Path, signum: int) -> None:
    """The copy is written beside DEST, then linked into place; SIGTERM's
    default and SIGHUP's (a closing SSH session), dying at once, left that
    partial copy behind, as large as the database, under a hidden name no
    later backup removes. The backup is
    held at its start by a writer's lock (a database in rollback-journal
    mode: its readers wait for an exclusive lock), so that the signal comes
    while the copy is open."""
    path = tmp_path / "runs.db"
    url = f"sqlite:///{path}"
    assert spur_runs("migrate", "--database-url", url).returncode == 0
    assert spur_runs("seed", "--database-url", url, "--runs", "20").returncode == 0
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode=DELETE").close()
        writer.execute("BEGIN EXCLUSIVE")
        dest = tmp_path / "copy.db"
        with started("backup", "--database-url", url, str(dest)) as process:
            wait_for(tmp_path / f".copy.db.{process.pid}.partial", process)
            process.send_signal(signum)
            writer.execute("ROLLBACK")
            _out, err = process.communicate(timeout=60)
    finally:
        writer.close()
    name = signal.Signals(signum).name
    assert err.strip().splitlines() == [f"spur-runs backup: interrupted by {name}"]
    assert process.returncode == 128 + signum
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.db"]


def test_main_puts_the_signal_handlers_back(tmp_path: Path) -> None:
    """main() in a process of its own, as a program embedding it would call
    it: after a one-shot command, SIGINT, SIGTERM and SIGHUP are handled as
    before it (they stayed turned into KeyboardInterrupt)."""
    url = f"sqlite:///{tmp_path / 'no.db'}"
    code = (
        "import signal, sys\n"
        "from spur_runs.cli import main\n"
        "names = ('SIGINT', 'SIGTERM', 'SIGHUP')\n"
        "before = [signal.getsignal(getattr(signal, n)) for n in names]\n"
        f"assert main(['backup', '--database-url', '{url}', 'x.db']) == 2\n"
        "after = [signal.getsignal(getattr(signal, n)) for n in names]\n"
        "print(after == before)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "True", result.stdout + result.stderr
