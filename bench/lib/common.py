"""Paths, the load's shape and RPC paths shared by every bench script."""

from __future__ import annotations

import time
from pathlib import Path

LIB = Path(__file__).resolve().parent
BENCH = LIB.parent
ROOT = BENCH.parent
DATA = BENCH / ".data"  # gitignored: databases, the peer venv, logs, baseline trees
RESULTS = BENCH / "results"
TOOLS_VENV = DATA / "venv"
LOGS = DATA / "logs"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# h2load -t1 -c4 -m4 for gRPC, wrk -c16 for HTTP: 16 calls in flight either way.
H2LOAD_CLIENTS, H2LOAD_STREAMS = 4, 4
WRK_CONNECTIONS = H2LOAD_CLIENTS * H2LOAD_STREAMS
GRPC_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
FLOOR_PATH = "/bench.Floor/Empty"
GET_RUN_PATH = "/spur.runs.v1.RunService/GetRun"
LIST_RUNS_PATH = "/spur.runs.v1.RunService/ListRuns"
HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
