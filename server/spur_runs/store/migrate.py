"""`spur-runs migrate`: bring a database to our newest schema revision.

On an empty database it creates PySpur's tables (revision 0001) and the
indexes our queries need (0002, 0003, 0004). On a database PySpur made it adds the missing
indexes and records our version in `spur_runs_alembic_version`, and changes
nothing else. Running it again does nothing.

Each revision runs in a transaction of its own, so that the index revisions
can build their indexes on PostgreSQL outside any transaction, with CREATE
INDEX CONCURRENTLY (migrations/index_ops.py): PySpur keeps writing meanwhile.
An interrupted migrate leaves the revisions before it recorded, and the next
one goes on from there.

The Alembic configuration is built here, in code: no alembic.ini.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO


class _AlembicChatter(logging.Filter):
    """Drops Alembic's INFO chatter ("setup plugin ...", logged on import;
    "Context impl SQLiteImpl." on every connection) and keeps the lines that
    say which revisions ran."""

    NOISE = ("setup plugin", "Context impl", "Will assume")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOISE)


for _name in ("alembic.runtime.plugins", "alembic.runtime.migration"):
    logging.getLogger(_name).addFilter(_AlembicChatter())

# After the filter: importing alembic.command already logs.
from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import Connection, Engine, inspect, text  # noqa: E402

from .engine import WRITE_OPTION, create_db_engine, normalize_url, shown_url  # noqa: E402
from .migrations import (  # noqa: E402
    PYSPUR_REVISIONS,
    PYSPUR_VERSION_TABLE,
    SCRIPT_LOCATION,
    VERSION_TABLE,
)
from .schema_check import missing_indexes, missing_sqlite_file  # noqa: E402

log = logging.getLogger(__name__)


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic Config for our migrations (no file behind it)."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("version_table", VERSION_TABLE)
    if database_url is not None:
        # The Config's values go through configparser interpolation: "%" in a
        # password must be doubled.
        url = normalize_url(database_url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _revision_of(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _recorded(connection: Connection, table: str) -> tuple[str, ...]:
    """The revisions an Alembic version table records (none without it)."""
    context = MigrationContext.configure(connection, opts={"version_table": table})
    return context.get_current_heads()


@dataclass(frozen=True)
class Unknown:
    """Revisions a database records that this build does not know."""

    ours: tuple[str, ...]  # of spur_runs_alembic_version: a newer spur-runs migrated it
    pyspur: tuple[str, ...]  # of PySpur's alembic_version: a newer PySpur migrated it

    def pyspur_line(self, shown: str) -> str:
        return (
            f"{shown}: PySpur schema revision {', '.join(self.pyspur)} is unknown to this "
            f"build, whose newest is {PYSPUR_REVISIONS[-1]} (PySpur 0.1.18): a newer PySpur "
            "migrated it"
        )

    def ours_line(self, shown: str) -> str:
        return (
            f"{shown}: spur-runs schema revision {', '.join(self.ours)} is unknown to this "
            f"build, whose newest is {head_revision()}: a newer spur-runs migrated it"
        )


def unknown_revisions(connection: Connection) -> Unknown:
    """What the database's two version tables record beyond what this
    build knows: its own revision scripts, and PySpur 0.1.18's chain."""
    script = ScriptDirectory.from_config(alembic_config())
    known = {revision.revision for revision in script.walk_revisions()}
    return Unknown(
        ours=tuple(r for r in _recorded(connection, VERSION_TABLE) if r not in known),
        pyspur=tuple(
            r for r in _recorded(connection, PYSPUR_VERSION_TABLE) if r not in PYSPUR_REVISIONS
        ),
    )


def warn_unknown_revisions(database_url: str) -> Unknown:
    """At serve's start: a WARNING for each kind of revision the database
    records that this build does not know, naming it and the newest this
    build knows. Neither stops the server. Ours: a newer spur-runs
    migrated the database and this older one is starting on it (a
    rollback, which must not become an outage); our revisions only add
    indexes, never anything an older build needs gone. PySpur's: PySpur
    migrates its database forward on its own schedule, and whether this
    build can still read it is what require_tables checks, the columns
    it reads (a newer PySpur without one stops start-up, exit 2)."""
    engine = create_db_engine(database_url, pool_size=1)
    try:
        with engine.connect() as connection:
            unknown = unknown_revisions(connection)
    finally:
        engine.dispose()
    shown = _display(database_url)
    if unknown.ours:
        log.warning(
            "%s; serving it as it is (spur-runs revisions only add indexes)",
            unknown.ours_line(shown),
        )
    if unknown.pyspur:
        log.warning(
            "%s; serving it, as its tables have every column this build reads",
            unknown.pyspur_line(shown),
        )
    return unknown


def _display(database_url: str) -> str:
    return shown_url(normalize_url(database_url))


# Our last revision that adds no index (0001: PySpur's tables, on an empty
# database); every revision after it only adds indexes, idempotently.
_LAST_WITHOUT_INDEXES = "0001"


def migrate(database_url: str) -> None:
    """Upgrade the database to our head revision, one transaction per
    revision. A database at a revision of ours this build does not know (a
    newer spur-runs migrated it) is left as it is, with a warning: it has
    every index this build's revisions add, and this build never
    downgrades; an older release's migrate run at a rollback must not fail
    it. PySpur's revision is only warned about: our indexes are on columns
    every PySpur revision has."""
    # The migration's connection, _alone's, and missing_indexes'.
    engine = create_db_engine(database_url, pool_size=3)
    shown = _display(database_url)
    try:
        # Handed to Alembic outside a transaction: it begins one per
        # revision (env.py), and commits it before an autocommit block.
        with (
            _alone(engine, shown),
            engine.execution_options(**{WRITE_OPTION: True}).connect() as connection,
        ):
            before = _revision_of(connection)
            unknown = unknown_revisions(connection)
            connection.rollback()
            if unknown.pyspur:
                log.warning(
                    "%s; adding this build's indexes all the same", unknown.pyspur_line(shown)
                )
            if unknown.ours:
                log.warning(
                    "%s; nothing to do (this build never downgrades)", unknown.ours_line(shown)
                )
                return
            config = alembic_config(database_url)
            config.attributes["connection"] = connection
            gone: list[str] = []
            command.upgrade(config, "head")
            after = _revision_of(connection)
            connection.rollback()
            if after == head_revision():
                gone = missing_indexes(engine)
            if gone:
                # Recorded, then lost: PySpur made its tables again (its
                # SQLite "out of sync" path drops and creates them all), or
                # someone dropped one. The server's warning sends the
                # operator here, so "nothing to do" must not be the answer:
                # run our index revisions again (each creates only what is
                # missing), from the revision before the first of them.
                log.warning(
                    "%s: at revision %s but without indexes it adds (%s): adding them again",
                    shown,
                    after,
                    ", ".join(gone),
                )
                command.stamp(config, _LAST_WITHOUT_INDEXES)
                command.upgrade(config, "head")
                connection.rollback()
    finally:
        engine.dispose()
    if gone:
        log.info("%s: at revision %s, its indexes added again", shown, after)
    elif before == after:
        log.info("%s: already at revision %s, nothing to do", shown, after)
    else:
        log.info("%s: migrated from revision %s to %s", shown, before or "(none)", after)


# pg_advisory_lock's key for `migrate`, the same in every build ("SPURMIGR").
MIGRATE_LOCK = 0x5350_5552_4D49_4752


@contextmanager
def _alone(engine: Engine, shown: str) -> Iterator[None]:
    """On PostgreSQL, one migrate at a time: a second (two operators, a
    Job retried while the first pod's statements still run on the server,
    an init container per replica) found no revision, ran 0001 too and
    failed on the first's tables ("duplicate key value violates unique
    constraint pg_type_typname_nsp_index", exit 1). It waits, then finds
    the work done. The lock is a session's, on a connection of its own
    outside any transaction, taken by polling pg_try_advisory_lock: a
    session waiting inside pg_advisory_lock would be a transaction that
    the first migrate's CREATE INDEX CONCURRENTLY waits for, a deadlock.
    The server frees it when its session ends, however the migrate ended.
    On SQLite, see _alone_on_sqlite."""
    if engine.dialect.name != "postgresql":
        with _alone_on_sqlite(engine.url.database, shown):
            yield
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock:
        take = text("SELECT pg_try_advisory_lock(:key)").bindparams(key=MIGRATE_LOCK)
        _wait_for(lambda: bool(lock.scalar(take)), shown)
        try:
            yield
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:key)").bindparams(key=MIGRATE_LOCK))


@contextmanager
def _alone_on_sqlite(database: str | None, shown: str) -> Iterator[None]:
    """One migrate at a time per folder of SQLite files: flock on the folder.
    A second migrate read the revision between the first's revisions and
    failed on the next (Alembic's "Online migration expected to match one
    row when updating '0002' to '0003'", exit 1). Not a lock on the file
    itself: opening and closing another descriptor of a SQLite file drops
    the POSIX locks this process's connections hold on it. A folder that
    cannot be opened is left to the migration to report."""
    if not database or database == ":memory:":
        yield
        return
    try:
        folder = os.open(os.path.dirname(os.path.abspath(database)), os.O_RDONLY)
    except OSError:
        yield
        return
    try:

        def take() -> bool:
            try:
                fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        _wait_for(take, shown)
        yield  # the lock goes with the descriptor
    finally:
        os.close(folder)


def _wait_for(take: Callable[[], bool], shown: str) -> None:
    waiting = False
    while not take():
        if not waiting:
            log.info("%s: another spur-runs migrate is running: waiting for it to end", shown)
            waiting = True
        time.sleep(0.5)


def current_revision(database_url: str) -> str | None:
    """Our revision recorded in the database; None before the first migrate."""
    engine = create_db_engine(database_url, pool_size=1)
    try:
        with engine.connect() as connection:
            return _revision_of(connection)
    finally:
        engine.dispose()


def migrate_sql(database_url: str, out: TextIO) -> None:
    """Write to `out` the SQL `migrate` would run on this database, running
    none of it: Alembic's offline mode, from the database's current revision
    (read, not written) to head. A SQLite file that does not exist yet gets
    the script for an empty database (and is not created)."""
    current: str | None = None
    pyspur_present = False
    unknown = Unknown((), ())
    head = head_revision()
    gone: list[str] = []
    if missing_sqlite_file(database_url) is None:
        engine = create_db_engine(database_url, pool_size=1)
        try:
            with engine.connect() as connection:
                current = _revision_of(connection)
                unknown = unknown_revisions(connection)
                pyspur_present = inspect(connection).has_table("runs")
            if current == head:
                gone = missing_indexes(engine)
        finally:
            engine.dispose()
    shown = shown_url(database_url)
    where = f"-- spur-runs migrate --sql, for {shown}"
    if unknown.pyspur:
        log.warning("%s", unknown.pyspur_line(shown))
    if current == head and not gone:
        out.write(f"{where}: already at revision {head}, nothing to run\n")
        return
    if unknown.ours:
        log.warning("%s; nothing to run", unknown.ours_line(shown))
        out.write(f"{where}: at revision {current}, unknown to this build: nothing to run\n")
        return
    config = alembic_config(database_url)
    if gone:
        # As migrate does: at head but without indexes it adds (lost since),
        # back to the revision before them, and those revisions again.
        out.write(
            f"{where} (at revision {head} but without indexes it adds: {', '.join(gone)}): "
            f"revisions {_LAST_WITHOUT_INDEXES} -> {head} again\n"
        )
    else:
        state = (
            f"at revision {current}"
            if current
            else "PySpur's tables, none of our revisions"
            if pyspur_present
            else "empty"
        )
        out.write(f"{where} ({state}): revisions {current or '(none)'} -> {head}\n")
    config.attributes["pyspur_schema_present"] = pyspur_present
    config.output_buffer = out
    # The revisions log what they create; here they create nothing.
    quiet = [logging.getLogger(name) for name in ("spur_runs.migrate", "alembic.runtime.migration")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        if gone:
            command.stamp(config, f"{head}:{_LAST_WITHOUT_INDEXES}", sql=True)
            current = _LAST_WITHOUT_INDEXES
        command.upgrade(config, f"{current}:head" if current else "head", sql=True)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
