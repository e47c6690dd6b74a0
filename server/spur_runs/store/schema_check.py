"""Start-up checks: are PySpur's tables there, and the indexes our queries
rely on?

Without the tables nothing can work, and retrying will not help: `serve`,
`seed` and `demo` stop with one line naming `spur-runs migrate` (exit 2). A
database PySpur made lacks the indexes (storage.md: no index on
tasks.run_id). The service still works, slowly; it says so in one line and
names the fix.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, inspect, text
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from ..config import ConfigError
from .engine import create_db_engine, normalize_url, shown_url
from .migrations import OUR_TABLES, PYSPUR_REVISIONS, PYSPUR_VERSION_TABLE
from .models import SERVICE_INDEXES, Base, TaskStatus

log = logging.getLogger(__name__)


def missing_sqlite_file(database_url: str) -> Path | None:
    """The file of a SQLite URL when it does not exist (connecting would
    create an empty one); None for one that exists, memory, or PostgreSQL."""
    url = normalize_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = Path(url.database)
    return None if path.exists() else path


def usable_url(database_url: str) -> URL:
    """The URL, normalized; ConfigError (one line, exit 2) for one no
    command can use: one SQLAlchemy cannot read, or SQLite in memory (each
    command's connection would have an empty database of its own)."""
    try:
        url = normalize_url(database_url)
    except ArgumentError as error:
        raise ConfigError(f"the database URL is not one SQLAlchemy can read: {error}") from None
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        shown = shown_url(url)
        raise ConfigError(f"{shown} names no database file (a memory database holds no runs)")
    return url


def never_opens(error: Exception, url: URL) -> ConfigError | None:
    """For SQLite's errors that no retry mends (a folder, not a database, a
    read-only file or folder, opened or written), the one line to stop with, saying which it
    is; None for any other error (a server down, a file locked: the caller
    decides)."""
    cause = getattr(error, "orig", None) or error
    if url.get_backend_name() != "sqlite":
        return None
    name = str(getattr(cause, "sqlite_errorname", ""))
    if name not in _NEVER_OPENS and not name.startswith("SQLITE_READONLY"):
        return None
    path = Path(url.database or "")
    if path.is_dir():
        why = "; it is a folder: name a file in it"
    elif not path.parent.is_dir():
        why = f"; the folder {path.parent} does not exist"
    elif not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        # SQLite writes beside the file too: its -wal, -shm and -journal.
        why = (
            f"; {path} or its folder is not writable (read-only, or not this user's), "
            "and SQLite writes both"
        )
    else:
        why = ""
    return ConfigError(f"{shown_url(url)}: {str(cause).splitlines()[0]}{why}")


def require_tables(database_url: str, replica: bool = False) -> None:
    """ConfigError (one line, exit 2) unless PySpur's tables are there.
    Errors reaching the database are the caller's (SQLAlchemyError).
    `replica`: the URL is --read-database-url, named as the setting at
    fault, and a standby is not migrated: it has its primary's tables."""
    url = usable_url(database_url)
    shown = shown_url(url)
    fix = f"run `spur-runs migrate --database-url {shown}` first"
    at_fault: tuple[str, ...] = ()
    if replica:
        fix = "a read replica of --database-url has its tables: is it the right database?"
        at_fault = ("read_database_url",)
    path = missing_sqlite_file(database_url)
    if path is not None:
        raise ConfigError(f"the database file {path} does not exist: {fix}")
    engine = create_db_engine(database_url, pool_size=1)
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            present = set(inspector.get_table_names())
            reflected = {name: inspector.get_columns(name) for name in OUR_TABLES & present}
            pyspur_revision = (
                connection.scalar(text(f"SELECT max(version_num) FROM {PYSPUR_VERSION_TABLE}"))
                if PYSPUR_VERSION_TABLE in present
                else None
            )
    except SQLAlchemyError as error:
        stop = never_opens(error, url)
        if stop is None:
            raise  # may answer later: a server down, a file locked (the caller decides)
        raise stop from None
    finally:
        engine.dispose()
    missing = sorted(OUR_TABLES - present)
    if missing:
        raise ConfigError(
            f"{shown} has no table {', '.join(missing)} (not migrated): {fix}", *at_fault
        )
    columns = {table: {c["name"] for c in found} for table, found in reflected.items()}
    lacking = [
        f"{table}.{column}"
        for table in sorted(columns)
        for column in sorted(_model_columns(table) - columns[table])
    ]
    if lacking:
        more = f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""
        why = _fix_for(pyspur_revision)
        raise ConfigError(
            f"{shown} lacks the column(s) {', '.join(lacking[:5])}{more}: {why}", *at_fault
        )
    labels = _missing_task_statuses(reflected["tasks"])
    if labels:
        raise ConfigError(
            f"{shown} lacks the task status(es) {', '.join(labels)} in its enum type "
            f"taskstatus: {_fix_for(pyspur_revision)}",
            *at_fault,
        )


def _fix_for(pyspur_revision: str | None) -> str:
    """What to do about a schema that lacks something this build reads,
    by the PySpur revision its alembic_version records."""
    newest = PYSPUR_REVISIONS[-1]
    if pyspur_revision in PYSPUR_REVISIONS and pyspur_revision != newest:
        # An older PySpur's database: its own migrations add what is missing.
        return (
            f"PySpur schema revision {pyspur_revision} is older than {newest}, PySpur "
            "0.1.18's: upgrade PySpur, whose migrations add them, then start again"
        )
    return "its tables are not PySpur's (another version, or another application's)"


def _missing_task_statuses(columns: list[Any]) -> list[str]:
    """The TaskStatus labels a native enum type of tasks.status lacks
    (PostgreSQL's `taskstatus`; on SQLite the column is a plain string).
    Our statements compare tasks.status with each of them (WatchRun's digest
    of a run's tasks; the paused nodes when a run's tasks do not fit in one
    read, in GetRunTasks, GetRun, ListRuns), and PostgreSQL refuses a value
    outside the type: those RPCs failed INTERNAL on the database of PySpur
    0.1.5, whose migrations stop at 006, before 007 adds PAUSED
    (docs/storage.md, "Older PySpur releases"). The run statuses are not
    checked: a ListRuns filter binds a label `runstatus` lacks as NULL
    (store/runs.py), and no other statement compares runs.status with a
    value."""
    [status] = [column for column in columns if column["name"] == "status"]
    enums = getattr(status["type"], "enums", None)
    if enums is None:
        return []
    return [label.value for label in TaskStatus if label.value not in enums]


# SQLite's errors for a path that no wait will make a database.
_NEVER_OPENS = frozenset(("SQLITE_NOTADB", "SQLITE_CANTOPEN", "SQLITE_CORRUPT"))


def _model_columns(table: str) -> set[str]:
    return {column.name for column in Base.metadata.tables[table].columns}


def _predicate(options: Mapping[str, Any], table: str) -> str | None:
    """The WHERE of a partial index, normalized ("parent_run_id is null"),
    from model or reflected dialect options ("postgresql_where", ...)."""
    for key, value in options.items():
        if key.endswith("_where") and value is not None:
            text = str(value).replace(f"{table}.", "")
            return re.sub(r'[\s()"]+', " ", text).strip().lower()
    return None


def _invalid_indexes(engine: Engine) -> set[str]:
    """PostgreSQL indexes that a failed or interrupted concurrent build left
    INVALID: reflected like the others, never used by the planner."""
    if engine.dialect.name != "postgresql":
        return set()
    with engine.connect() as connection:
        found = connection.execute(
            text(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE NOT i.indisvalid AND c.relnamespace = current_schema()::regnamespace"
            )
        )
        return {str(name) for name in found.scalars()}


def missing_indexes(engine: Engine) -> list[str]:
    """Names of SERVICE_INDEXES whose columns no valid index of the table
    leads with (a partial index counts only with the same predicate, and only
    for one)."""
    inspector = inspect(engine)
    invalid = _invalid_indexes(engine)
    missing = []
    for index in SERVICE_INDEXES:
        assert index.table is not None
        table = index.table.name
        wanted = ([c.name for c in index.columns], _predicate(index.dialect_kwargs, table))
        present = [
            (
                list(existing["column_names"])[: len(wanted[0])],
                _predicate(existing.get("dialect_options", {}), table),
            )
            for existing in inspector.get_indexes(table)
            if existing["name"] not in invalid
        ]
        if wanted not in present:
            missing.append(str(index.name))
    return missing


def warn_missing_indexes(engine: Engine) -> list[str]:
    try:
        missing = missing_indexes(engine)
    except Exception as error:  # noqa: BLE001 - the database may be down at start-up
        log.warning("could not check the database's indexes: %s", error)
        return []
    if missing:
        log.warning(
            "indexes missing (%s): queries will scan whole tables; run `spur-runs migrate` "
            "to add them (it changes nothing else)",
            ", ".join(missing),
        )
    return missing
