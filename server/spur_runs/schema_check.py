"""Start-up check: are the indexes our queries rely on there?

A database PySpur made lacks them (storage.md: no index on tasks.run_id). The
service still works, slowly; it says so in one line and names the fix.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, inspect

from .models import SERVICE_INDEXES

log = logging.getLogger(__name__)


def missing_indexes(engine: Engine) -> list[str]:
    """Names of SERVICE_INDEXES whose columns no index of the table leads with."""
    inspector = inspect(engine)
    missing = []
    for index in SERVICE_INDEXES:
        assert index.table is not None
        wanted = [c.name for c in index.columns]
        present = [
            list(existing["column_names"])[: len(wanted)]
            for existing in inspector.get_indexes(index.table.name)
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
