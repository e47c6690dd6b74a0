"""The PostgreSQL loader: the plan through COPY, then the `_intid`
sequences moved past the new rows so that PySpur's next insert does not
collide."""

import logging
from typing import Any

from sqlalchemy import Engine

from .content import CHUNK_RUNS, TASKS_PER_RUN
from .load import (
    RUN_TEMPLATE_COLUMNS,
    TASK_TEMPLATE_COLUMNS,
    Progress,
    expand_sql,
    postgres_ts,
    template_rows,
)
from .plan import Catalog, Planner, chunked

log = logging.getLogger(__name__)


def issued(cur: Any, table: str) -> tuple[int, str | None]:
    """The highest `_intid` of `table` ever handed out (0: none yet), and
    the table's sequence (None without one)."""
    base = cur.execute(f"SELECT COALESCE(MAX(_intid), 0) FROM {table}").fetchone()[0]
    sequence = cur.execute("SELECT pg_get_serial_sequence(%s, '_intid')", (table,)).fetchone()[0]
    if sequence is not None:
        # Never hand out again an id the sequence already gave (its row may
        # have been deleted since).
        last, called = cur.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()
        base = max(base, last if called else last - 1)
    return int(base), sequence


def load_postgres(
    engine: Engine, catalog: Catalog, planner: Planner, progress: Progress
) -> tuple[int, int]:
    raw = engine.raw_connection()
    try:
        conn: Any = raw.driver_connection  # psycopg.Connection, in a transaction
        with conn.cursor() as cur:
            # Concurrent readers go on; a concurrent writer (PySpur) waits, so
            # that the ids taken below stay free.
            cur.execute("LOCK TABLE runs, tasks IN SHARE ROW EXCLUSIVE MODE")
            run_base, run_sequence = issued(cur, "runs")
            task_base, task_sequence = issued(cur, "tasks")
            cur.execute(
                "CREATE TEMP TABLE seed_plan (i integer PRIMARY KEY, tpl integer NOT NULL, "
                "t0 bigint NOT NULL, parent integer, run_type varchar NOT NULL) ON COMMIT DROP"
            )
            cur.execute(
                "CREATE TEMP TABLE seed_run_tpl (tpl integer PRIMARY KEY, workflow_id varchar, "
                "workflow_version_id varchar, status runstatus, initial_inputs json, "
                "outputs json, end_off bigint) ON COMMIT DROP"
            )
            cur.execute(
                "CREATE TEMP TABLE seed_task_tpl (tpl integer, k integer, node_id varchar, "
                "status taskstatus, inputs json, outputs json, error varchar, "
                "start_off bigint, end_off bigint, PRIMARY KEY (tpl, k)) ON COMMIT DROP"
            )
            run_rows, task_rows = template_rows(catalog)
            with cur.copy(f"COPY seed_run_tpl ({RUN_TEMPLATE_COLUMNS}) FROM STDIN") as copy:
                for row in run_rows:
                    copy.write_row(row)
            with cur.copy(f"COPY seed_task_tpl ({TASK_TEMPLATE_COLUMNS}) FROM STDIN") as copy:
                for row in task_rows:
                    copy.write_row(row)
            runs_sql, tasks_sql = expand_sql(postgres_ts, run_base, task_base)
            planned = 0
            for chunk in chunked(planner.rows(), CHUNK_RUNS):
                cur.execute("TRUNCATE seed_plan")
                with cur.copy("COPY seed_plan (i, tpl, t0, parent, run_type) FROM STDIN") as copy:
                    for row in chunk:
                        copy.write_row(row)
                cur.execute(runs_sql)
                cur.execute(tasks_sql)
                planned += len(chunk)
                progress.update(len(chunk))
            # Our explicit ids did not advance the SERIAL sequences: move them
            # past the new rows, or PySpur's next insert would collide.
            for sequence, last in (
                (run_sequence, run_base + planned),
                (task_sequence, task_base + planned * TASKS_PER_RUN),
            ):
                if sequence is not None and planned:
                    cur.execute("SELECT setval(%s, %s, true)", (sequence, last))
        conn.commit()
        if planned:
            # A bulk load leaves the planner without statistics until
            # autovacuum runs; meanwhile ListRuns' batched task query chose a
            # parallel scan of every task (804 ms a page on 1M runs, 8 ms after).
            with conn.cursor() as cur:
                cur.execute("ANALYZE runs")
                cur.execute("ANALYZE tasks")
            conn.commit()
        return run_base, task_base
    finally:
        raw.close()  # back to the pool, which rolls back what was not committed
