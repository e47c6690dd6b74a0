"""Where one GetRun's time goes in process, stage by stage, on one thread.

    python bench/stages.py                        # SQLite and PostgreSQL, 10,000 runs
    python bench/stages.py --backends sqlite --calls 2000 --rounds 3

Seeds a database as bench/run.py does, then calls the servicer's own GetRun
(RunService with spliced versions, as `spur-runs serve` builds it) on random
runs and serializes each answer, as grpc would. The stages are timed by
wrapping the functions GetRun calls, not by a copy of its body:

- the statement: store.hot.fetch (the driver, and on SQLite the database's
  own work, which runs in this process);
- rows to records: the rest of store.runs.get_run (the packed row decoded:
  JSON, timestamps, enum names; the run and task tuples);
- rows to wire bytes: api.wire.encode_run (api/_wire_src/, and the
  workflow version's cached bytes; before 2026-12-05 this stage built
  messages, convert.fill_run);
- serialize: the answer's SerializeToString (api/spliced.py: joins the runs'
  bytes with the response's own fields);
- the rest of GetRun: validation, the connection scope (Database.read_one),
  the version cache, the response objects.

Each stage is measured as wall time and as this thread's CPU time
(time.thread_time): on PostgreSQL the statement's wall time includes the
database server's work and the loopback round trip, its CPU time only ours.
Calls alternate with the other stages, as a server interleaves them, so the
caches are as cold as they are there (a loop of statements alone runs ~2x
faster). Each stage's clock reads cost ~2 µs (time.thread_time is a system
call): the table's last row is the same calls, unwrapped, timed as a whole,
to show what the timing itself adds. Not part of run.py: no load, no gRPC;
bench/breakdown.py measures the server under load. Writes
bench/results/stages.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lib.common import RESULTS, log
from lib.data import create_database, drop_database, sample_runs, seed_database

from spur.runs.v1 import run_service_pb2 as pb

STAGES = (
    ("statement", "the statement (driver, and SQLite's own work)"),
    ("records", "rows to records (decode, run and task tuples)"),
    ("convert", "rows to wire bytes (wire.encode_run)"),
    ("serialize", "serialize the answer"),
    ("rest", "the rest (validation, connection scope, versions, objects)"),
)


class Clock:
    """Wall and thread-CPU seconds accumulated per stage, and for whole
    calls ("total")."""

    def __init__(self) -> None:
        self.wall = dict.fromkeys([*(name for name, _ in STAGES), "total"], 0.0)
        self.cpu = dict.fromkeys(self.wall, 0.0)

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.wall[stage] += time.perf_counter() - wall
            self.cpu[stage] += time.thread_time() - cpu

    def wrap(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.timing(stage):
                return function(*args, **kwargs)

        return timed


def measure(backend: str, runs: int, calls: int, rounds: int) -> dict[str, Any]:
    from spur_runs.api import wire
    from spur_runs.api.service import RunService
    from spur_runs.store import hot
    from spur_runs.store import runs as store_runs
    from spur_runs.store.db import Database as SpurDatabase

    db = create_database(backend, runs, "stages")
    try:
        seed_database(db)
        requests = [pb.GetRunRequest(run_id=i) for i in sample_runs(db, calls)]
        spur = SpurDatabase.from_url(db.url)
        service = RunService(spur, splice=True)

        def call_all() -> None:
            for request in requests:
                service.GetRun(request, None).SerializeToString()  # type: ignore[arg-type]

        call_all()  # warm: version cache, connections, statements
        bare_cpu = time.thread_time()
        call_all()
        bare_cpu = time.thread_time() - bare_cpu
        clock = Clock()
        # GetRun reads `runs.get_run` and `wire.encode_run` off their modules
        # at each call, and hot.Statement.rows reads `fetch` off hot's globals.
        originals = (store_runs.get_run, wire.encode_run, hot.fetch)
        store_runs.get_run = clock.wrap("records", store_runs.get_run)  # type: ignore[assignment]
        wire.encode_run = clock.wrap("convert", wire.encode_run)  # type: ignore[assignment]
        hot.fetch = clock.wrap("statement", hot.fetch)  # type: ignore[assignment]
        try:
            for _ in range(rounds):
                for request in requests:
                    with clock.timing("total"):
                        answer = service.GetRun(request, None)  # type: ignore[arg-type]
                        with clock.timing("serialize"):
                            answer.SerializeToString()
        finally:
            store_runs.get_run, wire.encode_run, hot.fetch = originals  # type: ignore[assignment]
            spur.dispose()
        n = rounds * len(requests)
        # get_run's time includes the statement's; a whole call includes all.
        for table in (clock.wall, clock.cpu):
            table["records"] -= table["statement"]
            table["rest"] = table["total"] - sum(
                table[name] for name, _ in STAGES if name != "rest"
            )
        return {
            "name": db.name,
            "calls": n,
            "wall_us": {k: v / n * 1e6 for k, v in clock.wall.items()},
            "cpu_us": {k: v / n * 1e6 for k, v in clock.cpu.items()},
            "bare_cpu_us": bare_cpu / len(requests) * 1e6,
        }
    finally:
        drop_database(db)


def write(results: list[dict[str, Any]], path: Path, command: str) -> None:
    lines = [
        "# GetRun's stages in process",
        "",
        f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        "Produced by [bench/stages.py](../stages.py) (its docstring says how). "
        "Microseconds per call, one thread; CPU is this thread's (time.thread_time).",
        "",
        "| stage | " + " | ".join(f"{r['name']} wall | {r['name']} CPU" for r in results) + " |",
        "|---|" + "---:|---:|" * len(results),
    ]
    for name, label in STAGES:
        cells = " | ".join(
            f"{r['wall_us'][name]:,.1f} | {r['cpu_us'][name]:,.1f} "
            f"({r['cpu_us'][name] / r['cpu_us']['total']:.0%})"
            for r in results
        )
        lines.append(f"| {label} | {cells} |")
    totals = " | ".join(
        f"{r['wall_us']['total']:,.1f} | {r['cpu_us']['total']:,.1f}" for r in results
    )
    lines.append(f"| **GetRun, serialized** | {totals} |")
    # Only CPU is read for the unwrapped calls: the wall column stays empty.
    bare = " | ".join(f" | {r['bare_cpu_us']:,.1f}" for r in results)
    lines.append(f"| the same calls without the stages' clocks | {bare} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument(
        "--calls", type=int, default=3000, help="random runs, each called per round"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "stages.md")
    args = parser.parse_args()
    results = []
    for backend in args.backends.split(","):
        log(f"{backend}: {args.calls} runs x {args.rounds} rounds")
        results.append(measure(backend, args.runs, args.calls, args.rounds))
    write(results, args.out, " ".join(["python bench/stages.py", *sys.argv[1:]]))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
