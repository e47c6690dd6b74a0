"""`migrate` and `backup` given a SQLite database they can never open: a
memory database, a URL SQLAlchemy cannot read, a folder, a file that is no
database, a folder that does not exist, a read-only one. One line that says
which, and exit 2 (fix the set-up), as serve, seed and demo say it
(test_cli.py); they used to answer exit 1 with SQLite's or SQLAlchemy's own
words ("unable to open database file", "Invalid argument(s) 'max_overflow'
sent to create_engine()")."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

import disks
from pyspur_peer import pyspur_0_1_5_schema, pyspur_migrations
from spur_runs.store.engine import normalize_url, shown_url
from tools import spur_runs

COMMANDS = ("migrate", "migrate --sql", "backup")

# name: (make the path, the URL, what the line says)
CASES: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "memory": (lambda p: None, "sqlite://", "sqlite:// names no database file"),
    "unreadable URL": (lambda p: None, "sqlite:", "not one SQLAlchemy can read"),
    "a folder": (lambda p: p.mkdir(), "sqlite:///{p}", "it is a folder: name a file in it"),
    "no database": (
        lambda p: p.write_bytes(b"\x8f" * 4096),
        "sqlite:///{p}",
        "runs.db: file is not a database",
    ),
}


def refused(command: str, url: str, tmp_path: Path) -> str:
    """The one line `command` stops with, exit 2."""
    args = command.split() + ["--database-url", url]
    if command == "backup":
        args.append(str(tmp_path / "copy.db"))
    result = spur_runs(*args)
    lines = result.stderr.strip().splitlines()
    assert (result.returncode, len(lines)) == (2, 1), (result.returncode, result.stderr)
    assert lines[0].startswith(f"spur-runs {command.split()[0]}: "), lines[0]
    assert "Traceback" not in result.stderr and not result.stdout
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", list(CASES))
def test_a_database_that_can_never_open_is_exit_2(tmp_path: Path, command: str, case: str) -> None:
    make, url, fragment = CASES[case]
    path = tmp_path / "runs.db"
    make(path)
    assert fragment in refused(command, url.format(p=path), tmp_path)
    assert not (tmp_path / "copy.db").exists()


def test_migrate_into_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'runs.db'}"
    line = refused("migrate", url, tmp_path)
    assert line.endswith(f"; the folder {tmp_path / 'no'} does not exist"), line


@pytest.mark.parametrize("command", COMMANDS)
def test_a_read_only_database_says_so(tmp_path: Path, command: str) -> None:
    """A database on a read-only file system (a volume mounted read-only):
    SQLite cannot open it to write, nor write its -wal and -shm beside it."""
    folder = tmp_path / "data"
    folder.mkdir()
    url = f"sqlite:///{folder / 'runs.db'}"
    assert spur_runs("migrate", "--database-url", url).returncode == 0
    with disks.read_only(folder):
        line = refused(command, url, tmp_path)
    why = (
        f"; {folder / 'runs.db'} or its folder is not writable (read-only, or not this "
        "user's), and SQLite writes both"
    )
    assert line.endswith(why), line


def test_backup_into_a_read_only_folder_says_so(tmp_path: Path) -> None:
    """It said "[Errno 30] Read-only file system: '.copy.db.N.partial'", exit
    1: the error of removing the partial copy it never made."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    assert spur_runs("migrate", "--database-url", url).returncode == 0
    folder = tmp_path / "backups"
    folder.mkdir()
    with disks.read_only(folder):
        result = spur_runs("backup", "--database-url", url, str(folder / "copy.db"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"spur-runs backup: the folder {folder} is not writable (read-only, or not this "
        "user's): choose another DEST"
    ]


@pytest.mark.parametrize(("revision", "older"), [("007", True), ("010", False), (None, False)])
def test_an_older_pyspur_database_says_to_upgrade_pyspur(
    tmp_path: Path, revision: str | None, older: bool
) -> None:
    """A database an older PySpur made lacks a column this build reads: the
    fix is PySpur's own migrations, which the line now names when PySpur's
    alembic_version records an older revision (it said only "its tables are
    not PySpur's (another version, or another application's)")."""
    path = tmp_path / "runs.db"
    url = f"sqlite:///{path}"
    assert spur_runs("migrate", "--database-url", url).returncode == 0
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE tasks DROP COLUMN subworkflow_output")
        if revision is not None:
            connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
            connection.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    for command in ("serve", "seed", "demo"):
        args = [command, "--database-url", url]
        if command == "serve":
            args += ["--grpc-address", "127.0.0.1:0"]
        result = spur_runs(*args, timeout=60)
        assert result.returncode == 2, result.stderr
        why = (
            f"PySpur schema revision {revision} is older than 010, PySpur 0.1.18's: upgrade "
            "PySpur, whose migrations add them, then start again"
            if older
            else "its tables are not PySpur's (another version, or another application's)"
        )
        assert result.stderr.strip().splitlines() == [
            f"spur-runs {command}: {url} lacks the column(s) tasks.subworkflow_output: {why}"
        ]


def test_pyspur_0_1_5s_postgresql_database_says_to_upgrade_pyspur(postgres_url: str) -> None:
    """PySpur 0.1.5's migrations leave `taskstatus` without PAUSED (006):
    serve started, and GetRunTasks past a first page and WatchRun failed
    INTERNAL. serve, seed and demo now stop with exit 2 and one line naming
    the fix; migrate, which only adds indexes, still does (exit 0)."""
    pyspur_0_1_5_schema(postgres_url)
    migrated = spur_runs("migrate", "--database-url", postgres_url)
    assert migrated.returncode == 0, migrated.stderr
    for command in ("serve", "seed", "demo"):
        args = [command, "--database-url", postgres_url]
        if command == "serve":
            args += ["--grpc-address", "127.0.0.1:0"]
        result = spur_runs(*args, timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"spur-runs {command}: {shown_url(postgres_url)} lacks the task status(es) PAUSED "
            "in its enum type taskstatus: PySpur schema revision 006 is older than 010, PySpur "
            "0.1.18's: upgrade PySpur, whose migrations add them, then start again"
        ]


def test_seed_on_a_database_pyspurs_migrations_made_says_why_and_writes_nothing(
    postgres_url: str,
) -> None:
    """PySpur's own migrations make `runstatus` without CANCELED, which the
    demo's run R8 has: seed failed part way (exit 1, PostgreSQL's "invalid
    input value for enum runstatus"), after adding the demo workflows. Now
    it stops first: exit 2, one line, nothing written."""
    pyspur_migrations(postgres_url)
    assert spur_runs("migrate", "--database-url", postgres_url).returncode == 0
    result = spur_runs("seed", "--database-url", postgres_url, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"spur-runs seed: {shown_url(postgres_url)}'s run status type lacks CANCELED (PySpur's "
        "own migrations make it so), which the demo's runs have: seed a database that "
        "`spur-runs migrate` created"
    ]
    engine = create_engine(normalize_url(postgres_url))
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM workflows")).scalar_one() == 0
    finally:
        engine.dispose()


def test_a_database_another_process_is_writing_says_to_retry(tmp_path: Path) -> None:
    """SQLite's write lock held past the busy timeout (a seed's load, a
    migrate's index build, PySpur): exit 1, an operation that failed for
    now, and the line says so; "database is locked" alone read as broken."""
    path = tmp_path / "runs.db"
    url = f"sqlite:///{path}"
    assert spur_runs("migrate", "--database-url", url).returncode == 0
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN EXCLUSIVE")
        result = spur_runs("seed", "--runs", "1", "--database-url", url)
    finally:
        writer.close()
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "spur-runs seed: database is locked: another process is writing to it (PySpur, a "
        "seed, a migrate): run this again later (--log-level DEBUG for the traceback)"
    ]


@pytest.mark.parametrize("command", ["seed", "migrate"])
def test_writing_a_read_only_file_says_so(tmp_path: Path, command: str) -> None:
    """A file SQLite opens but cannot write (read-only, while its folder is
    writable): "attempt to write a readonly database", exit 1, read as an
    operation that failed, not a set-up to fix."""
    path = tmp_path / "runs.db"
    url = f"sqlite:///{path}"
    assert spur_runs("migrate", "--database-url", url).returncode == 0
    args = ["seed", "--runs", "1"] if command == "seed" else ["migrate"]
    with sqlite3.connect(path) as connection:  # so that migrate has work to do
        connection.execute("DROP INDEX ix_spur_runs_tasks_parent_task_id")
        connection.execute("UPDATE spur_runs_alembic_version SET version_num = '0003'")
    with disks.read_only(path):
        result = spur_runs(*args, "--database-url", url)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"spur-runs {command}: {url}: attempt to write a readonly database; {path} or its "
        "folder is not writable (read-only, or not this user's), and SQLite writes both"
    )
