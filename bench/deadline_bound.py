"""A call's deadline on PostgreSQL across a network, two source trees side by side.

    git worktree add --detach /tmp/old 29ff01f           # the tree to compare with
    python bench/deadline_bound.py --old /tmp/old        # --new defaults to this tree

A deadline shorter than --db-timeout-seconds lowers PostgreSQL's
statement_timeout for the call's reads (store/libpq.py). Seeds a PostgreSQL
database (the demo's runs), puts lib/delay_proxy.py between it and each
server (--delay-ms each way), and measures, for each tree's `spur-runs
serve`, the latency of GetRun and of a ListRuns page (one call in flight)
without a deadline and with a 2 s one, and the server's CPU per call (over
all rounds: the kernel counts it in 10 ms ticks). Rounds
alternate which server goes first. Prints medians and new/old ratios;
nothing is written. Needs PostgreSQL at 127.0.0.1:5432 (user postgres).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psycopg
from lib.procs import cpu_seconds, free_port

from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1 import run_service_pb2_grpc

HERE = Path(__file__).resolve().parent.parent
DATABASE = "spur_runs_deadline_bench"
ADMIN = "host=127.0.0.1 user=postgres dbname=test"
DEADLINE_S = 2.0  # below --db-timeout-seconds (10 s by default)


def tree_env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{tree}/server:{tree}/generated"}


def spur_runs(tree: Path, *args: str) -> None:
    command = [sys.executable, "-m", "spur_runs", *args]
    subprocess.run(command, env=tree_env(tree), check=True, capture_output=True, timeout=900)


class Server:
    def __init__(self, name: str, tree: Path, url: str) -> None:
        self.name = name
        port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "spur_runs", "serve", "--database-url", url,
             "--grpc-address", f"127.0.0.1:{port}", "--log-level", "WARNING"],
            env=tree_env(tree), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            grpc.channel_ready_future(self.channel).result(timeout=60)
        except grpc.FutureTimeoutError:
            self.stop()
            raise RuntimeError(f"the {name} server did not start") from None
        self.stub = run_service_pb2_grpc.RunServiceStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def measure(server: Server, kind: str, deadline: float | None, calls: int) -> tuple[float, float]:
    """(median latency in ms, the server's CPU seconds) over `calls` calls."""
    timeout = deadline if deadline is not None else None
    if kind == "GetRun":

        def call() -> None:
            server.stub.GetRun(pb.GetRunRequest(run_id="R1"), timeout=timeout)
    else:

        def call() -> None:
            server.stub.ListRuns(pb.ListRunsRequest(page_size=10), timeout=timeout)

    for _ in range(3):  # prepared on the server's connection, cached versions
        call()
    took = []
    before = cpu_seconds(server.process.pid)
    for _ in range(calls):
        started = time.perf_counter()
        call()
        took.append(time.perf_counter() - started)
    return statistics.median(took) * 1000, cpu_seconds(server.process.pid) - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the tree to compare with")
    parser.add_argument("--new", type=Path, default=HERE, help="default: this tree")
    parser.add_argument("--delay-ms", type=int, default=10, help="each way, through the proxy")
    parser.add_argument("--calls", type=int, default=100, help="calls per round and case")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.delay_ms < 0 or args.calls < 5 or args.rounds < 1:
        print("deadline_bound.py: --delay-ms >= 0, --calls >= 5, --rounds >= 1", file=sys.stderr)
        return 2

    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        admin.execute(f"CREATE DATABASE {DATABASE}")
    direct = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DATABASE}"
    spur_runs(args.new, "migrate", "--database-url", direct)
    spur_runs(args.new, "seed", "--database-url", direct)
    proxy_port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, str(HERE / "bench" / "lib" / "delay_proxy.py"), "--listen-port",
         str(proxy_port), "--to", "127.0.0.1:5432", "--delay-ms", str(args.delay_ms)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    servers: list[Server] = []
    try:
        assert proxy.stdout is not None and proxy.stdout.readline().startswith("ready")
        far = f"postgresql+psycopg://postgres@127.0.0.1:{proxy_port}/{DATABASE}"
        for name, tree in (("old", args.old), ("new", args.new)):
            servers.append(Server(name, tree.resolve(), far))
        cases = [(k, d) for k in ("GetRun", "ListRuns") for d in (None, DEADLINE_S)]
        results: dict[tuple[str, float | None, str], list[tuple[float, float]]] = {}
        for round_ in range(args.rounds):
            order = servers if round_ % 2 == 0 else list(reversed(servers))
            for kind, deadline in cases:
                for server in order:
                    got = measure(server, kind, deadline, args.calls)
                    results.setdefault((kind, deadline, server.name), []).append(got)
        print(
            f"PostgreSQL {args.delay_ms} ms away each way (lib/delay_proxy.py); one call in "
            f"flight; latency: median of {args.rounds} rounds of {args.calls} calls; "
            "CPU: all of them"
        )
        print(f"old: {args.old}\nnew: {args.new}")
        print(f"{'call':<10}{'deadline':>9}{'old ms':>9}{'new ms':>9}{'new/old':>9}"
              f"{'old µs CPU':>12}{'new µs CPU':>12}{'new/old':>9}")  # fmt: skip
        for kind, deadline in cases:
            old = results[(kind, deadline, "old")]
            new = results[(kind, deadline, "new")]
            ms = [statistics.median(r[0] for r in side) for side in (old, new)]
            # Summed over the rounds: the kernel counts CPU in 10 ms ticks.
            calls = args.rounds * args.calls
            cpu = [sum(r[1] for r in side) / calls * 1e6 for side in (old, new)]
            label = "none" if deadline is None else f"{deadline:g} s"
            print(f"{kind:<10}{label:>9}{ms[0]:>9.1f}{ms[1]:>9.1f}{ms[1] / ms[0]:>9.2f}"
                  f"{cpu[0]:>12.0f}{cpu[1]:>12.0f}{cpu[1] / cpu[0]:>9.2f}")  # fmt: skip
        return 0
    finally:
        for server in servers:
            server.stop()
        proxy.terminate()
        proxy.wait(20)
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


if __name__ == "__main__":
    sys.exit(main())
