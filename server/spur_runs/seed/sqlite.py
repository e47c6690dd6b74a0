"""The SQLite loader: the plan as one JSON array per chunk (json_each), no
per-row foreign-key checks, WAL left for the load when nobody else has the
file open."""

import json
import logging
import sqlite3
from typing import Any

from sqlalchemy import Engine

from .content import CHUNK_RUNS
from .load import Progress, expand_sql, prefetch, sqlite_ts, template_rows
from .plan import Catalog, Planner, chunked

log = logging.getLogger(__name__)


def _pragma(db: Any, pragma: str) -> str:
    cursor = db.execute(f"PRAGMA {pragma}")
    try:
        return str(cursor.fetchone()[0])
    finally:
        cursor.close()


def _sqlite_journal(db: Any, mode: str) -> str | None:
    """Switch the journal mode if no other connection is in the way; returns
    the mode it had, or None when it could not be switched."""
    db.execute("PRAGMA busy_timeout=0")
    try:
        previous = _pragma(db, "journal_mode")
        if previous.lower() == mode.lower():
            return None
        now = _pragma(db, f"journal_mode={mode}")
        return previous if now.lower() == mode.lower() else None
    except sqlite3.OperationalError:  # another connection has the database open
        return None
    finally:
        db.execute("PRAGMA busy_timeout=5000")


_SQLITE_PLAN_INSERT = """
    INSERT INTO seed_plan (i, tpl, t0, parent, run_type)
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
           json_extract(value, '$[2]'), json_extract(value, '$[3]'),
           json_extract(value, '$[4]')
    FROM json_each(?)
"""


def load_sqlite(
    engine: Engine, catalog: Catalog, planner: Planner, progress: Progress
) -> tuple[int, int]:
    raw = engine.raw_connection()
    try:
        db: Any = raw.driver_connection  # sqlite3.Connection, autocommit (db.py)
        # The plan's rows reference only rows it writes itself or that exist:
        # skip the per-row foreign-key lookups for the load (a test runs
        # PRAGMA foreign_key_check afterwards), and do not fsync mid-load.
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA cache_size=-262144")  # 256 MiB for this connection
        db.execute("PRAGMA temp_store=MEMORY")
        # In WAL mode every page would be written twice (to the log, then
        # into the database at the checkpoint). A rollback journal copies only
        # the pages that existed before, and a bulk load mostly adds new ones.
        # Possible only while no other connection has the database open.
        previous_journal = _sqlite_journal(db, "DELETE")
        db.execute("BEGIN IMMEDIATE")
        try:
            run_base = db.execute("SELECT COALESCE(MAX(_intid), 0) FROM runs").fetchone()[0]
            task_base = db.execute("SELECT COALESCE(MAX(_intid), 0) FROM tasks").fetchone()[0]
            db.execute("DROP TABLE IF EXISTS temp.seed_plan")
            db.execute("DROP TABLE IF EXISTS temp.seed_run_tpl")
            db.execute("DROP TABLE IF EXISTS temp.seed_task_tpl")
            db.execute(
                "CREATE TEMP TABLE seed_plan (i INTEGER PRIMARY KEY, tpl INTEGER NOT NULL, "
                "t0 INTEGER NOT NULL, parent INTEGER, run_type TEXT NOT NULL)"
            )
            db.execute(
                "CREATE TEMP TABLE seed_run_tpl (tpl INTEGER PRIMARY KEY, workflow_id TEXT, "
                "workflow_version_id TEXT, status TEXT, initial_inputs TEXT, outputs TEXT, "
                "end_off INTEGER)"
            )
            db.execute(
                "CREATE TEMP TABLE seed_task_tpl (tpl INTEGER NOT NULL, k INTEGER NOT NULL, "
                "node_id TEXT, status TEXT, inputs TEXT, outputs TEXT, error TEXT, "
                "start_off INTEGER, end_off INTEGER, PRIMARY KEY (tpl, k)) WITHOUT ROWID"
            )
            run_rows, task_rows = template_rows(catalog)
            db.executemany(f"INSERT INTO seed_run_tpl VALUES ({', '.join('?' * 7)})", run_rows)
            db.executemany(f"INSERT INTO seed_task_tpl VALUES ({', '.join('?' * 9)})", task_rows)
            runs_sql, tasks_sql = expand_sql(sqlite_ts, run_base, task_base)
            # The thread plans the next chunk (and serializes it) while
            # SQLite expands this one.
            planned = ((chunk, json.dumps(chunk)) for chunk in chunked(planner.rows(), CHUNK_RUNS))
            for chunk, text in prefetch(planned):
                db.execute("DELETE FROM seed_plan")
                db.execute(_SQLITE_PLAN_INSERT, (text,))
                db.execute(runs_sql)
                db.execute(tasks_sql)
                progress.update(len(chunk))
            db.execute("DROP TABLE temp.seed_plan")
            db.execute("DROP TABLE temp.seed_run_tpl")
            db.execute("DROP TABLE temp.seed_task_tpl")
            db.execute("COMMIT")
        except BaseException:
            # SQLite rolls a transaction back itself on some errors (a full
            # disk, an interrupt): a ROLLBACK then fails ("no transaction is
            # active"), and its error replaced the one that says what went wrong.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            if previous_journal is not None:
                _sqlite_journal(db, previous_journal)
        if previous_journal is None:
            # The load went through the write-ahead log: fold it into the
            # database file rather than leave a log of gigabytes behind.
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
        return int(run_base), int(task_base)
    finally:
        raw.invalidate()  # pragmas changed: do not hand this connection out again
        raw.close()
