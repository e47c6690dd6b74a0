"""What the index revisions (0002 on) do with their frozen lists: create
each index if it is not there, saying which were created, and drop them on
downgrade.

PostgreSQL: `CREATE INDEX CONCURRENTLY`, outside any transaction (Alembic's
autocommit block). A plain CREATE INDEX holds a SHARE lock on the table for
the whole build, and PySpur's engine cannot insert a task or update a run
until it ends (minutes on a large tasks table); the concurrent build takes
SHARE UPDATE EXCLUSIVE, which no insert, update or delete waits for. A
concurrent build that fails or is interrupted leaves an INVALID index behind
(pg_index.indisvalid false): IF NOT EXISTS would keep it, and the planner
never uses it, so it is dropped (concurrently too) and built again.

SQLite: plain CREATE INDEX IF NOT EXISTS in the revision's transaction. It
holds the database's write lock while it builds (readers go on, WAL), as any
SQLite write does; there is no concurrent build.

Only the mechanics live here; each revision keeps its own list, frozen as
it was written, so that a later change here cannot change what an old
revision means.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

log = logging.getLogger("spur_runs.migrate")

# (name, table, columns)
IndexSpec = tuple[str, str, tuple[str, ...]]


def _postgresql() -> bool:
    return bool(op.get_context().dialect.name == "postgresql")


def _existing(table: str) -> set[str]:
    if context.is_offline_mode():
        return set()
    return {str(index["name"]) for index in sa.inspect(op.get_bind()).get_indexes(table)}


def index_validity(name: str) -> bool | None:
    """PostgreSQL: True for a usable index, False for one a failed or
    interrupted concurrent build left INVALID, None when there is none."""
    if context.is_offline_mode():
        return None
    found = op.get_bind().execute(
        sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"),
        {"name": name},
    )
    valid = found.scalar_one_or_none()
    return None if valid is None else bool(valid)


def _partial(name: str, where: Mapping[str, str] | None) -> dict[str, Any]:
    if not where or name not in where:
        return {}
    predicate = sa.text(where[name])
    return {"postgresql_where": predicate, "sqlite_where": predicate}


def _create_concurrently(name: str, table: str, columns: tuple[str, ...], **partial: Any) -> None:
    """One index on PostgreSQL, in autocommit: each statement is its own
    transaction, as CONCURRENTLY demands."""
    valid = index_validity(name)
    if valid:
        log.info("index %s on %s: already there", name, table)
        return
    if valid is False:
        log.warning("index %s on %s: INVALID (an interrupted build): rebuilding", name, table)
        op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
    else:
        log.info("index %s on %s(%s): creating concurrently", name, table, ", ".join(columns))
    op.create_index(
        name, table, list(columns), postgresql_concurrently=True, if_not_exists=True, **partial
    )
    if index_validity(name) is False:  # (a concurrent build that failed raises instead)
        raise RuntimeError(f"index {name} on {table} is still INVALID after its build")


def create_indexes(indexes: Sequence[IndexSpec], where: Mapping[str, str] | None = None) -> None:
    """Create `indexes`; `where` gives the predicate of partial ones, by name."""
    if _postgresql():
        with op.get_context().autocommit_block():
            for name, table, columns in indexes:
                _create_concurrently(name, table, columns, **_partial(name, where))
        return
    for name, table, columns in indexes:
        if name in _existing(table):
            log.info("index %s on %s: already there", name, table)
        else:
            log.info("index %s on %s(%s): creating", name, table, ", ".join(columns))
        op.create_index(name, table, list(columns), if_not_exists=True, **_partial(name, where))


def drop_indexes(indexes: Sequence[IndexSpec]) -> None:
    if _postgresql():
        # A plain DROP INDEX takes an ACCESS EXCLUSIVE lock, which waits for
        # (and then blocks) every reader and writer of the table.
        with op.get_context().autocommit_block():
            for name, table, _columns in reversed(indexes):
                op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
        return
    for name, table, _columns in reversed(indexes):
        op.drop_index(name, table_name=table, if_exists=True)
