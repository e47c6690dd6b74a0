"""What the index revisions (0002 on) do with their frozen lists: create
each index if it is not there (CREATE INDEX IF NOT EXISTS, on SQLite and
PostgreSQL), saying which were created, and drop them on downgrade.

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


def _existing(table: str) -> set[str]:
    if context.is_offline_mode():
        return set()
    return {str(index["name"]) for index in sa.inspect(op.get_bind()).get_indexes(table)}


def create_indexes(indexes: Sequence[IndexSpec], where: Mapping[str, str] | None = None) -> None:
    """Create `indexes`; `where` gives the predicate of partial ones, by name."""
    for name, table, columns in indexes:
        if name in _existing(table):
            log.info("index %s on %s: already there", name, table)
        else:
            log.info("index %s on %s(%s): creating", name, table, ", ".join(columns))
        partial: dict[str, Any] = {}
        if where and name in where:
            predicate = sa.text(where[name])
            partial = {"postgresql_where": predicate, "sqlite_where": predicate}
        op.create_index(name, table, list(columns), if_not_exists=True, **partial)


def drop_indexes(indexes: Sequence[IndexSpec]) -> None:
    for name, table, _columns in reversed(indexes):
        op.drop_index(name, table_name=table, if_exists=True)
