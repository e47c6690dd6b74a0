"""A storm of grpc.health.v1.Health/Watch streams (issue 16): the server's
memory before, during and after, and how fast it answers meanwhile.

    python bench/health_storm.py [--streams 8000] [--caps 1000,8000] [--rounds 2]

Writes bench/results/health_storm.md.

For each cap (`--max-health-watchers`): `spur-runs serve` on a fresh SQLite
file, as its own process. Each round, a grpc.aio client opens `--streams`
Watch streams, in waves of 50 (STORM_WAVE), over as many connections as
--max-streams-per-connection (100) requires, and waits for each one's first
message or its refusal (RESOURCE_EXHAUSTED beyond the cap); it times
Health/Check meanwhile; then it cancels every stream and waits for the
server's spur_runs_health_watchers gauge to come back to 0. The server's
VmRSS and threads (/proc) are read before the first round, with the streams
open, and 3 s after they closed. A second round shows whether memory is
reused (RSS stays level) rather than leaked (it grows by as much again).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lib.procs import free_port

CLI = [sys.executable, "-m", "spur_runs.cli"]
PER_CONNECTION = 100
WAVE = int(os.environ.get("STORM_WAVE", "50"))
EXTRA = os.environ.get("STORM_EXTRA", "").split()


def rss_and_threads(pid: int) -> tuple[float, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["Threads"])


def gauge(http_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("spur_runs_health_watchers "):
                return float(line.split()[1])
    raise RuntimeError("no spur_runs_health_watchers in /metrics")


async def storm(port: int, streams: int) -> dict[str, float]:
    channels = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(-(-streams // PER_CONNECTION))
    ]

    async def first(call: grpc.aio.UnaryStreamCall) -> str:  # type: ignore[type-arg]
        try:
            await call.read()
            return "open"
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}: {error.details()}"

    probes: list[float] = []
    refusals: list[str] = []
    done = threading.Event()

    def probe() -> None:
        # A thread and a connection of its own: the storm's event loop is
        # busy, and its delays are not the server's.
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not done.is_set():
                started = time.perf_counter()
                try:
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
                    probes.append(time.perf_counter() - started)
                except grpc.RpcError as error:
                    refusals.append(str(error.code()))
                time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    started = time.perf_counter()
    calls: list[grpc.aio.UnaryStreamCall] = []  # type: ignore[type-arg]
    outcomes: list[str] = []
    # In waves: a burst beyond --max-concurrent-rpcs (64) new calls is
    # refused (RESOURCE_EXHAUSTED), and grpc's core sheds thousands of new
    # calls that wait for the server to take them (CANCELLED).
    for wave in range(0, streams, WAVE):
        new = [
            health_pb2_grpc.HealthStub(channels[i % len(channels)]).Watch(
                health_pb2.HealthCheckRequest(), timeout=600
            )
            for i in range(wave, min(streams, wave + WAVE))
        ]
        calls += new
        outcomes += await asyncio.gather(*(first(c) for c in new))
    opened_in = time.perf_counter() - started
    done.set()
    prober.join()
    print(Counter(outcomes).most_common(5), flush=True)
    result = {
        "open": outcomes.count("open"),
        "refused": sum(o.startswith("RESOURCE_EXHAUSTED") for o in outcomes),
        "other": sum(o != "open" and not o.startswith("RESOURCE_EXHAUSTED") for o in outcomes),
        "opened_in_s": opened_in,
        "check_p50_ms": sorted(probes)[len(probes) // 2] * 1000 if probes else float("nan"),
        "check_max_ms": max(probes) * 1000 if probes else float("nan"),
        "check_refused": len(refusals),
    }
    result["_calls"] = calls  # type: ignore[assignment]
    result["_channels"] = channels  # type: ignore[assignment]
    return result


async def close(result: dict[str, object]) -> None:
    for call in result.pop("_calls"):  # type: ignore[attr-defined]
        call.cancel()
    for channel in result.pop("_channels"):  # type: ignore[attr-defined]
        await channel.close()


def one_cap(cap: int, streams: int, rounds: int) -> list[str]:
    folder = Path(tempfile.mkdtemp(prefix="health-storm-"))
    url = f"sqlite:///{folder / 'runs.db'}"
    subprocess.run([*CLI, "migrate", "--database-url", url], check=True, capture_output=True)
    port, http_port = free_port(), free_port()
    log = (folder / "serve.log").open("w")
    server = subprocess.Popen(
        [*CLI, "serve", "--database-url", url, "--grpc-address", f"127.0.0.1:{port}",
         "--http-address", f"127.0.0.1:{http_port}", "--max-health-watchers", str(cap),
         # (the storm comes from one address: it may hold every watch)
         "--max-health-watchers-per-address", str(cap), "--log-level", "WARNING", *EXTRA],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
    )  # fmt: skip
    lines = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(50):  # warm up: the first calls allocate what all calls use
                stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        time.sleep(1)
        before, threads_before = rss_and_threads(server.pid)
        lines.append(f"| {cap:,} | before | | | {before:.0f} | {threads_before} | |")
        for n in range(1, rounds + 1):
            loop = asyncio.new_event_loop()
            result = loop.run_until_complete(storm(port, streams))
            during, threads = rss_and_threads(server.pid)
            loop.run_until_complete(close(result))
            loop.close()
            deadline = time.monotonic() + 60
            while gauge(http_port) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(3)
            after, threads_after = rss_and_threads(server.pid)
            lines.append(
                f"| {cap:,} | round {n}: {result['open']:,.0f} open, "
                f"{result['refused']:,.0f} RESOURCE_EXHAUSTED, {result['other']:,.0f} other "
                f"(in {result['opened_in_s']:.1f} s) | {during:.0f} MB, {threads} threads "
                f"| Check p50 {result['check_p50_ms']:.1f} ms, "
                f"max {result['check_max_ms']:.0f} ms, {result['check_refused']:.0f} refused "
                f"| {after:.0f} | {threads_after} | {gauge(http_port):.0f} |"
            )
            print(lines[-1], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8000)
    parser.add_argument("--caps", default="1000,8000")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = [
        "| --max-health-watchers | storm | RSS, threads while open | answers meanwhile "
        "| RSS after close (MB) | threads after | watches left |",
        "|---|---|---|---|---|---|---|",
    ]
    for cap in (int(c) for c in args.caps.split(",")):
        rows += one_cap(cap, args.streams, args.rounds)
    table = "\n".join(rows)
    print(table)
    out = Path(__file__).resolve().parent / "results" / "health_storm.md"
    out.write_text(
        "# A storm of health Watch streams\n\n"
        f"`python bench/health_storm.py --streams {args.streams} --caps {args.caps} "
        f"--rounds {args.rounds}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        "SQLite, on a shared 2-core machine. RSS of the `spur-runs serve` process; "
        '"after close" is read 3 s after the last stream ended (the server trims its heap '
        "after a few hundred closed streams, memory.py).\n\n" + table + "\n"
    )


if __name__ == "__main__":
    main()
