"""HTTP GET of a run vs the same GetRun over gRPC, side by side in one run.

    python bench/http_vs_grpc.py [--concurrency 8] [--seconds 10] [--rounds 3]

Self-contained: makes a SQLite database in a temporary folder (migrate +
seed), starts `spur-runs serve --http-address ...` as a child process, then
loads each side in turn, `--rounds` times, with the same kind of client (C
load generators, one thread, the same number of connections, one request in
flight on each):

- gRPC: h2load POSTs a length-prefixed GetRunRequest with
  `content-type: application/grpc` and `te: trailers`;
- HTTP: wrk GETs /run/{run_id}.

It prints, for each side, req/s, latency and the server's CPU time per
request (user + system of the server process, from /proc, over the measured
window), and two ratios HTTP / gRPC: of the CPU per request (the cost; the
figure that stays put when other work shares the machine) and of the
throughput (gRPC req/s over HTTP req/s). The target is at most 1.5 for the
cost. h2load and wrk come from Debian (nghttp2-client, wrk); they are
installed with apt-get when missing.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from lib.procs import cpu_seconds, free_port
from lib.tools import ensure_tools

from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub

TARGET = 1.5


@dataclass
class Result:
    rps: float
    requests: int
    mean_ms: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us: float = 0.0  # server CPU per request


def measured(pid: int, load: Callable[[], Result]) -> Result:
    before = cpu_seconds(pid)
    result = load()
    result.cpu_us = (cpu_seconds(pid) - before) / result.requests * 1e6
    return result


def make_database(folder: Path, runs: int) -> str:
    from spur_runs.store.migrate import migrate

    url = f"sqlite:///{folder / 'bench.db'}"
    migrate(url)
    from spur_runs.seed import seed

    seed(url, runs=runs, progress=False)
    return url


def pick_run(grpc_port: int) -> pb.GetRunResponse:
    """A run with all its tasks: the typical GetRun."""
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = RunServiceStub(channel)
        runs = stub.ListRuns(pb.ListRunsRequest(page_size=100), timeout=10).runs
        best = max(runs, key=lambda r: (r.task_count, r.id))
        return stub.GetRun(pb.GetRunRequest(run_id=best.id), timeout=10)


def wait_ready(grpc_port: int, http_port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited with {process.returncode}")
        try:
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                RunServiceStub(channel).ListRuns(pb.ListRunsRequest(page_size=1), timeout=1)
            connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=1)
            connection.request("GET", "/run")
            if connection.getresponse().status == 200:
                return
        except (grpc.RpcError, OSError):
            pass
        time.sleep(0.2)
    sys.exit("the server did not become ready")


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_h2load(port: int, body: Path, args: argparse.Namespace, seconds: int) -> Result:
    command = [
        "h2load", "-t", "1", "-c", str(args.concurrency), "-m", "1", "-D", str(seconds),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        "-d", str(body), f"http://127.0.0.1:{port}/spur.runs.v1.RunService/GetRun",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    # gRPC answers HTTP 200 with grpc-status in the trailers: a call that
    # failed would still count as 2xx, so the server's answer was checked by
    # pick_run() beforehand; here, no transport failure and no 4xx/5xx.
    done = re.search(r"(\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    codes = re.search(r"status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not done or not codes or done.group(1) != done.group(2) or int(done.group(1)) == 0:
        sys.exit(f"h2load: not every request succeeded:\n{out}")
    if done.group(3, 4) != ("0", "0") or codes.group(1, 2) != ("0", "0"):
        sys.exit(f"h2load: failed requests:\n{out}")
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    line = re.search(r"time for request:\s+[\d.]+\w+\s+[\d.]+\w+\s+([\d.]+)(\w+)", out)
    assert rps and line, out
    return Result(float(rps.group(1)), int(done.group(1)), _ms(*line.groups()))


def run_wrk(port: int, path: str, args: argparse.Namespace, seconds: int) -> Result:
    url = f"http://127.0.0.1:{port}{path}"
    command = ["wrk", "-t", "1", "-c", str(args.concurrency), "-d", f"{seconds}s", "--latency", url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit(f"wrk: not every request succeeded:\n{out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    mean = re.search(r"Latency\s+([\d.]+)(\w+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(\w+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(\w+)", out)
    assert rps and count and mean and p50 and p99, out
    return Result(
        float(rps.group(1)), int(count.group(1)), _ms(*mean.groups()),
        _ms(*p50.groups()), _ms(*p99.groups()),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200, help="runs to seed")
    args = parser.parse_args()
    ensure_tools()

    with tempfile.TemporaryDirectory(prefix="spur-bench-") as tmp:
        folder = Path(tmp)
        url = make_database(folder, args.runs)
        grpc_port, http_port = free_port(), free_port()
        server = subprocess.Popen(
            [
                sys.executable, "-m", "spur_runs", "serve", "--database-url", url,
                "--grpc-address", f"127.0.0.1:{grpc_port}",
                "--http-address", f"127.0.0.1:{http_port}", "--log-level", "WARNING",
            ],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            wait_ready(grpc_port, http_port, server)
            run = pick_run(grpc_port).run
            request = pb.GetRunRequest(run_id=run.id).SerializeToString()
            body = folder / "get_run.grpc"
            body.write_bytes(struct.pack(">?I", False, len(request)) + request)
            print(
                f"GetRun {run.id} ({len(run.tasks)} tasks), concurrency {args.concurrency}, "
                f"{args.seconds}s per side per round, {args.rounds} rounds, "
                f"{os.cpu_count()} cores, server and load generator on one machine"
            )
            pid = server.pid
            grpc_load = lambda s: run_h2load(grpc_port, body, args, s)  # noqa: E731
            http_load = lambda s: run_wrk(http_port, f"/run/{run.id}", args, s)  # noqa: E731
            if args.warmup:
                grpc_load(args.warmup), http_load(args.warmup)
            costs, speeds = [], []
            for n in range(1, args.rounds + 1):
                g = measured(pid, lambda: grpc_load(args.seconds))
                h = measured(pid, lambda: http_load(args.seconds))
                costs.append(h.cpu_us / g.cpu_us)
                speeds.append(g.rps / h.rps)
                print(
                    f"round {n}: gRPC {g.rps:7.1f} req/s, mean {g.mean_ms:5.2f} ms, "
                    f"{g.cpu_us:5.0f} us CPU/req | HTTP {h.rps:7.1f} req/s, "
                    f"mean {h.mean_ms:5.2f} ms (p50 {h.p50_ms:.2f}, p99 {h.p99_ms:.2f}), "
                    f"{h.cpu_us:5.0f} us CPU/req | "
                    f"HTTP/gRPC: cost {costs[-1]:.2f}x, throughput {speeds[-1]:.2f}x"
                )
            cost, speed = statistics.median(costs), statistics.median(speeds)
            verdict = "within" if cost <= TARGET else "OVER"
            print(
                f"median HTTP/gRPC cost (server CPU per request): {cost:.2f}x "
                f"({verdict} the {TARGET}x target); throughput ratio {speed:.2f}x"
            )
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
