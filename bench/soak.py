# ruff: noqa: E501  (report strings read better unbroken)
"""Bounded soak (issue 6, "Load"): mixed traffic against `spur-runs serve` for a
few minutes, on SQLite and on PostgreSQL, loopback only.

    /work/venv/bin/python bench/soak.py                     # both databases, 180 s each
    /work/venv/bin/python bench/soak.py --db postgresql --duration 600

For each database: a fresh one (SQLite file under bench/.data/, PostgreSQL
database spur_soak_* at 127.0.0.1:5432, dropped at the end), `spur-runs
migrate` + `spur-runs seed --runs N` (+ ANALYZE on PostgreSQL, as autovacuum
soon would), then `spur-runs serve`, then closed-loop load for --duration
seconds: --clients processes (grpc.aio, --concurrency calls in flight each)
send 80% GetRun of a random run id, 15% ListRuns (page 1, then the walk of
next_page_token for up to 20 pages), 4% GetRunTasks of a random run, 1%
DeleteRun of a random run. Closed loop: every answer starts the next call,
so the rate is the highest the machine sustains at that concurrency.

NOT_FOUND is expected (runs deleted earlier, and the children a deleted
batch run took along); every other non-OK code is an error. Printed every
--interval seconds: calls, rate, codes, p50/p99 latency, the server's RSS;
at the end the totals, p50/p99 of the first interval against the last (the
ratio says whether latency stays flat) and RSS start/end. Written to
bench/results/soak.md (the section of each database measured is replaced,
the other kept).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import random
import re
import signal
import subprocess
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lib.common import DATA, ROOT
from lib.data import Database, create_database, drop_database
from lib.procs import cpu_seconds, free_port

RESULTS = ROOT / "bench" / "results" / "soak.md"
CLI = [sys.executable, "-m", "spur_runs"]

# The mix of issue 6, as cumulative thresholds over [0, 100).
MIX = (("GetRun", 80), ("ListRuns", 95), ("GetRunTasks", 99), ("DeleteRun", 100))
EXPECTED = {"OK", "NOT_FOUND"}
CALL_TIMEOUT_S = 10.0

LIST_WALK_PAGES = 20


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------- the client


def client_process(
    port: int, id_range: tuple[int, int], concurrency: int, duration: float,
    interval: float, start_at: float, seed: int, out: Any,
) -> None:  # fmt: skip
    """One load process: `concurrency` coroutines in a closed loop. At the end
    of each interval it puts (index, {code: n}, latencies ms as bytes,
    {method: n}) on `out`; None when done."""
    asyncio.run(_drive(port, id_range, concurrency, duration, interval, start_at, seed, out))


async def _drive(
    port: int, id_range: tuple[int, int], concurrency: int, duration: float,
    interval: float, start_at: float, seed: int, out: Any,
) -> None:  # fmt: skip
    import grpc

    from spur.runs.v1 import run_service_pb2 as pb
    from spur.runs.v1.run_service_pb2_grpc import RunServiceStub

    rng = random.Random(seed)
    low, high = id_range
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = RunServiceStub(channel)
    codes: Counter[str] = Counter()
    methods: Counter[str] = Counter()
    latencies = array("d")
    end = start_at + duration
    while time.time() < start_at:
        await asyncio.sleep(0.01)

    def random_id() -> str:
        return f"R{rng.randint(low, high)}"

    async def worker() -> None:
        token, pages = "", 0
        while time.time() < end:
            pick = rng.random() * 100
            method = next(name for name, bound in MIX if pick < bound)
            started = time.perf_counter()
            try:
                if method == "GetRun":
                    await stub.GetRun(pb.GetRunRequest(run_id=random_id()), timeout=CALL_TIMEOUT_S)
                elif method == "ListRuns":
                    answer = await stub.ListRuns(
                        pb.ListRunsRequest(page_token=token), timeout=CALL_TIMEOUT_S
                    )
                    pages += 1
                    token = answer.next_page_token if pages < LIST_WALK_PAGES else ""
                    pages = pages if token else 0
                elif method == "GetRunTasks":
                    await stub.GetRunTasks(
                        pb.GetRunTasksRequest(run_id=random_id()), timeout=CALL_TIMEOUT_S
                    )
                else:
                    await stub.DeleteRun(
                        pb.DeleteRunRequest(run_id=random_id()), timeout=CALL_TIMEOUT_S
                    )
                code = "OK"
            except grpc.aio.AioRpcError as error:
                code = error.code().name
                if method == "ListRuns":
                    token, pages = "", 0
            latencies.append((time.perf_counter() - started) * 1000)
            codes[code] += 1
            methods[method] += 1
            if code != "OK":
                methods[f"{method} {code}"] += 1

    async def reporter() -> None:
        nonlocal latencies
        index = 0
        while True:
            boundary = start_at + (index + 1) * interval
            await asyncio.sleep(max(0.0, min(boundary, end) - time.time()))
            out.put((index, dict(codes), latencies.tobytes(), dict(methods)))
            codes.clear()
            methods.clear()
            latencies = array("d")
            index += 1
            if boundary >= end:
                return

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    report = asyncio.create_task(reporter())
    await asyncio.gather(*tasks)
    await report
    await channel.close()
    out.put(None)


# ---------------------------------------------------------------- the server


@dataclass
class Interval:
    index: int
    seconds: float
    codes: Counter[str] = field(default_factory=Counter)
    methods: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    rss: float = float("nan")
    cpu: float = float("nan")  # server CPU seconds over the interval

    @property
    def calls(self) -> int:
        return sum(self.codes.values())


def run(command: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def prepare(db: str, runs: int) -> tuple[Database, dict[str, Any]]:
    """A fresh database, migrated and seeded; returns it and facts."""
    database = create_database(db, runs, "soak")
    url, pg_name = database.url, database.pg_name
    run([*CLI, "migrate", "--database-url", url])
    started = time.monotonic()
    summary = run([*CLI, "seed", "--database-url", url, "--runs", str(runs)])
    facts: dict[str, Any] = {
        "seed_s": time.monotonic() - started,
        "seed": summary.strip().splitlines()[0],
    }
    from sqlalchemy import create_engine, text

    engine = create_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as conn:
        if pg_name is not None:
            conn.execute(text("ANALYZE"))
        low, high, count = conn.execute(
            text("SELECT min(_intid), max(_intid), count(*) FROM runs")
        ).one()
    engine.dispose()
    facts.update(id_range=(int(low), int(high)), runs=int(count))
    return database, facts


def start_server(url: str, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    process = subprocess.Popen(
        [*CLI, "serve", "--database-url", url, "--grpc-address", f"127.0.0.1:{port}",
         "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 60
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"spur-runs serve exited {process.returncode}; see {log_path}")
            try:
                if (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return process
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    process.kill()
    raise SystemExit("spur-runs serve did not become SERVING within 60 s")


def soak(db: str, args: argparse.Namespace) -> dict[str, Any]:
    print(f"\n== {db}: seeding {args.runs:,} runs", flush=True)
    database, facts = prepare(db, args.runs)
    url = database.url
    print(
        f"   {facts['seed']} (wall {facts['seed_s']:.1f} s); ids R{facts['id_range'][0]}..R{facts['id_range'][1]}",
        flush=True,
    )
    port = free_port()
    DATA.mkdir(parents=True, exist_ok=True)
    log_path = DATA / f"soak-{db}-server.log"
    server = start_server(url, port, log_path)
    intervals: list[Interval] = []
    try:
        rss_start = rss_mb(server.pid)
        cpu_before = cpu_seconds(server.pid)
        context = mp.get_context("spawn")  # no fork of a process that may hold grpc state
        queue = context.Queue()
        start_at = time.time() + 2.0  # every client process starts together
        clients = [
            context.Process(
                target=client_process,
                args=(
                    port,
                    facts["id_range"],
                    args.concurrency,
                    args.duration,
                    args.interval,
                    start_at,
                    args.seed + i,
                    queue,
                ),
            )  # fmt: skip
            for i in range(args.clients)
        ]
        for client in clients:
            client.start()
        print(
            f"   serving on 127.0.0.1:{port} (pid {server.pid}, RSS {rss_start:.0f} MB); "
            f"{args.clients} client process(es) x {args.concurrency} in flight for {args.duration:.0f} s",
            flush=True,
        )
        print(
            f"   {'t(s)':>5} {'calls':>8} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'RSS MB':>7} {'srv CPU':>7}  codes",
            flush=True,
        )
        parts: dict[int, list[tuple[dict[str, int], bytes, dict[str, int]]]] = {}
        done = 0
        while done < len(clients):
            item = queue.get(timeout=args.duration + args.interval + 120)
            if item is None:
                done += 1
                continue
            index, codes, raw, methods = item
            parts.setdefault(index, []).append((codes, raw, methods))
            if len(parts[index]) == len(clients):
                seconds = min(args.interval, args.duration - index * args.interval)
                interval = Interval(index, seconds)
                for c, r, m in parts.pop(index):
                    interval.codes.update(c)
                    interval.methods.update(m)
                    latencies = array("d")
                    latencies.frombytes(r)
                    interval.latencies.extend(latencies)
                interval.rss = rss_mb(server.pid)
                cpu_now = cpu_seconds(server.pid)
                interval.cpu, cpu_before = cpu_now - cpu_before, cpu_now
                intervals.append(interval)
                shown = ", ".join(f"{k} {v}" for k, v in interval.codes.most_common())
                print(
                    f"   {(index * args.interval + seconds):5.0f} {interval.calls:8d} {interval.calls / seconds:8.0f} "
                    f"{percentile(interval.latencies, 0.5):7.2f} {percentile(interval.latencies, 0.99):7.2f} "
                    f"{interval.rss:7.0f} {interval.cpu / seconds:7.0%}  {shown}",
                    flush=True,
                )
        for client in clients:
            client.join(timeout=30)
        rss_end = rss_mb(server.pid)
        server.send_signal(signal.SIGTERM)
        exit_code = server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
        drop_database(database)
    intervals.sort(key=lambda i: i.index)
    return summarize(db, args, facts, intervals, rss_start, rss_end, exit_code, log_path)


def summarize(
    db: str, args: argparse.Namespace, facts: dict[str, Any], intervals: list[Interval],
    rss_start: float, rss_end: float, exit_code: int, log_path: Path,
) -> dict[str, Any]:  # fmt: skip
    codes: Counter[str] = Counter()
    methods: Counter[str] = Counter()
    for i in intervals:
        codes.update(i.codes)
        methods.update(i.methods)
    everything = [x for i in intervals for x in i.latencies]
    first, last = intervals[0], intervals[-1]
    errors = {k: v for k, v in codes.items() if k not in EXPECTED}
    log_text = log_path.read_text(errors="replace")
    result = {
        "db": db,
        "facts": facts,
        "intervals": intervals,
        "calls": sum(codes.values()),
        "rate": sum(codes.values()) / args.duration,
        "codes": codes,
        "methods": Counter({k: v for k, v in methods.items() if " " not in k}),
        "failed_by_method": {k: v for k, v in methods.items() if " " in k},
        "errors": errors,
        "p50": percentile(everything, 0.5),
        "p99": percentile(everything, 0.99),
        "first": (percentile(first.latencies, 0.5), percentile(first.latencies, 0.99)),
        "last": (percentile(last.latencies, 0.5), percentile(last.latencies, 0.99)),
        "rss": (rss_start, intervals[0].rss, rss_end),
        "exit_code": exit_code,
        "tracebacks": log_text.count("Traceback"),
    }
    r = result
    print(f"\n   {db}: {r['calls']:,} calls in {args.duration:.0f} s ({r['rate']:.0f}/s); codes: "
          + ", ".join(f"{k} {v}" for k, v in codes.most_common()))  # fmt: skip
    print(f"   non-OK by method: {r['failed_by_method'] or 'none'}")
    print(
        f"   errors (other than NOT_FOUND): {errors or 'none'}; server tracebacks logged: {r['tracebacks']}; exit code {exit_code}"
    )
    print(f"   p50/p99 overall {r['p50']:.2f}/{r['p99']:.2f} ms; first interval {r['first'][0]:.2f}/{r['first'][1]:.2f} ms, "
          f"last {r['last'][0]:.2f}/{r['last'][1]:.2f} ms: p99 last/first = {r['last'][1] / r['first'][1]:.2f}")  # fmt: skip
    print(f"   RSS: {rss_start:.0f} MB before load, {intervals[0].rss:.0f} MB after the first interval, "
          f"{rss_end:.0f} MB at the end (end/first-interval {rss_end / intervals[0].rss:.2f})", flush=True)  # fmt: skip
    return result


def section(r: dict[str, Any], args: argparse.Namespace) -> str:
    f = r["facts"]
    lines = [
        f"<!-- soak:{r['db']} -->",
        f"## {'SQLite' if r['db'] == 'sqlite' else 'PostgreSQL'}",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: `python bench/soak.py --db {r['db']} --duration {args.duration:.0f} "
        f"--runs {args.runs} --clients {args.clients} --concurrency {args.concurrency} --interval {args.interval:.0f}`. "
        f"Seed: {f['seed']} (wall {f['seed_s']:.1f} s).",
        "",
        "| t (s) | calls | calls/s | p50 ms | p99 ms | server RSS MB | server CPU | codes |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for i in r["intervals"]:
        t = i.index * args.interval + i.seconds
        codes = ", ".join(f"{k} {v}" for k, v in i.codes.most_common())
        lines.append(
            f"| {t:.0f} | {i.calls:,} | {i.calls / i.seconds:.0f} | {percentile(i.latencies, 0.5):.2f} | "
            f"{percentile(i.latencies, 0.99):.2f} | {i.rss:.0f} | {i.cpu / i.seconds:.0%} | {codes} |"
        )
    p99_ratio = r["last"][1] / r["first"][1]
    lines += [
        "",
        f"- Calls: **{r['calls']:,}** ({r['rate']:.0f}/s); by method: "
        + ", ".join(f"{k} {v:,}" for k, v in r["methods"].most_common())
        + "; non-OK by method: "
        + (", ".join(f"{k} {v:,}" for k, v in sorted(r["failed_by_method"].items())) or "none")
        + ".",
        "- Codes: "
        + ", ".join(f"{k} {v:,}" for k, v in r["codes"].most_common())
        + f". Errors other than NOT_FOUND: **{sum(r['errors'].values())}**"
        + (f" ({r['errors']})" if r["errors"] else "")
        + f"; tracebacks in the server log: {r['tracebacks']}; server exit code after SIGTERM: {r['exit_code']}.",
        f"- Latency p50/p99: overall {r['p50']:.2f}/{r['p99']:.2f} ms; first interval {r['first'][0]:.2f}/{r['first'][1]:.2f} ms, "
        f"last {r['last'][0]:.2f}/{r['last'][1]:.2f} ms: **p99 last/first = {p99_ratio:.2f}**, "
        f"p50 last/first = {r['last'][0] / r['first'][0]:.2f}.",
        f"- Server RSS: {r['rss'][0]:.0f} MB before the load, {r['rss'][1]:.0f} MB after the first interval, "
        f"**{r['rss'][2]:.0f} MB at the end** (end / after first interval = {r['rss'][2] / r['rss'][1]:.2f}).",
        "",
    ]
    return "\n".join(lines)


def write_results(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    sections: dict[str, str] = {}
    if RESULTS.exists():
        for match in re.finditer(
            r"(<!-- soak:([\w-]+) -->.*?)(?=<!-- soak:|\Z)", RESULTS.read_text(), re.S
        ):
            sections[match.group(2)] = match.group(1).rstrip() + "\n"
    for r in results:
        sections[r["db"]] = section(r, args)
    from spur_runs.config import Config

    defaults = Config()
    head = [
        "# Soak (issue 6, Load)",
        "",
        "`bench/soak.py`: closed-loop mixed traffic against one `spur-runs serve` process (default flags: "
        f"{defaults.max_workers} threads, pool of {defaults.pool_size}) on loopback: 80% GetRun of a random run id, 15% ListRuns (page 1, then its next_page_token, up to "
        "20 pages), 4% GetRunTasks of a random run, 1% DeleteRun of a random run; each call with a 10 s deadline. "
        "NOT_FOUND is expected (runs deleted earlier, with their children); any other non-OK code counts as an error. "
        "Latency is measured by the client (grpc.aio), per call. RSS is VmRSS of the server process; server CPU is its "
        "user + system time over the interval (100% = one core: one process serves under one interpreter lock). "
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; the client "
        "shares the machine with the server.",
        "",
        "History: the first soak (2026-11-29, before migration 0004) found DeleteRun taking 0.5-0.9 s on SQLite "
        "and seconds on PostgreSQL at 100,000 runs: PySpur declares `tasks.parent_task_id REFERENCES tasks(id)` "
        "without an index, so deleting a task made the database scan every task for its children (the "
        "foreign-key check). Deletes queued behind each other: SQLite 134 DEADLINE_EXCEEDED in 55,488 calls "
        "(308/s), PostgreSQL 6 in 48,914 (272/s, p99 2.9 s in the first minute). Migration 0004 adds "
        "`ix_spur_runs_tasks_parent_task_id`; one delete now takes ~1.5 ms.",
        "",
    ]
    body = [sections[k] for k in ("sqlite", "postgresql") if k in sections]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(head) + "\n" + "\n".join(body))
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument(
        "--duration", type=float, default=180, help="seconds of load per database (180)"
    )
    parser.add_argument("--interval", type=float, default=60, help="seconds per printed line (60)")
    parser.add_argument("--runs", type=int, default=100_000, help="runs to seed (100,000)")
    parser.add_argument("--clients", type=int, default=1, help="client processes (1)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="calls in flight per client process (16)"
    )
    parser.add_argument("--seed", type=int, default=6, help="random seed of the traffic")
    parser.add_argument(
        "--no-write", action="store_true", help=f"do not write {RESULTS.relative_to(ROOT)}"
    )
    args = parser.parse_args()
    dbs = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    results = [soak(db, args) for db in dbs]
    if not args.no_write:
        write_results(results, args)
    failed = [r["db"] for r in results if r["errors"] or r["tracebacks"]]
    if failed:
        print(f"errors other than NOT_FOUND on: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
