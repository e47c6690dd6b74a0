"""Where a GetRun's server CPU goes, next to grpcio's empty-RPC floor.

    python bench/breakdown.py                    # SQLite and PostgreSQL, 10,000 runs, ~3 minutes
    python bench/breakdown.py --backends sqlite --rounds 3 --seconds 2

bench/run.py's "GetRun >= 50% of the floor" compares throughput; this splits
the cost of one GetRun into layers, measured back to back in every round (the
order reversed every other round), with the same h2load load as run.py
(-t1 -c4 -m4, 16 in flight):

1. floor:      /bench.Floor/Empty on bench/lib/floor_server.py (grpcio alone, our
               thread pool and channel options);
2. health:     grpc.health.v1.Health/Check on `spur-runs serve`: grpcio plus
               everything our server puts around every call (interceptors,
               metrics, limits) and a handler that reads no database;
3. GetRun:     GetRun of random runs on the same server;
4. in process: the servicer's GetRun (SQL, conversion, serialization)
               called in a loop on one thread of this process, no gRPC.

Server CPU per call (utime+stime of the server over the window / calls) is
the figure the noise moves least; beside it, the server's context switches
per call (its threads' /proc counters): how often the interpreter lock and
grpc's waits hand the CPU over. Layers: our per-call frame = health -
floor; GetRun's own work in the server = GetRun - health, against the same
work alone on one thread (in process): the difference is what sharing the
interpreter between threads costs. The throughput target needs GetRun's
CPU per call at most ~2x the floor's. Writes bench/results/breakdown.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from lib.common import DATA, GET_RUN_PATH, HEALTH_CHECK_PATH, RESULTS
from lib.data import create_database, drop_database, sample_runs, seed_database
from lib.load import Case, GrpcLoad, Settings, floor_load, grpc_body, per_round_ratio, run_rounds
from lib.procs import Processes
from lib.servers import Servers, start_floor

from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub


def in_process_cpu_us(url: str, run_ids: list[str], seconds: float) -> float:
    """CPU per GetRun (and its serialization) of the servicer alone, on this thread."""
    from spur_runs.api.service import RunService
    from spur_runs.store.db import Database

    db = Database.from_url(url)
    service = RunService(db)
    try:
        requests = [pb.GetRunRequest(run_id=i) for i in run_ids]
        for request in requests[:50]:  # warm: version cache, pool, statement caches
            service.GetRun(request, None).SerializeToString()  # type: ignore[arg-type]
        calls, start, cpu = 0, time.monotonic(), time.process_time()
        while time.monotonic() - start < seconds:
            for request in requests:
                service.GetRun(request, None).SerializeToString()  # type: ignore[arg-type]
            calls += len(requests)
        return (time.process_time() - cpu) / calls * 1e6
    finally:
        db.dispose()


def measure(backend: str, procs: Processes, settings: Settings) -> dict[str, object]:
    db = create_database(backend, 10_000, "breakdown")
    work = DATA / "work" / f"breakdown-{backend}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        seed_database(db)
        floor, floor_port = start_floor(procs, "sync")
        ours, port, _ = Servers(procs, Path(sys.executable), db).start_ours(
            name="spur-runs-breakdown"
        )
        ids = sample_runs(db, settings.segments * settings.rounds)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = RunServiceStub(channel)
            sizes = [len(stub.GetRun(pb.GetRunRequest(run_id=i)).SerializeToString()) for i in ids]
        seg = settings.segments
        get_bodies = [grpc_body(work, f"get-{i}", pb.GetRunRequest(run_id=i)) for i in ids]
        health = grpc_body(work, "health", health_pb2.HealthCheckRequest())
        cases = [
            Case("floor", "floor: empty unary, sync grpcio", "floor",
                       floor_load(floor_port, work, seg),
                       lambda: floor.pid),
            Case("health", "Health/Check on spur-runs serve", "spur-runs gRPC",
                       GrpcLoad(port, HEALTH_CHECK_PATH, [health] * seg, [7] * seg),
                       lambda: ours.pid),
            Case("get", "GetRun, random run", "spur-runs gRPC",
                       GrpcLoad(port, GET_RUN_PATH, get_bodies[:seg],
                                      [s + 5 for s in sizes[:seg]]), lambda: ours.pid),
        ]  # fmt: skip
        run_rounds(cases, settings, work, f"breakdown {backend}")
        alone = in_process_cpu_us(db.url, ids, settings.seconds * 2)
        procs.stop(ours)
        procs.stop(floor)
        summary = {c.key: c.summary() for c in cases}
        cpu = {k: summary[k]["cpu_us"] for k in summary}
        return {
            "backend": db.name,
            "cases": summary,
            "in_process_us": alone,
            "cpu": cpu,
            "get_vs_floor_rps": per_round_ratio(cases[2], cases[0]),
            "health_vs_floor_cpu": per_round_ratio(cases[1], cases[0], "cpu_us"),
            "get_vs_floor_cpu": per_round_ratio(cases[2], cases[0], "cpu_us"),
        }
    finally:
        drop_database(db)


def write(results: list[dict[str, object]], settings: Settings, path: Path) -> None:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Where a GetRun's server CPU goes",
        "",
        f"`python bench/breakdown.py`, {when}; {settings.rounds} rounds x {settings.seconds:g} s "
        "per case, h2load -t1 -c4 -m4, 10,000 seeded runs. Produced by "
        "[bench/breakdown.py](../breakdown.py) (its docstring says what each layer is).",
        "",
        "| database | floor µs/call | + our frame (Health/Check) | + GetRun's work "
        "| = GetRun µs/call | GetRun's work alone, 1 thread | GetRun req/s ÷ floor req/s "
        "| GetRun CPU ÷ floor CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cpu = r["cpu"]
        assert isinstance(cpu, dict)
        floor, health, get = cpu["floor"], cpu["health"], cpu["get"]
        lines.append(
            f"| {r['backend']} | {floor:,.0f} | {health - floor:+,.0f} | {get - health:+,.0f} "
            f"| {get:,.0f} | {r['in_process_us']:,.0f} | {r['get_vs_floor_rps']:.1%} "
            f"| {r['get_vs_floor_cpu']:.1f}x |"
        )
    lines += ["", "| database | case | req/s | p50 ms | p99 ms | server CPU µs/call "
              "| context switches/call |", "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        cases = r["cases"]
        assert isinstance(cases, dict)
        for case in cases.values():
            lines.append(
                f"| {r['backend']} | {case['label']} | {case['rps']:,.0f} | {case['p50_ms']:.2f} "
                f"| {case['p99_ms']:.2f} | {case['cpu_us']:,.0f} | {case.get('switches', 0):.1f} |"
            )
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "breakdown.md")
    args = parser.parse_args()
    settings = Settings(seconds=args.seconds, rounds=args.rounds, segments=4, warmup=1.0)
    procs = Processes()
    results = []
    try:
        for backend in args.backends.split(","):
            results.append(measure(backend, procs, settings))
    finally:
        procs.stop_all()
    write(results, settings, args.out)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
