"""Our per-call frame, two source trees side by side: server CPU per call.

    git worktree add --detach /tmp/old main          # the tree to compare with
    python bench/frame.py --old /tmp/old             # --new defaults to this tree

Starts `spur-runs serve` from each tree (PYTHONPATH=<tree>/server:<tree>/generated)
on copies of one seeded SQLite database, and measures, for each server, the
server process's CPU (utime+stime from /proc/PID/stat) over N calls of
grpc.health.v1.Health/Check (the frame: interceptors, metrics, limits and a
handler that reads no database) and of GetRun (random runs). Rounds alternate
which server goes first; 4 client threads keep 4 calls in flight. Prints the
median per round and the ratio new/old; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lib.procs import cpu_seconds, free_port

from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1 import run_service_pb2_grpc

HERE = Path(__file__).resolve().parent.parent
CLIENT_THREADS = 4


def tree_env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{tree}/server:{tree}/generated"}


def spur_runs(tree: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "spur_runs", *args],
        env=tree_env(tree),
        check=True,
        capture_output=True,
        timeout=900,
    )


class Server:
    def __init__(self, name: str, tree: Path, url: str) -> None:
        self.name = name
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "spur_runs",
                "serve",
                "--database-url",
                url,
                "--grpc-address",
                f"127.0.0.1:{self.port}",
                "--log-level",
                "WARNING",
            ],  # fmt: skip
            env=tree_env(tree),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        try:
            grpc.channel_ready_future(self.channel).result(timeout=60)
        except grpc.FutureTimeoutError:
            self.stop()
            raise RuntimeError(f"the {name} server did not start") from None
        self.runs = run_service_pb2_grpc.RunServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def cpu_per_call_us(server: Server, call: Callable[[int], Any], calls: int) -> float:
    """Server CPU per call, with CLIENT_THREADS calls in flight."""

    def worker(offset: int) -> None:
        for i in range(offset, calls, CLIENT_THREADS):
            call(i)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(CLIENT_THREADS)]
    before = cpu_seconds(server.process.pid)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(0.05)  # let the server finish its last answers' bookkeeping
    return (cpu_seconds(server.process.pid) - before) / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the tree to compare with")
    parser.add_argument("--new", type=Path, default=HERE, help="default: this tree")
    parser.add_argument("--runs", type=int, default=2000, help="runs seeded")
    parser.add_argument("--calls", type=int, default=3000, help="calls per round and kind")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    if args.runs < 10 or args.calls < 100 or args.rounds < 1:
        print("frame.py: --runs >= 10, --calls >= 100, --rounds >= 1", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="frame-"))
    servers: list[Server] = []
    try:
        seeded = work / "seeded.db"
        spur_runs(args.new, "migrate", "--database-url", f"sqlite:///{seeded}")
        spur_runs(
            args.new, "seed", "--database-url", f"sqlite:///{seeded}", "--runs", str(args.runs)
        )
        for name, tree in (("old", args.old), ("new", args.new)):
            copy = work / f"{name}.db"
            shutil.copy(seeded, copy)
            servers.append(Server(name, tree.resolve(), f"sqlite:///{copy}"))
        page = servers[0].runs.ListRuns(pb.ListRunsRequest(page_size=100), timeout=30)
        ids = [run.id for run in page.runs]
        rng = random.Random(5)
        picks = [rng.choice(ids) for _ in range(args.calls)]
        check = health_pb2.HealthCheckRequest()

        def kinds(server: Server) -> dict[str, Callable[[int], Any]]:
            return {
                "Health/Check": lambda i: server.health.Check(check, timeout=10),
                "GetRun": lambda i: server.runs.GetRun(
                    pb.GetRunRequest(run_id=picks[i]), timeout=10
                ),
            }

        results: dict[tuple[str, str], list[float]] = {}
        for server in servers:  # warm: caches, pools, first-call imports
            for call in kinds(server).values():
                cpu_per_call_us(server, call, 300)
        for round_ in range(args.rounds):
            order = servers if round_ % 2 == 0 else list(reversed(servers))
            for kind in ("Health/Check", "GetRun"):
                for server in order:
                    us = cpu_per_call_us(server, kinds(server)[kind], args.calls)
                    results.setdefault((kind, server.name), []).append(us)
        print(
            f"server CPU per call, µs (median of {args.rounds} rounds of {args.calls} calls, "
            f"{CLIENT_THREADS} in flight, SQLite {args.runs} runs)"
        )
        print(f"old: {args.old}\nnew: {args.new}")
        print(f"{'call':<14}{'old':>10}{'new':>10}{'new/old':>10}   per round old | new")
        for kind in ("Health/Check", "GetRun"):
            old, new = results[(kind, "old")], results[(kind, "new")]
            ratio = statistics.median(new) / statistics.median(old)
            rounds = " ".join(f"{v:.0f}" for v in old) + " | " + " ".join(f"{v:.0f}" for v in new)
            print(
                f"{kind:<14}{statistics.median(old):>10.1f}{statistics.median(new):>10.1f}"
                f"{ratio:>10.3f}   {rounds}"
            )
        return 0
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
