# ruff: noqa: E501  (report strings read better unbroken)
"""Which server model is faster for spur-runs: sync grpcio + sync SQLAlchemy, grpc.aio + async SQLAlchemy, or grpc.aio running the sync reads on its loop?

    python bench/aio_vs_sync.py                  # SQLite and PostgreSQL, ~12 minutes
    python bench/aio_vs_sync.py --backends sqlite --rounds 2 --seconds 1   # a quick look

(needs `pip install -e '.[dev]'`: aiosqlite, and greenlet for SQLAlchemy's asyncio.)
Writes bench/results/aio_vs_sync.md. Loopback only.

For each database (a temp SQLite file and a temp PostgreSQL database
spur_bench_aiovs*_* at 127.0.0.1:5432, both dropped at the end): `spur-runs
migrate` + `spur-runs seed --runs 10000` (+ ANALYZE on PostgreSQL, as
bench/run.py), then these servers as child processes on free ports:

- aio:       bench/lib/aio_server.py --mode aio  (grpc.aio + create_async_engine, pool 16)
- aio-pool4: the same with an async engine pool of 4
- sync:      bench/lib/aio_server.py --mode sync (grpc.server, 4 threads, RunService, pool 16)
- inline:    bench/lib/aio_server.py --mode inline (grpc.aio, the same sync RunService
             called on the event loop's thread: no hand-over between threads)
- inline-frame: the same, each call wrapped in spur-runs serve's interceptor chain
- floor:     bench/lib/floor_server.py --mode sync, the empty RPC of bench/run.py's
             "share of the floor" (GetRun cases only)
- serve:     `spur-runs serve` with its default flags (interceptors, health, ...), for context

aio and sync differ in the server model only: both run store/runs.py and
api/convert.py unchanged, no interceptors. Before any load, GetRun of a few runs
and one ListRuns page must be byte-identical on every server (see `check_same`).

Load: h2load -t1 (content-type application/grpc, te trailers, one
length-prefixed body) on GetRun of one run and on ListRuns page_size 10 (full
view), at -c4 -m4 (16 in flight, as bench/run.py) with all four servers and
at -c1 -m1 (one in flight) with aio, sync and inline. Every round loads each case of
a comparison back to back, the order reversed every other round. Per case:
req/s, p50/p99 (h2load's per-request log) and server CPU µs/req (utime+stime
of the server process from /proc/PID/stat over the window / requests). A
ratio is the median of the per-round ratios. On PostgreSQL the CPU figure
leaves out the database's own backends; on SQLite the database work is in it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from lib.common import DATA, GRPC_HEADERS, LIB, RESULTS, log
from lib.data import Database, create_database, drop_database, sample_runs, seed_database
from lib.load import Sample, grpc_body, percentile
from lib.procs import Processes, free_port, tree_cpu, wait_until

from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub

GET_RUN = "/spur.runs.v1.RunService/GetRun"
LIST_RUNS = "/spur.runs.v1.RunService/ListRuns"
RUNS = 10_000
# (clients, streams per client): 16 in flight as bench/run.py, and one.
LOADS = {"c4m4": (4, 4), "c1m1": (1, 1)}
# Which servers each load compares; the first two are the ratio's terms.
SERVERS_AT = {
    "c4m4": ["aio", "sync", "inline", "inline-frame", "aio-pool4", "serve", "floor"],
    "c1m1": ["aio", "sync", "inline"],
}
FLOOR = "/bench.Floor/Empty"  # lib/floor_server.py: it answers any request, empty


# ---------------------------------------------------------------------------
# Servers


def start_server(procs: Processes, kind: str, db: Database) -> tuple[int, int]:
    """(pid, port) of a started and answering server."""
    port = free_port()
    python = sys.executable
    if kind == "floor":
        command = [python, str(LIB / "floor_server.py"), "--mode", "sync", "--port", str(port)]
    elif kind == "serve":
        command = [
            python, "-m", "spur_runs", "serve", "--database-url", db.url,
            "--grpc-address", f"127.0.0.1:{port}", "--log-level", "WARNING",
        ]  # fmt: skip
    else:
        mode = kind if kind in ("sync", "inline", "inline-frame") else "aio"
        pool = "4" if kind == "aio-pool4" else "16"
        command = [
            python, str(LIB / "aio_server.py"), "--mode", mode, "--database-url", db.url,
            "--port", str(port), "--pool-size", pool,
        ]  # fmt: skip
    process = procs.start(f"aiovs-{kind}-{db.slug}", command)

    def ready() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            if kind == "floor":
                channel.unary_unary(FLOOR)(b"", timeout=2)
            else:
                RunServiceStub(channel).ListRuns(pb.ListRunsRequest(page_size=1), timeout=2)
        return True

    wait_until(ready, process, kind)
    return process.pid, port


def _call(port: int, path: str, request: Any) -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        return bytes(method(request.SerializeToString(), timeout=30))


def _canonical(message: Any) -> bytes:
    """Bytes to compare across processes. google.protobuf.Struct is a map,
    and a map's wire order follows a per-process hash seed: two sync servers
    already differ byte for byte, so answers are re-serialized
    deterministically. A run still running reports duration = now - start,
    which moves between two calls: it is cleared for those runs only."""
    runs = [message.run] if isinstance(message, pb.GetRunResponse) else list(message.runs)
    for run in runs:
        if not run.HasField("end_time"):
            run.ClearField("duration")
    return bytes(message.SerializeToString(deterministic=True))


def check_same(ports: dict[str, int], run_ids: list[str]) -> dict[str, int]:
    """Asserts every server answers GetRun of `run_ids` and ListRuns page 1
    with the same bytes; returns the answers' sizes (for h2load's check)."""
    sizes: dict[str, int] = {}
    cases: list[tuple[str, Any, Any]] = [
        (GET_RUN, pb.GetRunRequest(run_id=r), pb.GetRunResponse) for r in run_ids
    ]
    cases.append((LIST_RUNS, pb.ListRunsRequest(page_size=10), pb.ListRunsResponse))
    for path, request, kind in cases:
        answers = {name: _call(port, path, request) for name, port in ports.items()}
        canon = {name: _canonical(kind.FromString(raw)) for name, raw in answers.items()}
        reference = canon["sync"]
        for name, got in canon.items():
            assert got == reference, f"{name} answers {path} {request} unlike sync"
        sizes[f"{path} {request.SerializeToString().hex()}"] = min(map(len, answers.values()))
    return sizes


# ---------------------------------------------------------------------------
# Load


@dataclass
class Case:
    server: str
    rpc: str  # GetRun | ListRuns
    load: str  # c4m4 | c1m1
    pid: int
    port: int
    body: Path
    min_data: int  # bytes of one answer: gRPC errors carry no DATA
    samples: list[Sample] = field(default_factory=list)

    def h2load(self, seconds: float, work: Path) -> Sample:
        clients, streams = LOADS[self.load]
        path = FLOOR if self.server == "floor" else GET_RUN if self.rpc == "GetRun" else LIST_RUNS
        log_file = work / "h2load.log"
        command = [
            "h2load", "-t", "1", "-c", str(clients), "-m", str(streams), "-D", f"{int(seconds * 1000)}ms",
            *GRPC_HEADERS, "-d", str(self.body), "--log-file", str(log_file),
            f"http://127.0.0.1:{self.port}{path}",
        ]  # fmt: skip
        before = tree_cpu(self.pid)
        out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120).stdout
        cpu = tree_cpu(self.pid) - before
        finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
        counts = re.search(r"(\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
        data = re.search(r"\(\d+\) headers .*?, ([\d.]+)(B|KB|MB|GB) \((\d+)\) data", out)
        if not (finished and counts and data):
            raise RuntimeError(f"h2load: unexpected output:\n{out}")
        done = int(counts.group(1))
        if done == 0 or counts.group(3, 4) != ("0", "0"):
            raise RuntimeError(f"h2load: failed requests:\n{out}")
        if int(data.group(3)) / done < 0.9 * self.min_data:
            raise RuntimeError(f"h2load: answers smaller than a good one (gRPC errors?):\n{out}")
        latencies = sorted(
            int(parts[2]) / 1000
            for parts in (line.split("\t") for line in log_file.read_text().splitlines())
            if len(parts) == 3
        )
        log_file.unlink()
        took = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
        return Sample(
            done / took, done, took, percentile(latencies, 50), percentile(latencies, 99),
            cpu / done * 1e6,
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        med = lambda attr: statistics.median(getattr(s, attr) for s in self.samples)  # noqa: E731
        return {
            "server": self.server,
            "rpc": self.rpc,
            "load": self.load,
            "rps": med("rps"),
            "rps_min": min(s.rps for s in self.samples),
            "rps_max": max(s.rps for s in self.samples),
            "p50_ms": med("p50_ms"),
            "p99_ms": med("p99_ms"),
            "cpu_us": med("cpu_us"),
            "requests": sum(s.requests for s in self.samples),
            "rounds": [asdict(s) for s in self.samples],
        }


def ratio(a: Case, b: Case, attr: str) -> float:
    """Median over rounds of a/b, each round measuring a and b back to back."""
    return statistics.median(
        getattr(x, attr) / getattr(y, attr) for x, y in zip(a.samples, b.samples, strict=True)
    )


def in_process(db: Database, run_id: str, rounds: int, calls: int = 300) -> dict[str, Any]:
    """CPU µs per call of the database layer alone, no gRPC: RunService's
    GetRun/ListRuns against AioRunService's, one call at a time in this
    process (process_time counts aiosqlite's threads too). Tells how much of
    the h2load gap is the async driver path rather than grpc.aio."""
    from lib.aio_server import AioRunService, create_async_db_engine

    from spur_runs.api.service import RunService
    from spur_runs.store.db import Database as SpurDatabase

    spur = SpurDatabase.from_url(db.url)
    sync_service = RunService(spur)
    loop = asyncio.new_event_loop()
    engine = create_async_db_engine(db.url, 16)
    aio_service = AioRunService(engine)

    def sync_us(rpc: str, request: Any) -> float:
        method = getattr(sync_service, rpc)
        start = time.process_time()
        for _ in range(calls):
            method(request, None)
        return (time.process_time() - start) / calls * 1e6

    async def awaited(rpc: str, request: Any) -> None:
        method = getattr(aio_service, rpc)
        for _ in range(calls):
            await method(request, None)

    def aio_us(rpc: str, request: Any) -> float:
        start = time.process_time()
        loop.run_until_complete(awaited(rpc, request))
        return (time.process_time() - start) / calls * 1e6

    found: dict[str, Any] = {}
    try:
        requests = {
            "GetRun": pb.GetRunRequest(run_id=run_id),
            "ListRuns": pb.ListRunsRequest(page_size=10),
        }
        for rpc, request in requests.items():
            # Warm-up: the version cache, the pools' connections.
            sync_us(rpc, request)
            aio_us(rpc, request)
            pairs = []
            for n in range(rounds):
                if n % 2 == 0:
                    s, a = sync_us(rpc, request), aio_us(rpc, request)
                else:
                    a, s = aio_us(rpc, request), sync_us(rpc, request)
                pairs.append((s, a))
            found[rpc] = {
                "sync_us": statistics.median(s for s, _ in pairs),
                "aio_us": statistics.median(a for _, a in pairs),
                "ratio": statistics.median(a / s for s, a in pairs),
            }
            log(f"{db.name} in process {rpc}: aio/sync CPU/call {found[rpc]['ratio']:.2f}x")
    finally:
        loop.run_until_complete(engine.dispose())
        loop.close()
        spur.dispose()
    return found


# ---------------------------------------------------------------------------
# One database


def bench_database(
    backend: str, procs: Processes, rounds: int, seconds: float, work: Path
) -> dict[str, Any]:
    db = create_database(backend, RUNS, f"aiovs{os.getpid()}")
    try:
        log(f"=== {db.name}")
        seeded = seed_database(db)
        run_ids = sample_runs(db, 5)
        servers = {kind: start_server(procs, kind, db) for kind in SERVERS_AT["c4m4"]}
        # The floor answers any request with nothing: it has no answers to compare.
        ports = {kind: port for kind, (_pid, port) in servers.items() if kind != "floor"}
        sizes = check_same(ports, run_ids)
        log(
            f"{db.name}: GetRun of {', '.join(run_ids)} and ListRuns page 1 identical on {', '.join(ports)}"
        )
        get_request = pb.GetRunRequest(run_id=run_ids[0])
        list_request = pb.ListRunsRequest(page_size=10)
        bodies = {
            "GetRun": (
                grpc_body(work, "get", get_request),
                sizes[f"{GET_RUN} {get_request.SerializeToString().hex()}"],
            ),
            "ListRuns": (
                grpc_body(work, "list", list_request),
                sizes[f"{LIST_RUNS} {list_request.SerializeToString().hex()}"],
            ),
        }
        groups: list[list[Case]] = [
            [
                Case(
                    kind,
                    rpc,
                    load,
                    *servers[kind],
                    bodies[rpc][0],
                    0 if kind == "floor" else bodies[rpc][1],
                )
                for kind in SERVERS_AT[load]
                if kind != "floor" or rpc == "GetRun"
            ]
            for load in LOADS
            for rpc in bodies
        ]
        for group in groups:  # warm-up: version caches, pools, first-call costs
            for case in group:
                case.h2load(1.0, work)
        for n in range(rounds):
            log(f"{db.name}: round {n + 1}/{rounds}")
            for group in groups:
                for case in group if n % 2 == 0 else reversed(group):
                    case.samples.append(case.h2load(seconds, work))
        ratios = []
        for group in groups:
            aio, sync = group[0], group[1]
            row = {
                "rpc": aio.rpc,
                "load": aio.load,
                "rps": ratio(aio, sync, "rps"),
                "cpu": ratio(aio, sync, "cpu_us"),
            }
            for case in group[2:]:
                row[f"{case.server}_rps"] = ratio(case, sync, "rps")
                row[f"{case.server}_cpu"] = ratio(case, sync, "cpu_us")
            floor = next((c for c in group if c.server == "floor"), None)
            if floor is not None:  # bench/run.py's target: GetRun's req/s over the floor's
                for case in group:
                    if case is not floor:
                        row[f"{case.server}_floor_share"] = ratio(case, floor, "rps")
            ratios.append(row)
            log(
                f"{db.name} {aio.rpc} {aio.load}: aio/sync req/s {row['rps']:.2f}x, CPU/req {row['cpu']:.2f}x"
            )
        return {
            "name": db.name.split()[0],
            "get_run_id": run_ids[0],
            "checked_run_ids": run_ids,
            "seed": seeded,
            "cases": [case.summary() for group in groups for case in group],
            "ratios": ratios,
            "in_process": in_process(db, run_ids[0], rounds),
        }
    finally:
        procs.stop_all()
        drop_database(db)


# ---------------------------------------------------------------------------
# Report


def write_markdown(results: dict[str, Any], path: Path) -> None:
    meta = results["meta"]
    lines = [
        "# sync grpcio + SQLAlchemy vs grpc.aio (async SQLAlchemy, or the sync reads on its loop)",
        "",
        f"`{meta['command']}` — {meta['date']}, {meta['machine']}, load {meta['load_start']} → "
        f"{meta['load_end']}; {meta['rounds']} rounds × {meta['seconds']:g} s per case, {RUNS:,} seeded runs.",
        "",
        "- **aio**: bench/lib/aio_server.py --mode aio: grpc.aio.server, create_async_engine "
        "(sqlite+aiosqlite / postgresql+psycopg async), pool 16; store/runs.py + api/convert.py unchanged via "
        "`await conn.run_sync(fn)`, with db.Database's reads: GetRun one statement without a "
        "transaction (autocommit on PostgreSQL), ListRuns one transaction (REPEATABLE READ on "
        "PostgreSQL; db.py's SQLite PRAGMAs and BEGIN). **aio-pool4**: the same, async pool 4.",
        "- **sync**: bench/lib/aio_server.py --mode sync: grpc.server(ThreadPoolExecutor(4)) + "
        "spur_runs.service.RunService(Database.from_url(url)), pool 16. No interceptors on either.",
        "- **inline**: bench/lib/aio_server.py --mode inline: grpc.aio.server serving that same sync "
        "RunService, each call run on the event loop's own thread (no hand-over between threads; a "
        "blocking read blocks the whole server, on PostgreSQL for every round trip). What the server "
        "model alone would buy, not a design to ship as is. **inline-frame**: the same, each call "
        "wrapped in `spur-runs serve`'s interceptor chain (hooks, metrics, access log) with the "
        "gateway's LocalContext.",
        "- **floor**: bench/lib/floor_server.py --mode sync, the empty RPC behind bench/run.py's "
        '"share of the sync floor" (GetRun cases only).',
        "- **serve**: `spur-runs serve` with default flags (interceptors, health, reflection, limits), for context.",
        "- Load: `h2load -t1 -cC -mM -D <s> -H 'content-type: application/grpc' -H 'te: trailers' -d <body>`; "
        "GetRun of one run, ListRuns page_size 10 (full view). Cases of one comparison back to back in "
        "every round, order reversed every other round; figures are medians over rounds, a ratio is the "
        "median of per-round ratios. CPU µs/req: utime+stime of the server process (/proc/PID/stat) over "
        "the window / requests (PostgreSQL's own backends not included; SQLite's work is).",
        "- Before loading: GetRun of 5 random runs and ListRuns page 1 answer the same bytes on every server "
        "(re-serialized deterministically: Struct map order follows a per-process hash seed, so even two "
        "sync processes differ on the wire; `duration` of still-running runs cleared, it is now − start).",
        "",
        "## Ratios (aio / sync; medians of per-round ratios)",
        "",
        "| database | RPC | load | req/s aio/sync | CPU/req aio/sync | req/s inline/sync | CPU/req inline/sync | req/s aio-pool4/sync | req/s serve/sync |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d in results["databases"]:
        for r in d["ratios"]:
            extra = [
                f"{r[k]:.2f}x" if k in r else "–"
                for k in ("inline_rps", "inline_cpu", "aio-pool4_rps", "serve_rps")
            ]
            lines.append(
                f"| {d['name']} | {r['rpc']} | {r['load']} | **{r['rps']:.2f}x** | **{r['cpu']:.2f}x** | "
                + " | ".join(extra)
                + " |"
            )
    lines += [
        "",
        "## GetRun's share of the sync floor (req/s over the floor's, as bench/run.py's target; ≥ 35% asked)",
        "",
        "| database | load | serve | sync | aio | inline | inline-frame |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for d in results["databases"]:
        for r in d["ratios"]:
            if "serve_floor_share" in r:
                lines.append(
                    f"| {d['name']} | {r['load']} | "
                    + " | ".join(
                        f"{r[f'{k}_floor_share']:.1%}"
                        for k in ("serve", "sync", "aio", "inline", "inline-frame")
                    )
                    + " |"
                )
    lines += [
        "",
        "## The database layer alone (no gRPC, in process, one call at a time)",
        "",
        "RunService's GetRun/ListRuns (sync engine) against aio_server.AioRunService's (async engine, "
        "`run_sync`), called directly 300 times per round from this process; CPU µs per call "
        "(process_time: aiosqlite's threads included; PostgreSQL's backends not). grpc.aio's own floor is "
        "*cheaper* than sync grpcio's (bench/results/RESULTS.md: empty unary ~110–124 vs ~130 µs/call), "
        "so a gap here is the async database path's (greenlet hops, one event-loop wake-up per awaited "
        "driver call; aiosqlite: a thread hand-off per call too), not grpc.aio's.",
        "",
        "| database | RPC | sync µs/call | aio µs/call | aio/sync |",
        "|---|---|---:|---:|---:|",
    ]
    for d in results["databases"]:
        for rpc, v in d["in_process"].items():
            lines.append(
                f"| {d['name']} | {rpc} | {v['sync_us']:,.0f} | {v['aio_us']:,.0f} | **{v['ratio']:.2f}x** |"
            )
    for d in results["databases"]:
        lines += [
            "",
            f"## {d['name']} ({RUNS:,} runs; GetRun of {d['get_run_id']})",
            "",
            "| RPC | load | server | req/s | spread | p50 ms | p99 ms | server CPU µs/req | requests |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for c in d["cases"]:
            lines.append(
                f"| {c['rpc']} | {c['load']} | {c['server']} | {c['rps']:,.0f} | "
                f"{c['rps_min']:,.0f}–{c['rps_max']:,.0f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | "
                f"{c['cpu_us']:,.0f} | {c['requests']:,} |"
            )
    lines.append("")
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3, help="per case per round")
    parser.add_argument("--out", type=Path, default=RESULTS / "aio_vs_sync.md")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    load_start = os.getloadavg()
    DATA.mkdir(parents=True, exist_ok=True)  # bench/.data: the temp SQLite file, server logs
    procs = Processes()
    results: dict[str, Any] = {"databases": []}
    try:
        with tempfile.TemporaryDirectory(prefix="aio_vs_sync") as tmp:
            for backend in args.backends.split(","):
                results["databases"].append(
                    bench_database(backend.strip(), procs, args.rounds, args.seconds, Path(tmp))
                )
    finally:
        procs.stop_all()
    uname = os.uname()
    results["meta"] = {
        "command": "python bench/aio_vs_sync.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, {uname.sysname} {uname.release}, Python {sys.version.split()[0]}",
        "load_start": " ".join(f"{x:.1f}" for x in load_start),
        "load_end": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "rounds": args.rounds,
        "seconds": args.seconds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(results, args.out)
    log(f"wrote {args.out}")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
