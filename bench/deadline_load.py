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
`grpc-timeout` header, as two cases of lib/load.py's rounds (back to back,
the order reversed every other round), on one `spur-runs serve`. Prints
req/s and the server's CPU per call of each, and the medians of the
per-round ratios; nothing is written. `--call health` posts
grpc.health.v1.Health/Check instead, which reads no database: what the
deadline costs grpc and our per-call frame (rpc/limits.DeadlineHook) alone.
Needs PostgreSQL at 127.0.0.1:5432 (user postgres) and h2load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from lib.common import DATA, GET_RUN_PATH, HEALTH_CHECK_PATH
from lib.data import create_database, drop_database, sample_runs, seed_database
from lib.load import Case, GrpcLoad, Settings, grpc_body, per_round_ratio, run_rounds
from lib.procs import Processes
from lib.servers import Servers

from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub

SEGMENTS = 8  # one run id per h2load segment, as bench/run.py posts them


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per case and round")
    parser.add_argument("--deadline", default="5S", help="the grpc-timeout header's value")
    parser.add_argument("--call", choices=("getrun", "health"), default="getrun")
    args = parser.parse_args()
    settings = Settings(args.seconds, args.rounds, SEGMENTS, warmup=1.0)

    db = create_database("postgresql", args.runs, "deadline_load")
    work = DATA / "work" / "deadline_load"
    work.mkdir(parents=True, exist_ok=True)
    procs = Processes()
    try:
        seed_database(db)
        server, port, _ = Servers(procs, Path(sys.executable), db).start_ours(
            name="spur-runs-deadline"
        )
        if args.call == "health":
            path = HEALTH_CHECK_PATH
            bodies = [grpc_body(work, "health", health_pb2.HealthCheckRequest())] * SEGMENTS
            answers = [7] * SEGMENTS  # SERVING, framed
        else:
            path = GET_RUN_PATH
            requests = [pb.GetRunRequest(run_id=i) for i in sample_runs(db, SEGMENTS)]
            bodies = [grpc_body(work, f"get-{n}", r) for n, r in enumerate(requests)]
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = RunServiceStub(channel)
                answers = [5 + stub.GetRun(r, timeout=10).ByteSize() for r in requests]
        cases = [
            Case("none", f"{args.call}, no deadline", "spur-runs gRPC",
                 GrpcLoad(port, path, bodies, answers), lambda: server.pid),
            Case("deadline", f"{args.call}, grpc-timeout {args.deadline}", "spur-runs gRPC",
                 GrpcLoad(port, path, bodies, answers, headers=(f"grpc-timeout: {args.deadline}",)),
                 lambda: server.pid),
        ]  # fmt: skip
        run_rounds(cases, settings, work, "deadline")
        for case in cases:
            found = case.summary()
            print(f"{case.label}: {found['rps']:,.0f} req/s, {found['cpu_us']:,.0f} µs CPU/call")
        plain, bounded = cases
        print(
            f"deadline {args.deadline} ÷ none: req/s {per_round_ratio(bounded, plain):.2f}x, "
            f"server CPU per call {per_round_ratio(bounded, plain, 'cpu_us'):.2f}x"
        )
        return 0
    finally:
        procs.stop_all()
        drop_database(db)


if __name__ == "__main__":
    sys.exit(main())
