"""GetRun and ListRuns throughput by --max-workers, with the database at hand
and with it a network away.

    python bench/workers.py                      # SQLite and PostgreSQL, 10,000 runs, ~6 minutes
    python bench/workers.py --workers 2,4,8,16 --delay-ms 0.5 --rounds 3 --seconds 3

One Python thread runs at a time: RPC threads beyond what keeps the
interpreter busy only wait for its lock, and each wait costs context
switches (config.py's --max-workers). How many keep it busy depends on how
long a call waits for its database without the lock. bench/run.py's cases
have the database on this machine: SQLite in the server's process,
PostgreSQL over loopback (~0.1 ms). A production PostgreSQL is a network
away, so this measures each --max-workers in three settings:

1. SQLite (no network);
2. PostgreSQL over loopback;
3. the same PostgreSQL through bench/lib/delay_proxy.py, which holds every
   packet --delay-ms each way (this machine's kernel has no netem); the
   round trip it gives is measured (`SELECT 1`) and printed.

In each setting one server per --max-workers runs at once on the same
database, and the cases of a round run back to back (order reversed every
other round), under bench/run.py's load (h2load -t1 -c4 -m4: 16 calls in
flight). Ratios are to --max-workers 4 (the default), medians of per-round
ratios. Writes bench/results/workers.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import socket
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from lib.common import DATA, GET_RUN_PATH, LIB, LIST_RUNS_PATH, RESULTS, log
from lib.data import Database, create_database, drop_database, sample_runs, seed_database
from lib.load import Case, GrpcLoad, Settings, grpc_body, per_round_ratio, run_rounds
from lib.procs import Processes, free_port, wait_until
from lib.servers import Servers

from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub

DEFAULT_WORKERS = 4  # config.py's default, the ratios' reference


def round_trip_ms(url: str, calls: int = 200) -> float:
    """Median milliseconds of `SELECT 1` on one connection to `url`."""
    import psycopg

    times = []
    with psycopg.connect(url, autocommit=True) as c:
        for _ in range(calls):
            start = time.perf_counter()
            c.execute("SELECT 1").fetchone()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def behind_proxy(procs: Processes, db: Database, delay_ms: float) -> Database:
    """`db` reached through lib/delay_proxy.py, started here: the same
    database, its URL pointing at the proxy."""
    from sqlalchemy.engine import make_url

    url = make_url(db.url)
    port = free_port()
    process = procs.start(
        "delay-proxy",
        [sys.executable, str(LIB / "delay_proxy.py"), "--listen-port", str(port),
         "--to", f"{url.host}:{url.port or 5432}", "--delay-ms", str(delay_ms)],
    )  # fmt: skip

    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    wait_until(ready, process, "delay proxy")
    proxied = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    return dataclasses.replace(db, url=proxied)


def measure(
    label: str, db: Database, procs: Processes, settings: Settings, workers: list[int], work: Path
) -> dict[str, Any]:
    """Every --max-workers in `workers` on `db`, side by side."""
    ids = sample_runs(db, settings.segments)
    get_bodies = [grpc_body(work, f"get-{i}", pb.GetRunRequest(run_id=i)) for i in ids]
    list_body = grpc_body(work, "list", pb.ListRunsRequest(page_size=10))
    gets: list[Case] = []
    pages: list[Case] = []
    servers = []
    starter = Servers(procs, Path(sys.executable), db)
    for count in workers:
        process, port, _ = starter.start_ours(
            name=f"spur-runs-w{count}", flags=["--max-workers", str(count)]
        )
        servers.append(process)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = RunServiceStub(channel)
            # The smallest DATA per answer h2load must see (gRPC errors have none).
            get_min = [len(stub.GetRun(pb.GetRunRequest(run_id=i)).SerializeToString()) + 5
                       for i in ids]  # fmt: skip
            list_min = len(stub.ListRuns(pb.ListRunsRequest(page_size=10)).SerializeToString()) + 5
        pid = process.pid
        gets.append(Case(f"get{count}", f"GetRun, --max-workers {count}", "spur-runs gRPC",
                          GrpcLoad(port, GET_RUN_PATH, get_bodies, get_min),
                          lambda pid=pid: pid))  # fmt: skip
        page_load = GrpcLoad(port, LIST_RUNS_PATH, [list_body] * len(ids), [list_min] * len(ids))
        pages.append(Case(f"list{count}", f"ListRuns page of 10, --max-workers {count}",
                          "spur-runs gRPC", page_load,
                          lambda pid=pid: pid))  # fmt: skip
    cases = gets + pages  # each RPC's cases next to each other in every round
    run_rounds(cases, settings, work, label)
    for process in servers:
        procs.stop(process)
    by_key = {c.key: c for c in cases}
    rows = []
    for count in workers:
        row: dict[str, Any] = {"workers": count}
        for rpc in ("get", "list"):
            case = by_key[f"{rpc}{count}"]
            summary = case.summary()
            row[rpc] = {
                "rps": summary["rps"],
                "cpu_us": summary["cpu_us"],
                "switches": summary["switches"],
                "vs_default": per_round_ratio(case, by_key[f"{rpc}{DEFAULT_WORKERS}"]),
            }
        rows.append(row)
    return {"setting": label, "rows": rows}


def write(results: list[dict[str, Any]], settings: Settings, path: Path) -> None:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "bench/workers.py", *sys.argv[1:]])
    lines = [
        "# Throughput by --max-workers",
        "",
        f"`{command}`, {when}; {settings.rounds} rounds x {settings.seconds:g} s "
        "per case, h2load -t1 -c4 -m4 (16 calls in flight), 10,000 seeded runs. Produced by "
        "[bench/workers.py](../workers.py) (its docstring says how). Ratios: to "
        f"`--max-workers {DEFAULT_WORKERS}` (the default), medians of per-round ratios.",
        "",
        "| setting | --max-workers | GetRun req/s | vs 4 | CPU µs/call | switches/call "
        "| ListRuns req/s | vs 4 | CPU µs/page |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for row in result["rows"]:
            get, page = row["get"], row["list"]
            lines.append(
                f"| {result['setting']} | {row['workers']} | {get['rps']:,.0f} "
                f"| {get['vs_default']:.2f}x | {get['cpu_us']:,.0f} | {get['switches']:.1f} "
                f"| {page['rps']:,.0f} | {page['vs_default']:.2f}x | {page['cpu_us']:,.0f} |"
            )
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--workers", default="2,4,8", help="--max-workers values, 4 among them")
    parser.add_argument("--delay-ms", type=float, default=0.5, help="the proxy's hold, each way")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "workers.md")
    args = parser.parse_args()
    try:
        workers = sorted({int(w) for w in args.workers.split(",")})
    except ValueError:
        parser.error(f"--workers: comma-separated integers, got {args.workers!r}")
    if DEFAULT_WORKERS not in workers:
        parser.error(f"--workers must include {DEFAULT_WORKERS}, the ratios' reference")
    settings = Settings(seconds=args.seconds, rounds=args.rounds, segments=4, warmup=1.0)
    procs = Processes()
    results = []
    try:
        for backend in args.backends.split(","):
            db = create_database(backend, 10_000, "workers")
            work = DATA / "work" / f"workers-{backend}"
            work.mkdir(parents=True, exist_ok=True)
            try:
                seed_database(db)
                if backend == "sqlite":
                    results.append(measure(db.name, db, procs, settings, workers, work))
                    continue
                rtt = round_trip_ms(db.url)
                log(f"{db.name}: SELECT 1 round trip {rtt:.2f} ms over loopback")
                near = f"{db.name}, loopback ({rtt:.2f} ms)"
                results.append(measure(near, db, procs, settings, workers, work))
                far = behind_proxy(procs, db, args.delay_ms)
                rtt = round_trip_ms(far.url, calls=50)
                log(f"{db.name}: SELECT 1 round trip {rtt:.2f} ms through the delay proxy")
                results.append(
                    measure(f"{db.name}, {rtt:.1f} ms away", far, procs, settings, workers, work)
                )
            finally:
                drop_database(db)
    finally:
        procs.stop_all()
    write(results, settings, args.out)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
