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

import logging
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
from sqlalchemy import Connection, inspect  # noqa: E402

from .db import WRITE_OPTION, create_db_engine, normalize_url, shown_url  # noqa: E402
from .migrations import SCRIPT_LOCATION, VERSION_TABLE  # noqa: E402
from .schema_check import missing_sqlite_file  # noqa: E402

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


def _display(database_url: str) -> str:
    return shown_url(normalize_url(database_url))


def migrate(database_url: str) -> None:
    """Upgrade the database to our head revision, one transaction per revision."""
    engine = create_db_engine(database_url, pool_size=1)
    try:
        # Handed to Alembic outside a transaction: it begins one per
        # revision (env.py), and commits it before an autocommit block.
        with engine.execution_options(**{WRITE_OPTION: True}).connect() as connection:
            before = _revision_of(connection)
            connection.rollback()
            config = alembic_config(database_url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            after = _revision_of(connection)
            connection.rollback()
    finally:
        engine.dispose()
    if before == after:
        log.info("%s: already at revision %s, nothing to do", _display(database_url), after)
    else:
        log.info(
            "%s: migrated from revision %s to %s",
            _display(database_url),
            before or "(none)",
            after,
        )


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
    if missing_sqlite_file(database_url) is None:
        engine = create_db_engine(database_url, pool_size=1)
        try:
            with engine.connect() as connection:
                current = _revision_of(connection)
                pyspur_present = inspect(connection).has_table("runs")
        finally:
            engine.dispose()
    head = head_revision()
    shown = shown_url(database_url)
    where = f"-- spur-runs migrate --sql, for {shown}"
    if current == head:
        out.write(f"{where}: already at revision {head}, nothing to run\n")
        return
    state = (
        f"at revision {current}"
        if current
        else "PySpur's tables, none of our revisions"
        if pyspur_present
        else "empty"
    )
    out.write(f"{where} ({state}): revisions {current or '(none)'} -> {head}\n")
    config = alembic_config(database_url)
    config.attributes["pyspur_schema_present"] = pyspur_present
    config.output_buffer = out
    # The revisions log what they create; here they create nothing.
    quiet = [logging.getLogger(name) for name in ("spur_runs.migrate", "alembic.runtime.migration")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        command.upgrade(config, f"{current}:head" if current else "head", sql=True)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
