"""Alembic environment of spur-runs.

No alembic.ini: spur_runs.migrate builds the Config in code and hands over an
open connection (config.attributes["connection"]), made by our engine factory
so that SQLite's pragmas apply. Given only a URL (sqlalchemy.url), this script
makes such an engine itself.

Our version lives in `spur_runs_alembic_version`; PySpur's own migrations keep
theirs in `alembic_version` on the same database, and neither touches the
other's.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Connection

from spur_runs.store.engine import WRITE_OPTION, create_db_engine
from spur_runs.store.migrations import OUR_TABLES, VERSION_TABLE
from spur_runs.store.models import Base

config = context.config


def include_name(name: str | None, type_: str, _parent_names: Any) -> bool:
    """Autogenerate compares only our tables: the others of a PySpur database
    (datasets, sessions, ...) are PySpur's, not ours to create or drop."""
    if type_ == "table":
        return name in OUR_TABLES
    return True


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        compare_type=True,
        # A transaction per revision, begun here (the connection comes in
        # outside one): the index revisions leave it for an autocommit block
        # on PostgreSQL (CREATE INDEX CONCURRENTLY), which Alembic allows
        # only within a transaction of its own.
        transaction_per_migration=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass a connection or set sqlalchemy.url")
    engine = create_db_engine(url, pool_size=1)
    try:
        with engine.execution_options(**{WRITE_OPTION: True}).connect() as new_connection:
            _run(new_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
