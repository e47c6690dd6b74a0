"""`spur-runs backup DEST`: a consistent copy of the SQLite database, safe
while the server serves and PySpur writes.

A plain `cp` of a database in WAL mode copies the main file without the
committed transactions still in `-wal`, and may catch a page mid-write.
SQLite's online backup API copies the database as one read transaction
sees it (WAL included); in WAL mode that read blocks no writer, and copying
every page in one step means no concurrent write can make it start over.

The copy goes to a temporary file beside DEST and is renamed into place only
once complete and checked (`PRAGMA quick_check`), so DEST is never a half
copy. PostgreSQL has its own tools (pg_dump); the command says so.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy import URL

from ..config import ConfigError
from .schema_check import missing_sqlite_file, never_opens, usable_url


def backup(database_url: str, dest: str, *, busy_seconds: float = 10.0) -> str:
    """Copy the SQLite database to `dest` (which must not exist); a one-line
    summary. ConfigError for what no retry fixes."""
    url = usable_url(database_url)  # a URL, and no memory database
    if url.get_backend_name() != "sqlite":
        raise ConfigError(
            "backup copies SQLite databases; for PostgreSQL use pg_dump "
            "(e.g. pg_dump -Fc -f pyspur.dump DBNAME)"
        )
    assert url.database  # usable_url refused a memory database
    missing = missing_sqlite_file(database_url)
    if missing is not None:
        raise ConfigError(f"the database file {missing} does not exist")
    target = Path(dest)
    if target.is_dir() or dest.endswith(("/", os.sep)):
        # Path() drops a trailing "/": `backup backups/` wrote a file named
        # backups where the operator meant a folder.
        raise ConfigError(
            f"{dest} is a folder: DEST is the copy's file name (e.g. {target / 'spur-runs.db'})"
        )
    if os.path.lexists(target):  # a dangling symlink too, which exists() follows
        raise ConfigError(f"{target} exists already: backup never overwrites a file")
    if not target.parent.is_dir():
        raise ConfigError(f"the folder {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        # Else the failure to create the partial copy in it was hidden by
        # the failure to remove it ("Read-only file system: '.DEST.N.partial'").
        raise ConfigError(
            f"the folder {target.parent} is not writable (read-only, or not this user's): "
            "choose another DEST"
        )
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    # mode=rw: never create the source (it only reads; read-only mode
    # could not open a WAL database whose -shm file is not there yet).
    try:
        source = sqlite3.connect(
            Path(url.database).resolve().as_uri() + "?mode=rw", uri=True, timeout=busy_seconds
        )
    except sqlite3.Error as error:
        raise _stop(error, url) from None
    try:
        copy = sqlite3.connect(partial)
        try:
            try:
                source.backup(copy)  # pages=-1: all in one step, one snapshot
            except sqlite3.Error as error:
                raise _stop(error, url) from None
            # One self-contained file (the server turns WAL back on).
            copy.execute("PRAGMA journal_mode=DELETE").close()
            check = copy.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise RuntimeError(f"the copy failed its check: {check}")
            has_runs = copy.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'runs'"
            ).fetchone()[0]
            runs = copy.execute("SELECT count(*) FROM runs").fetchone()[0] if has_runs else 0
        finally:
            copy.close()
        # A hard link fails if DEST appeared meanwhile (another backup, any
        # writer), where os.replace would overwrite it: never overwrite.
        try:
            os.link(partial, target)
        except FileExistsError:
            raise ConfigError(
                f"{target} was created while the backup ran: backup never overwrites a file"
            ) from None
        except OSError:
            # A file system without hard links (vfat, SMB, object-storage
            # mounts): the check and the rename, with their short race.
            if target.exists():
                raise ConfigError(
                    f"{target} was created while the backup ran: backup never overwrites a file"
                ) from None
            os.replace(partial, target)
        else:
            partial.unlink()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    size = target.stat().st_size
    return f"backed up {url.database} to {target} ({runs} runs, {size:,} bytes)"


def _stop(error: sqlite3.Error, url: URL) -> Exception:
    """What to raise for an error reading the source: a ConfigError saying
    what to fix when no retry mends it (a folder, not a database, read-only),
    else the error itself."""
    return never_opens(error, url) or error
