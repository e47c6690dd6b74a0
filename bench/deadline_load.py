"""What a client's deadline costs a GetRun under load, on PostgreSQL.

    python bench/deadline_load.py                 # 10,000 runs, 5 rounds
    python bench/deadline_load.py --rounds 3 --deadline 2S
    python bench/deadline_load.py --call health   # the same for Health/Check

A deadline shorter than --db-timeout-seconds lowers PostgreSQL's
statement_timeout for the call's read, in the read's own round trip (a libpq
pipeline: store/libpq.py). bench/deadline_bound.py measures what that saves
across a network, one call at a time; this measures what it costs under the
bench's load (h2load -t1 -c4 -m4, 16 calls in flight, random runs) on
loopback, where the round trip is cheap and what is left is our work and
the interpreter lock's hand-overs: GetRun without a deadline and with a
`grpc-timeout` header, alternating in every round (the order reversed every
other round), on one `spur-runs serve`. Prints req/s and the server's CPU
per call of each, and the medians of the per-round ratios; nothing is
written. `--call health` posts grpc.health.v1.Health/Check instead, which
reads no database: what the deadline costs grpc and our per-call frame
(rpc/limits.DeadlineHook) alone. Needs PostgreSQL at 127.0.0.1:5432 (user postgres) and h2load.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lib.common import GRPC_HEADERS, log
from lib.data import create_database, drop_database, sample_runs, seed_database
from lib.procs import cpu_seconds, free_port

from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1 import run_service_pb2_grpc

PATHS = {"getrun": "/spur.runs.v1.RunService/GetRun", "health": "/grpc.health.v1.Health/Check"}
SEGMENTS = 8  # one run id per h2load segment, as bench/run.py posts them


def h2load(
    port: int, path: str, body: Path, answer: int, seconds: float, extra: list[str]
) -> tuple[int, float]:
    """(calls done, seconds) of one h2load run. `answer`: the DATA bytes of
    the body's answer. A gRPC error is HTTP 200 with no DATA, which h2load
    counts as succeeded: without this check a deadline that every call
    missed (--deadline 1n) measured its errors, 4x the calls of GetRun."""
    out = subprocess.run(
        ["h2load", "-t", "1", "-c", "4", "-m", "4", "-D", f"{int(seconds * 1000)}ms",
         *GRPC_HEADERS, *extra, "-d", str(body), f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=300,
    ).stdout  # fmt: skip
    finished = re.search(r"finished in ([\d.]+)(m?s)", out)
    done = re.search(r"(\d+) done, (\d+) succeeded", out)
    data = re.search(r"\((\d+)\) data", out)
    if not (finished and done and data) or done.group(1) != done.group(2):
        raise RuntimeError(f"h2load: unexpected output or failed calls:\n{out}")
    # Half: a run's answer may shrink a little between calls (a derived
    # field); an error's is empty.
    if int(data.group(1)) < int(done.group(1)) * answer // 2:
        raise RuntimeError(f"h2load: gRPC errors (answers without their DATA):\n{out}")
    took = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    return int(done.group(1)), took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per case and round")
    parser.add_argument("--deadline", default="5S", help="the grpc-timeout header's value")
    parser.add_argument("--call", choices=sorted(PATHS), default="getrun", help="the RPC posted")
    args = parser.parse_args()

    db = create_database("postgresql", args.runs, "deadline_load")
    server = None
    try:
        seed_database(db)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "spur_runs", "serve", "--database-url", db.url,
             "--grpc-address", f"127.0.0.1:{port}", "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        run_ids = sample_runs(db, SEGMENTS)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = run_service_pb2_grpc.RunServiceStub(channel)
            # Each body's answer, framed as h2load counts its DATA.
            if args.call == "health":
                check = health_pb2_grpc.HealthStub(channel).Check
                answer = 5 + check(health_pb2.HealthCheckRequest(), timeout=10).ByteSize()
                requests = [health_pb2.HealthCheckRequest()] * SEGMENTS
                answers = [answer] * SEGMENTS
            else:
                requests = [pb.GetRunRequest(run_id=run_id) for run_id in run_ids]
                answers = [5 + stub.GetRun(r, timeout=10).ByteSize() for r in requests]
        with tempfile.TemporaryDirectory() as work:
            bodies = []
            for n, request in enumerate(requests):
                message = request.SerializeToString()
                body = Path(work) / f"body-{n}"
                body.write_bytes(b"\0" + len(message).to_bytes(4, "big") + message)
                bodies.append(body)
            cases = {"none": [], args.deadline: []}

            def run_case(name: str) -> tuple[float, float]:
                extra = [] if name == "none" else ["-H", f"grpc-timeout: {name}"]
                assert server is not None
                before, done, took = cpu_seconds(server.pid), 0, 0.0
                for body, answer in zip(bodies, answers, strict=True):
                    calls, seconds = h2load(
                        port, PATHS[args.call], body, answer, args.seconds / SEGMENTS, extra
                    )
                    done, took = done + calls, took + seconds
                return done / took, (cpu_seconds(server.pid) - before) / done * 1e6

            run_case("none")  # warm-up
            for round_ in range(args.rounds):
                order = list(cases) if round_ % 2 == 0 else list(reversed(cases))
                for name in order:
                    cases[name].append(run_case(name))
                log(
                    f"round {round_ + 1}: "
                    + ", ".join(
                        f"{k} {v[-1][0]:,.0f} req/s {v[-1][1]:,.0f} µs" for k, v in cases.items()
                    )
                )
        plain, bounded = cases["none"], cases[args.deadline]
        for name, samples in cases.items():
            rps, cpu = (statistics.median(s[i] for s in samples) for i in (0, 1))
            print(f"{args.call}, deadline {name}: {rps:,.0f} req/s, {cpu:,.0f} µs CPU per call")
        rps = statistics.median(b[0] / p[0] for b, p in zip(bounded, plain, strict=True))
        cpu = statistics.median(b[1] / p[1] for b, p in zip(bounded, plain, strict=True))
        print(f"deadline {args.deadline} ÷ none: req/s {rps:.2f}x, server CPU per call {cpu:.2f}x")
        return 0
    finally:
        try:
            if server is not None:
                server.terminate()
                try:
                    server.wait(20)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
        finally:
            drop_database(db)  # WITH (FORCE): also under a server that lingers


if __name__ == "__main__":
    sys.exit(main())
