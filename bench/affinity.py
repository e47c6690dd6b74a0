"""The same servers on every CPU and pinned to one: the floor, GetRun, ListRuns.

    python bench/affinity.py                     # SQLite and PostgreSQL, 10,000 runs, ~4 minutes
    python bench/affinity.py --backends sqlite --rounds 3 --cpu 1

One Python thread runs at a time. When the thread that holds the
interpreter lock lets go of it (sqlite3 does around every small SQLite call,
grpc around its waits), a thread waiting for it is woken; on another CPU
that is a wake-up across CPUs, and on a virtual machine each one costs the
hypervisor's interrupt. bench/breakdown.py counts 14-25 context switches
per call. A server whose threads all share one CPU hands the lock over
without waking another CPU.

This starts each server twice at once on the same database: free (every
CPU, as bench/run.py runs it) and under `taskset -c CPU` (its every thread
on one CPU). Under bench/run.py's load (h2load -t1 -c4 -m4, 16 calls in
flight; h2load itself free, as there), the cases of a round run back to back,
order reversed every other round. Ratios: pinned to free, medians of
per-round ratios; and GetRun's share of the floor (bench/run.py's target)
with both free and with both pinned. Writes bench/results/affinity.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from lib.common import DATA, GET_RUN_PATH, LIST_RUNS_PATH, RESULTS
from lib.data import create_database, drop_database, sample_runs, seed_database
from lib.load import Case, GrpcLoad, Settings, floor_load, grpc_body, per_round_ratio, run_rounds
from lib.procs import Processes
from lib.servers import Servers, start_floor

from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub

RPCS = (("floor", "floor: empty unary, sync grpcio"), ("get", "GetRun, random run"),
        ("list", "ListRuns page of 10"))  # fmt: skip
SIDES = ("free", "pinned")


def measure(backend: str, procs: Processes, settings: Settings, cpu: int) -> dict[str, Any]:
    db = create_database(backend, 10_000, "affinity")
    work = DATA / "work" / f"affinity-{backend}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        seed_database(db)
        ids = sample_runs(db, settings.segments)
        get_bodies = [grpc_body(work, f"get-{i}", pb.GetRunRequest(run_id=i)) for i in ids]
        list_body = grpc_body(work, "list", pb.ListRunsRequest(page_size=10))
        starter = Servers(procs, Path(sys.executable), db)
        # Per side: each RPC's load and the pid of the process that serves it.
        served: dict[str, dict[str, tuple[GrpcLoad, int]]] = {}
        for side in SIDES:
            prefix = ["taskset", "-c", str(cpu)] if side == "pinned" else []
            floor, floor_port = start_floor(procs, "sync", prefix=prefix)
            ours, port, _ = starter.start_ours(name=f"spur-runs-{side}", prefix=prefix)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = RunServiceStub(channel)
                # The smallest DATA per answer h2load must see (gRPC errors have none).
                get_min = [len(stub.GetRun(pb.GetRunRequest(run_id=i)).SerializeToString()) + 5
                           for i in ids]  # fmt: skip
                page = stub.ListRuns(pb.ListRunsRequest(page_size=10))
                list_min = len(page.SerializeToString()) + 5
            served[side] = {
                "floor": (floor_load(floor_port, work, len(ids)), floor.pid),
                "get": (GrpcLoad(port, GET_RUN_PATH, get_bodies, get_min), ours.pid),
                "list": (GrpcLoad(port, LIST_RUNS_PATH, [list_body] * len(ids),
                                  [list_min] * len(ids)), ours.pid),
            }  # fmt: skip
        # Each RPC's two sides next to each other in every round.
        cases = [
            Case(f"{rpc}-{side}", f"{label}, {side}", side, served[side][rpc][0],
                 lambda pid=served[side][rpc][1]: pid)
            for rpc, label in RPCS
            for side in SIDES
        ]  # fmt: skip
        run_rounds(cases, settings, work, f"affinity {backend}")
        by_key = {case.key: case for case in cases}
        rows = []
        for rpc, label in RPCS:
            free, pinned = by_key[f"{rpc}-free"], by_key[f"{rpc}-pinned"]
            rows.append({
                "rpc": label,
                "free": free.summary(),
                "pinned": pinned.summary(),
                "rps_ratio": per_round_ratio(pinned, free),
                "cpu_ratio": per_round_ratio(pinned, free, "cpu_us"),
            })  # fmt: skip
        share = {
            side: per_round_ratio(by_key[f"get-{side}"], by_key[f"floor-{side}"]) for side in SIDES
        }
        return {"database": db.name, "rows": rows, "share": share}
    finally:
        procs.stop_all()
        drop_database(db)


def write(results: list[dict[str, Any]], settings: Settings, cpu: int, path: Path) -> None:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "bench/affinity.py", *sys.argv[1:]])
    lines = [
        "# The same servers on every CPU and pinned to one",
        "",
        f"`{command}`, {when}; {os.cpu_count()} CPUs; {settings.rounds} rounds x "
        f"{settings.seconds:g} s per case, h2load -t1 -c4 -m4 (16 calls in flight), 10,000 "
        f"seeded runs. Pinned: started under `taskset -c {cpu}`. Produced by "
        "[bench/affinity.py](../affinity.py) (its docstring says how). Ratios: pinned to "
        "free, medians of per-round ratios.",
        "",
        "| database | case | free req/s | pinned req/s | pinned ÷ free | free CPU µs/call "
        "| pinned CPU µs/call | pinned ÷ free | switches/call free → pinned |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for row in result["rows"]:
            free, pinned = row["free"], row["pinned"]
            lines.append(
                f"| {result['database']} | {row['rpc']} | {free['rps']:,.0f} "
                f"| {pinned['rps']:,.0f} | {row['rps_ratio']:.2f}x | {free['cpu_us']:,.0f} "
                f"| {pinned['cpu_us']:,.0f} | {row['cpu_ratio']:.2f}x "
                f"| {free['switches']:.1f} → {pinned['switches']:.1f} |"
            )
    lines += [
        "",
        "GetRun's share of the floor (req/s, bench/run.py's target), each side against its own "
        "floor:",
        "",
        "| database | both free | both pinned |",
        "|---|---:|---:|",
    ]
    for result in results:
        share = result["share"]
        lines.append(f"| {result['database']} | {share['free']:.1%} | {share['pinned']:.1%} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU the pinned servers run on")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "affinity.md")
    args = parser.parse_args()
    if args.cpu not in os.sched_getaffinity(0):
        parser.error(f"--cpu: {args.cpu} is not among this process's CPUs")
    settings = Settings(seconds=args.seconds, rounds=args.rounds, segments=4, warmup=1.0)
    procs = Processes()
    results = [measure(backend, procs, settings, args.cpu) for backend in args.backends.split(",")]
    write(results, settings, args.cpu, args.out)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
