"""Databases for the bench: made empty, migrated and seeded by the `spur-runs`
command, sampled for run ids and page tokens, dropped at the end.

SQLite files go to bench/.data; PostgreSQL databases are named
spur_bench_<tag>_<runs> at 127.0.0.1:5432. `tag` keeps the databases of
different scripts (and of concurrent invocations) apart.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spur.runs.v1 import run_service_pb2 as pb

from .common import DATA, PG_ADMIN_URL, log


@dataclass
class Database:
    backend: str  # sqlite | postgresql
    runs: int
    url: str
    peer_env: dict[str, str]
    pg_name: str | None = None

    @property
    def name(self) -> str:
        size = f"{self.runs // 1000}k" if self.runs < 1_000_000 else f"{self.runs // 1_000_000}M"
        return f"{'SQLite' if self.backend == 'sqlite' else 'PostgreSQL'} {size}"

    @property
    def slug(self) -> str:
        return f"{self.backend}-{self.runs}"


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def create_database(backend: str, runs: int, tag: str) -> Database:
    """An empty database (a fresh SQLite file, or a new PostgreSQL database)
    for `runs` runs; `tag` keeps the databases of different scripts apart.
    Also used by soak.py and watchers.py."""
    if backend == "sqlite":
        path = DATA / f"{tag}-sqlite-{runs}.db"
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return Database(
            backend,
            runs,
            f"sqlite:///{path}",
            {"SQLITE_OVERRIDE_DATABASE_URL": f"sqlite:///{path}"},
        )
    name = f"spur_bench_{tag}_{runs}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _pg_admin(f'CREATE DATABASE "{name}"')
    env = {
        "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": "",
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": "5432",
        "POSTGRES_DB": name,
    }
    return Database(
        backend, runs, f"postgresql://postgres@127.0.0.1:5432/{name}", env, pg_name=name
    )


def drop_database(db: Database) -> None:
    if db.pg_name:
        _pg_admin(f'DROP DATABASE IF EXISTS "{db.pg_name}" WITH (FORCE)')
    else:
        path = db.url.removeprefix("sqlite:///")
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def spur_runs(*args: str, timeout: float = 900) -> tuple[float, str]:
    """Run the `spur-runs` command; (wall seconds, output)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "spur_runs", *args], capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"spur-runs {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return seconds, done.stdout + done.stderr


def seed_database(db: Database) -> dict[str, Any]:
    migrate_s, _ = spur_runs("migrate", "--database-url", db.url)
    seed_s, out = spur_runs("seed", "--database-url", db.url, "--runs", str(db.runs))
    said = re.search(r"seeded (\d+) runs .* in ([\d.]+) s", out)
    said_first = out.splitlines()[0] if out else ""
    log(
        f"{db.name}: migrate {migrate_s:.1f} s, seed --runs {db.runs} {seed_s:.1f} s ({said_first})"
    )
    result: dict[str, Any] = {
        "migrate_s": migrate_s,
        "seed_s": seed_s,
        "seed_reported_s": float(said.group(2)) if said else None,
    }
    if db.backend == "postgresql":
        result["analyze"] = analyze_postgres(db)
    return result


def _time_list_page(url: str) -> float:
    """Milliseconds of one ListRuns page 1 (page_size 10), in process."""
    from spur_runs.api.service import RunService
    from spur_runs.store.db import Database as SpurDatabase

    spur = SpurDatabase.from_url(url, pool_size=1)
    try:
        service = RunService(spur)
        service.ListRuns(pb.ListRunsRequest(page_size=1), None)  # type: ignore[arg-type]
        start = time.perf_counter()
        service.ListRuns(pb.ListRunsRequest(page_size=10), None)  # type: ignore[arg-type]
        return (time.perf_counter() - start) * 1000
    finally:
        spur.dispose()


def analyze_postgres(db: Database) -> dict[str, float]:
    """`spur-runs seed` leaves PostgreSQL without statistics on what it
    loaded; until autovacuum gets to the tables, the planner guesses. The
    bench runs ANALYZE, as autovacuum soon would, and records one ListRuns
    page before and after it."""
    import psycopg

    before = _time_list_page(db.url)
    start = time.perf_counter()
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute("ANALYZE")
    analyze_s = time.perf_counter() - start
    after = _time_list_page(db.url)
    log(
        f"{db.name}: ListRuns page 1 took {before:.0f} ms right after the seed, "
        f"{after:.0f} ms after ANALYZE ({analyze_s:.1f} s)"
    )
    return {"list_ms_before": before, "list_ms_after": after, "analyze_s": analyze_s}


def sample_runs(db: Database, count: int, seed: int = 5) -> list[str]:
    """`count` run ids drawn uniformly among all runs (by _intid)."""
    from sqlalchemy import create_engine, func, select

    from spur_runs.store.engine import normalize_url
    from spur_runs.store.models import Run

    engine = create_engine(normalize_url(db.url))
    try:
        with engine.connect() as conn:
            low, high = conn.execute(select(func.min(Run._intid), func.max(Run._intid))).one()
            rng = random.Random(seed)
            picks = rng.sample(range(low, high + 1), min(count * 2, high - low + 1))
            found: list[str] = []
            for start in range(0, len(picks), 500):
                chunk = picks[start : start + 500]
                found += conn.execute(select(Run.id).where(Run._intid.in_(chunk))).scalars().all()
            by_intid = {int(i[1:]): i for i in found}
            return [by_intid[p] for p in picks if p in by_intid][:count]
    finally:
        engine.dispose()


def deep_cursor(db: Database, from_end: int = 100) -> tuple[str, int, int]:
    """A page `from_end` rows before the end of ListRuns' default listing
    (top-level runs, parent_only; newest start_time first): (the page token
    of the row before it, the page number that starts at the same row, the
    depth, 0-based)."""
    from sqlalchemy import create_engine, func, select

    from spur_runs.api.paging import encode_run_cursor
    from spur_runs.api.service import list_query
    from spur_runs.store.engine import normalize_url
    from spur_runs.store.models import Run

    listed = (Run.start_time.is_not(None), Run.parent_run_id.is_(None))
    engine = create_engine(normalize_url(db.url))
    try:
        with engine.connect() as conn:
            depth = conn.execute(select(func.count()).select_from(Run).where(*listed)).scalar_one()
            depth = max(10, (depth - from_end) // 10 * 10)  # a page boundary
            start_time, intid = conn.execute(
                select(Run.start_time, Run._intid)
                .where(*listed)
                .order_by(Run.start_time.desc(), Run._intid.desc())
                .offset(depth - 1)
                .limit(1)
            ).one()
    finally:
        engine.dispose()
    # Tokens are bound to the listing and its filters: the scope the service
    # itself derives for a ListRuns without filters.
    scope = list_query(pb.ListRunsRequest()).scope
    return encode_run_cursor(scope, start_time, intid), depth // 10 + 1, depth
