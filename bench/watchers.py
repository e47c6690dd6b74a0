"""1,000 concurrent WatchRun streams of different runs: what they cost the
database per poll interval, and the server in threads and memory.

    python bench/watchers.py [--backends sqlite,postgresql] [--watchers 1000]
                             [--interval 0.5] [--seconds 10] [--rounds 5]

For each database: a fresh one with `--watchers` RUNNING runs of 6 tasks
each; `spur-runs serve` started as its own process; a grpc.aio client opens
one WatchRun per run (over 10 channels) and waits for every first message.

- quiet: nothing changes for `--seconds`; the server's poller statements per
  poll come from its /metrics (spur_runs_watch_statements_total over
  spur_runs_watch_polls_total, a before_cursor_execute count of every
  statement it runs; BEGIN and ROLLBACK, which psycopg sends itself, are not
  in it). PostgreSQL's own per-database
  counters (pg_stat_database) are flushed by backends up to 10 s late, too
  coarse for a 10 s window, and pg_stat_statements needs a server restart.
- churn: `--rounds` times, a writer (this process, plain SQL, as PySpur's
  engine) flips a task of EVERY run in one transaction; each watcher must get
  the change; the same counts, and the delay from commit to the message
  (p50/p99/max).
- the server's threads and RSS (/proc) with no watcher open and with all open.

What one query per watcher per interval would cost is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from lib.common import DATA
from lib.data import Database, create_database, drop_database
from lib.procs import free_port

CLI = [sys.executable, "-m", "spur_runs.cli"]
CHANNELS = 10


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def threads_and_rss(pid: int) -> tuple[int, float]:
    status = proc_status(pid)
    return int(status["Threads"]), int(status["VmRSS"].split()[0]) / 1024


def scrape(http_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("spur_runs_watch"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def prepare(backend: str, runs: int) -> Database:
    """A fresh database with `runs` RUNNING runs of 6 tasks; (url, pg name)."""
    from sqlalchemy import create_engine, insert

    from spur_runs.store.migrate import migrate
    from spur_runs.store.models import Run, RunStatus, Task, TaskStatus, Workflow, WorkflowVersion

    database = create_database(backend, runs, "watchers")
    url = database.url
    migrate(url)
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    now = datetime(2026, 11, 29, 9, 0, 0)
    spec = {"nodes": [{"id": f"n{i}", "node_type": "InputNode"} for i in range(6)], "links": []}
    with engine.begin() as conn:
        conn.execute(insert(Workflow), [{"name": "bench", "definition": spec}])
        conn.execute(
            insert(WorkflowVersion),
            [{"version": 1, "workflow_id": "S1", "name": "bench", "definition": spec,
              "definition_hash": "h1"}],
        )  # fmt: skip
        conn.execute(
            insert(Run),
            [{"workflow_id": "S1", "workflow_version_id": "SV1", "status": RunStatus.RUNNING,
              "run_type": "interactive", "start_time": now} for _ in range(runs)],
        )  # fmt: skip
        conn.execute(
            insert(Task),
            [{"run_id": f"R{r}", "node_id": f"n{n}", "status": TaskStatus.RUNNING,
              "inputs": {"n": n}, "start_time": now}
             for r in range(1, runs + 1) for n in range(6)],
        )  # fmt: skip
    engine.dispose()
    return database


def start_server(url: str, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int, int]:
    port, http_port = free_port(), free_port()
    log = (DATA / "watchers-server.log").open("wb")
    process = subprocess.Popen(
        [*CLI, "serve", "--database-url", url, "--grpc-address", f"127.0.0.1:{port}",
         "--http-address", f"127.0.0.1:{http_port}", "--watch-interval", str(args.interval),
         "--max-watchers", str(args.watchers),
         "--max-watchers-per-address", str(args.watchers), "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"spur-runs serve exited {process.returncode}; see {log.name}")
        try:
            scrape(http_port)
            return process, port, http_port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("spur-runs serve did not start within 60 s")


class Watchers:
    """One WatchRun stream per run; when each message arrived."""

    def __init__(self, port: int, run_ids: list[str]) -> None:
        import grpc.aio

        from spur.runs.v1.run_service_pb2_grpc import RunServiceStub

        self.channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(CHANNELS)]
        self.stubs = [RunServiceStub(c) for c in self.channels]
        self.run_ids = run_ids
        self.received: dict[str, list[tuple[float, Any]]] = {r: [] for r in run_ids}
        self.tasks: list[asyncio.Task[None]] = []
        self.errors: list[str] = []

    async def start(self) -> None:
        from spur.runs.v1 import run_service_pb2 as pb

        # Until its first message, an opening watch holds one of the server's
        # RPC threads and counts against --max-concurrent-rpcs (64): open
        # them 32 at a time. Once open, they count against neither.
        opening = asyncio.Semaphore(32)

        async def watch(i: int, run_id: str) -> None:
            await opening.acquire()
            call = self.stubs[i % CHANNELS].WatchRun(pb.WatchRunRequest(run_id=run_id))
            try:
                async for message in call:
                    if not self.received[run_id]:
                        opening.release()
                    self.received[run_id].append((time.monotonic(), message.run))
            except asyncio.CancelledError:
                call.cancel()
                raise
            except Exception as error:  # noqa: BLE001 - reported
                self.errors.append(f"{run_id}: {error}")

        self.tasks = [asyncio.create_task(watch(i, r)) for i, r in enumerate(self.run_ids)]

    async def wait(self, count: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if all(len(v) >= count for v in self.received.values()):
                return True
            if self.errors:
                raise SystemExit(f"watch failed: {self.errors[:3]}")
            await asyncio.sleep(0.02)
        return False

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()


def per_poll(before: dict[str, float], after: dict[str, float]) -> tuple[float, float]:
    polls = after["spur_runs_watch_polls_total"] - before["spur_runs_watch_polls_total"]
    statements = (
        after["spur_runs_watch_statements_total"] - before["spur_runs_watch_statements_total"]
    )
    return polls, statements


async def bench(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    database = prepare(backend, args.watchers)
    url = database.url
    process, port, http_port = start_server(url, args)
    writer = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    result: dict[str, Any] = {"backend": backend}
    try:
        result["idle_threads"], result["idle_rss_mb"] = threads_and_rss(process.pid)
        run_ids = [f"R{i}" for i in range(1, args.watchers + 1)]
        watchers = Watchers(port, run_ids)
        started = time.monotonic()
        await watchers.start()
        if not await watchers.wait(1, 120):
            raise SystemExit("not every watcher got its first message within 120 s")
        result["open_s"] = time.monotonic() - started
        await asyncio.sleep(2 * args.interval)
        metrics = scrape(http_port)
        result["server_watchers"] = metrics["spur_runs_watchers"]

        # Quiet: nothing changes.
        before = scrape(http_port)
        await asyncio.sleep(args.seconds)
        after = scrape(http_port)
        polls, statements = per_poll(before, after)
        result["quiet"] = {
            "polls": polls, "statements": statements, "per_poll": statements / polls,
        }  # fmt: skip
        result["open_threads"], result["open_rss_mb"] = threads_and_rss(process.pid)

        # Churn: every run changes, `--rounds` times.
        before = scrape(http_port)
        delays: list[float] = []
        missed = 0
        for round_ in range(args.rounds):
            count = 2 + round_
            status = "COMPLETED" if round_ % 2 == 0 else "RUNNING"
            with writer.begin() as conn:
                conn.execute(
                    text("UPDATE tasks SET status = :s, end_time = :t WHERE node_id = 'n0'"),
                    {"s": status, "t": datetime(2026, 11, 29, 10, 0, round_)},
                )
            committed = time.monotonic()
            if not await watchers.wait(count, 30 * args.interval + 10):
                missed += sum(len(v) < count for v in watchers.received.values())
            delays += [
                v[count - 1][0] - committed for v in watchers.received.values() if len(v) >= count
            ]
            await asyncio.sleep(args.interval)
        after = scrape(http_port)
        polls, statements = per_poll(before, after)
        delays.sort()
        result["churn"] = {
            "rounds": args.rounds, "polls": polls, "statements": statements,
            "per_poll": statements / polls, "missed": missed,
            "changed_runs": after["spur_runs_watch_changes_total"]
            - before["spur_runs_watch_changes_total"],
            "delay_p50_ms": 1000 * statistics.median(delays),
            "delay_p99_ms": 1000 * delays[int(0.99 * (len(delays) - 1))],
            "delay_max_ms": 1000 * delays[-1],
        }  # fmt: skip
        result["churn_threads"], result["churn_rss_mb"] = threads_and_rss(process.pid)
        await watchers.close()
        await asyncio.sleep(3 * args.interval)
        result["after_close_watchers"] = scrape(http_port)["spur_runs_watchers"]
    finally:
        writer.dispose()
        process.terminate()
        process.wait(timeout=30)
        drop_database(database)
    return result


def report(r: dict[str, Any], args: argparse.Namespace) -> str:
    q, c = r["quiet"], r["churn"]
    per_watcher = args.watchers  # one fingerprint query per watcher per interval
    # The polls that found the round's 1,000 changes, the quiet ones aside.
    per_changed = (c["statements"] - q["per_poll"] * (c["polls"] - c["rounds"])) / c["rounds"]
    kb_per_watcher = (r["open_rss_mb"] - r["idle_rss_mb"]) * 1024 / args.watchers
    lines = [
        f"## {r['backend']}: {args.watchers} watchers, --watch-interval {args.interval}s",
        f"- {int(r['server_watchers'])} streams open (first message each) in {r['open_s']:.1f} s",
        f"- quiet {args.seconds:.0f} s: {q['statements']:.0f} statements in {q['polls']:.0f}"
        f" polls = {q['per_poll']:.2f} per interval (one query per watcher: {per_watcher};"
        f" ratio 1:{per_watcher / q['per_poll']:.0f})",
        f"- churn, every run changed {c['rounds']} times: {c['statements']:.0f} statements in"
        f" {c['polls']:.0f} polls, {per_changed:.1f} per poll that found {args.watchers} changes;"
        f" {c['changed_runs']:.0f} run changes pushed, missed {c['missed']}",
        f"- commit -> message delay: p50 {c['delay_p50_ms']:.0f} ms,"
        f" p99 {c['delay_p99_ms']:.0f} ms, max {c['delay_max_ms']:.0f} ms",
        f"- server threads: {r['idle_threads']} idle, {r['open_threads']} with the streams open,"
        f" {r['churn_threads']} after churn",
        f"- server RSS: {r['idle_rss_mb']:.0f} MB idle, {r['open_rss_mb']:.0f} MB open"
        f" ({kb_per_watcher:.0f} KB/watcher), {r['churn_rss_mb']:.0f} MB after churn",
        f"- watchers registered after the clients closed: {r['after_close_watchers']:.0f}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    for backend in args.backends.split(","):
        result = asyncio.run(bench(backend, args))
        print(report(result, args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
