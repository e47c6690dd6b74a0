"""PostgreSQL locks held from outside the server, to keep its calls in flight."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text


@contextmanager
def runs_locked(url: str) -> Iterator[Callable[[], int]]:
    """Hold an exclusive lock on `runs`; yields a function counting the other
    sessions that wait for it (calls in flight inside the server)."""
    engine = create_engine(url)
    locker = engine.connect()
    watcher = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    transaction = locker.begin()
    locker.execute(text("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE"))
    mine = locker.execute(text("SELECT pg_backend_pid()")).scalar_one()

    def waiting() -> int:
        return int(
            watcher.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> :mine"
                ),
                {"mine": mine},
            ).scalar_one()
        )

    try:
        yield waiting
    finally:
        transaction.rollback()
        locker.close()
        watcher.close()
        engine.dispose()
