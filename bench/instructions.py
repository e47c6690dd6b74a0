"""Instructions per call, counted by callgrind: the floor, our frame, GetRun,
a ListRuns page, ours and the baseline's.

    python bench/instructions.py                  # SQLite and PostgreSQL, 10,000 runs
    python bench/instructions.py --backends sqlite --calls 200

Time per call on a shared machine moves with the load and with the kind of
CPU: five full runs of one read path gave GetRun 26-39% of the floor
(docs/performance.md). The instructions a call executes do not. Each server
here runs under `valgrind --tool=callgrind --instr-atstart=no`: it starts and
takes warm-up calls uncounted, then callgrind_control switches counting on
for N calls of one kind (made one at a time, by a client in this process)
and off again, and dumps the count. Two runs of the same code agreed to
within 0.1% on GetRun's and ListRuns' counts (0.6% on the baseline's GetRun)
and within 2-3% on the floor's and Health/Check's, which are smaller and
take in what grpc's own threads do while counting is on, whatever else the
machine was doing.

Valgrind runs one thread at a time, so the count is the work of a call in
user space: the server's Python, grpc's C core, protobuf, SQLite (on
PostgreSQL only the client side; the database server is another process).
It leaves out what the kernel does and what threads sharing the interpreter
lock cost each other, which bench/breakdown.py measures under load. The
ratio of two counts is the target's ratio on a machine where those costs
are proportional to the work; where switching threads is dear (the tenth
step's AMD machine: 46% of the server's CPU in the kernel), the floor pays
relatively more of it and the measured share comes out higher.

Cases (each server its own process; ours once for all of its cases):
- floor:   /bench.Floor/Empty on bench/lib/floor_server.py (grpcio alone);
- health:  grpc.health.v1.Health/Check on `spur-runs serve` (grpcio and our
           per-call frame: interceptors, metrics, limits);
- GetRun:  random runs (FULL), on ours and on the baseline (`--baseline`);
- ListRuns: a first page of 10 (FULL), on ours and on the baseline.
Writes bench/results/instructions.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lib.common import DATA, FLOOR_PATH, LIB, RESULTS, log
from lib.data import create_database, drop_database, sample_runs, seed_database
from lib.procs import Processes, free_port, wait_until
from lib.servers import baseline_env, baseline_tree

from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub

WARMUP_CALLS = 100
# Starting Python and importing grpc under valgrind takes ~20-60 s.
START_TIMEOUT_S = 300


class Counted:
    """A server process under callgrind that counts only inside `count`."""

    def __init__(
        self,
        procs: Processes,
        name: str,
        command: Callable[[int], list[str]],
        env: dict[str, str] | None = None,
    ) -> None:
        """`command(port)`: the server's command line, listening on `port`."""
        self.work = DATA / "work" / "instructions" / name
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.port = free_port()
        valgrind = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={self.work / 'callgrind.out'}",
        ]
        self.process = procs.start(name, [*valgrind, *command(self.port)], env)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def ready(self, probe: Callable[[grpc.Channel], Any], what: str) -> None:
        wait_until(lambda: probe(self.channel) is not None, self.process, what, START_TIMEOUT_S)

    def _control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(self.process.pid)], check=True, capture_output=True
        )

    def count(self, call: Callable[[int], Any], calls: int) -> float:
        """Instructions per call of `call(i)`, i = 0 .. calls-1, after warm-up."""
        for i in range(WARMUP_CALLS):
            call(i)
        before = set(self.work.glob("callgrind.out.*"))
        self._control("--zero")
        self._control("--instr=on")
        for i in range(calls):
            call(WARMUP_CALLS + i)
        self._control("--instr=off")
        self._control("--dump")
        (dump,) = set(self.work.glob("callgrind.out.*")) - before
        for line in dump.read_text().splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1]) / calls
        raise RuntimeError(f"no totals in {dump}")

    def close(self, procs: Processes) -> None:
        self.channel.close()
        self.process.kill()  # its counts are dumped already; valgrind's own exit is slow
        self.process.wait()
        procs.stop(self.process)


def serve_command(url: str) -> Callable[[int], list[str]]:
    return lambda port: [
        sys.executable, "-m", "spur_runs", "serve", "--database-url", url,
        "--grpc-address", f"127.0.0.1:{port}", "--log-level", "WARNING",
    ]  # fmt: skip


def ready_to_serve(channel: grpc.Channel) -> Any:
    return RunServiceStub(channel).ListRuns(pb.ListRunsRequest(page_size=1), timeout=5)


def count_reads(
    server: Counted, ids: list[str], calls: int, *, with_health: bool
) -> dict[str, float]:
    """Instructions per GetRun (random runs) and per first ListRuns page of
    10 (FULL) on `server`; per Health/Check too `with_health`."""
    stub = RunServiceStub(server.channel)
    page = pb.ListRunsRequest(page_size=10, view=run_pb2.RUN_VIEW_FULL)
    found: dict[str, float] = {}
    if with_health:
        health = health_pb2_grpc.HealthStub(server.channel)
        check = health_pb2.HealthCheckRequest()
        found["health"] = server.count(lambda i: health.Check(check, timeout=60), calls)
    found["get"] = server.count(
        lambda i: stub.GetRun(pb.GetRunRequest(run_id=ids[i]), timeout=60), calls
    )
    found["list"] = server.count(lambda i: stub.ListRuns(page, timeout=60), calls)
    return found


def measure(
    backend: str, runs: int, calls: int, baseline: Path, procs: Processes
) -> dict[str, Any]:
    db = create_database(backend, runs, "instructions")
    try:
        seed_database(db)
        ids = sample_runs(db, WARMUP_CALLS + calls)  # in random order
        counts: dict[str, float] = {}

        floor = Counted(
            procs,
            "floor",
            lambda port: [sys.executable, str(LIB / "floor_server.py"), "--port", str(port)],
        )
        floor.ready(lambda ch: ch.unary_unary(FLOOR_PATH)(b"", timeout=5), "floor")
        empty = floor.channel.unary_unary(FLOOR_PATH)
        counts["floor"] = floor.count(lambda i: empty(b"", timeout=60), calls)
        floor.close(procs)
        log(f"{db.name}: floor {counts['floor'] / 1000:,.1f}k instructions per call")

        for side, env in (("ours", None), ("baseline", baseline_env(baseline))):
            server = Counted(procs, f"{side}-{backend}", serve_command(db.url), env)
            server.ready(ready_to_serve, f"{side} server")
            found = count_reads(server, ids, calls, with_health=side == "ours")
            server.close(procs)
            counts.update({f"{key}_{side}": value for key, value in found.items()})
            log(
                f"{db.name}: {side}: "
                + ", ".join(f"{k} {v / 1000:,.1f}k" for k, v in found.items())
            )
        return {"name": db.name, "calls": calls, "counts": counts}
    finally:
        drop_database(db)


def write(results: list[dict[str, Any]], ref: str, path: Path, command: str) -> None:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    k = lambda value: f"{value / 1000:,.0f}k"  # noqa: E731
    lines = [
        "# Instructions per call (callgrind)",
        "",
        f"`{command}`, {when}. Produced by [bench/instructions.py](../instructions.py) (its "
        "docstring says how, and what the count leaves out). Server instructions per call, "
        f"user space, one call at a time; the baseline is {ref}.",
        "",
        "| database | floor | Health/Check (+ our frame) | GetRun | floor ÷ GetRun "
        "| GetRun, baseline | GetRun ÷ baseline | ListRuns page of 10 | ListRuns, baseline "
        "| ListRuns ÷ baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        c = r["counts"]
        frame = c["health_ours"] - c["floor"]
        lines.append(
            f"| {r['name']} | {k(c['floor'])} | {k(c['health_ours'])} (+{k(frame)}) "
            f"| {k(c['get_ours'])} | {c['floor'] / c['get_ours']:.1%} | {k(c['get_baseline'])} "
            f"| {c['get_ours'] / c['get_baseline']:.2f}x | {k(c['list_ours'])} "
            f"| {k(c['list_baseline'])} | {c['list_ours'] / c['list_baseline']:.2f}x |"
        )
    path.write_text("\n".join(lines) + "\n")
    log(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=300, help="counted calls per case")
    parser.add_argument("--baseline", default="528c7ea", help="git ref served as the baseline")
    parser.add_argument("--out", type=Path, default=RESULTS / "instructions.md")
    args = parser.parse_args()
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("instructions.py: valgrind not found (apt-get install valgrind)", file=sys.stderr)
        return 2
    tree = baseline_tree(args.baseline)
    procs = Processes()
    try:
        results = [
            measure(backend, args.runs, args.calls, tree, procs)
            for backend in args.backends.split(",")
        ]
    finally:
        procs.stop_all()
    command = "python bench/instructions.py " + " ".join(sys.argv[1:])
    write(results, args.baseline, args.out, command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
