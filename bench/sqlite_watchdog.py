"""What db.py's SQLite watchdog costs, and how close to its bound it stops a
runaway statement.

    python bench/sqlite_watchdog.py [--runs 300] [--rounds 15] [--out bench/results]

- VM steps of the service's statements (a counting progress handler every
  100 steps): a statement under the watchdog's 100,000 steps never calls
  into Python.
- GetRun and a ListRuns page of 100 as storage calls, in process, with the
  watchdog and without it (an engine made without its listener and progress
  handler), back to back in every round; the median of the per-round ratios.
- A runaway statement (an endless recursive query) read under a deadline,
  alone and with 4 threads keeping the GIL busy: how long after the deadline
  it ends (p50 and max of 20).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from spur_runs import deadline
from spur_runs.seed import seed
from spur_runs.store import engine as dbmod
from spur_runs.store import runs as storage
from spur_runs.store.db import Database
from spur_runs.store.migrate import migrate

# Endless, and pure SQLite work: no row reaches Python, so what is measured
# is the watchdog, not the fetching and freeing of rows.
ENDLESS = text(
    "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT x FROM c)"
)


def _without_watchdog(url: str) -> Database:
    listen = event.listen

    def no_arming(target: Any, name: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if name != "before_cursor_execute":
            listen(target, name, fn, *args, **kwargs)

    steps, dbmod.WATCHDOG_STEPS = dbmod.WATCHDOG_STEPS, 0  # 0: no progress handler
    event.listen = no_arming  # type: ignore[assignment]
    try:
        return Database.from_url(url, pool_size=1, timeout_seconds=10)
    finally:
        event.listen = listen
        dbmod.WATCHDOG_STEPS = steps


def _vm_steps(db: Database, call: Callable[[Any], object]) -> int:
    counted = [0]

    def count() -> int:
        counted[0] += 1
        return 0

    with db.read() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.set_progress_handler(count, 100)
        try:
            call(conn)
        finally:
            raw.set_progress_handler(conn.info[dbmod.WATCHDOG_KEY], dbmod.WATCHDOG_STEPS)
    return counted[0] * 100


def _per_call_us(db: Database, call: Callable[[Any], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        with db.read() as conn:
            call(conn)
    return (time.perf_counter() - started) / n * 1e6


def _overrun_ms(db: Database, seconds: float) -> float:
    deadline.set_remaining(seconds)
    started = time.monotonic()
    try:
        with db.read() as conn:
            conn.execute(ENDLESS).scalar()
    except Exception:  # noqa: BLE001 - the interruption is the point
        pass
    finally:
        deadline.clear()
    return (time.monotonic() - started - seconds) * 1000


def _spin(stop: threading.Event) -> None:
    """Python work that holds the GIL, as busy RPC threads do."""
    while not stop.is_set():
        sum(range(1000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="spur_watchdog_")
    url = f"sqlite:///{folder}/runs.db"
    migrate(url)
    seed(url, runs=args.runs)
    watched, bare = Database.from_url(url, pool_size=1, timeout_seconds=10), _without_watchdog(url)
    with watched.read() as conn:
        run_id = storage.list_runs(conn, limit=1)[0][0].row.id
    calls: dict[str, Callable[[Any], object]] = {
        "GetRun (6 tasks)": lambda conn: storage.get_run(conn, run_id),
        "ListRuns page of 10": lambda conn: storage.list_runs(conn, limit=10),
        "ListRuns page of 100": lambda conn: storage.list_runs(conn, limit=100),
        "GetRunTasks": lambda conn: storage.list_tasks(conn, run_id, limit=1000),
    }
    command = f"python bench/sqlite_watchdog.py --runs {args.runs} --rounds {args.rounds}"
    lines = ["# SQLite watchdog (db.py)", "", f"`{command}`; SQLite {sqlite3.sqlite_version}.",
             "", "| statement(s) | VM steps |", "|---|---|"]  # fmt: skip
    for name, call in calls.items():
        lines.append(f"| {name} | ~{_vm_steps(watched, call):,} |")
    lines += ["", "| storage call | with (µs, median) | without | ratio (median of rounds) |",
              "|---|---|---|---|"]  # fmt: skip
    for name in ("GetRun (6 tasks)", "ListRuns page of 100"):
        n = 500 if name.startswith("GetRun") else 50
        withs, withouts, ratios = [], [], []
        for round_ in range(args.rounds):
            pair = (watched, bare) if round_ % 2 == 0 else (bare, watched)
            times = {id(d): _per_call_us(d, calls[name], n) for d in pair}
            withs.append(times[id(watched)])
            withouts.append(times[id(bare)])
            ratios.append(times[id(watched)] / times[id(bare)])
        lines.append(
            f"| {name} | {statistics.median(withs):.0f} | {statistics.median(withouts):.0f} "
            f"| {statistics.median(ratios):.3f} |"
        )
    lines += ["", "| runaway statement, deadline | busy threads | ended after the deadline "
              "(p50 / max, ms) |", "|---|---|---|"]  # fmt: skip
    for busy in (0, 4):
        stop = threading.Event()
        spinners = [threading.Thread(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
        for thread in spinners:
            thread.start()
        for seconds in (0.1, 0.5):
            late = sorted(_overrun_ms(watched, seconds) for _ in range(20))
            lines.append(
                f"| {seconds} s | {busy} | {statistics.median(late):.1f} / {late[-1]:.1f} |"
            )
        stop.set()
    watched.dispose()
    bare.dispose()
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sqlite_watchdog.md").write_text(report)


if __name__ == "__main__":
    main()
