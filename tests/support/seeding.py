"""A migrated database with one finished run in it."""

from __future__ import annotations

from factories import add_run, add_workflow, all_done
from spur_runs.store.db import Database
from spur_runs.store.models import RunStatus


def seeded(url: str) -> str:
    from spur_runs.store.migrate import migrate

    migrate(url)
    db = Database.from_url(url, pool_size=1)
    with db.write() as s:
        run_id = add_run(s, add_workflow(s), tasks=all_done())
    db.dispose()
    return run_id


def seed(url: str, status: RunStatus = RunStatus.COMPLETED) -> str:
    from spur_runs.store.migrate import migrate

    migrate(url)
    db = Database.from_url(url, pool_size=1)
    with db.write() as s:
        run_id = add_run(s, add_workflow(s), status=status, tasks=all_done())
    db.dispose()
    return run_id
