"""Where a spur-runs server's time goes under one of the bench's loads (py-spy).

    python bench/profile.py --case get            # GetRun of random runs, gRPC
    python bench/profile.py --case list           # ListRuns page 1, page_size 10, gRPC
    python bench/profile.py --case http_get       # GET /run/{id}/ through the HTTP gateway
    python bench/profile.py --case http_list      # GET /run/?page=1&page_size=10 (PySpur's path)
    python bench/profile.py --case get --backend postgresql --runs 10000 --seconds 20

Seeds a database as bench/run.py does, starts `spur-runs serve`, loads it
with the same h2load/wrk command for `--seconds` while `py-spy record`
samples every thread of the server (--nonblocking: the server is not paused),
then writes to bench/results/profiles/:

- CASE-BACKEND.folded: the collapsed stacks (flamegraph.pl, speedscope.app);
- CASE-BACKEND.txt: the share of samples by layer (the file each leaf frame
  is in: our code, SQLAlchemy, the database driver, protobuf, grpc, aiohttp,
  ...) and the top functions by inclusive and by self time.

py-spy is installed into bench/.data/venv when missing. Not part of run.py's
figures: sampling costs the server some CPU.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import threading
from pathlib import Path

from lib.common import DATA, GET_RUN_PATH, LIST_RUNS_PATH, RESULTS
from lib.data import create_database, drop_database, sample_runs, seed_database
from lib.load import GrpcLoad, HttpLoad, Sample, grpc_body
from lib.procs import Processes
from lib.servers import Servers
from lib.tools import ensure_tools, ensure_tools_venv

from spur.runs.v1 import run_service_pb2 as pb

LAYERS = [
    ("spur_runs (our code)", re.compile(r"spur_runs/")),
    ("generated stubs", re.compile(r"spur/runs/v1/")),
    ("SQLAlchemy", re.compile(r"sqlalchemy/")),
    ("psycopg", re.compile(r"psycopg")),
    ("sqlite3", re.compile(r"sqlite3/")),
    ("protobuf", re.compile(r"google/protobuf/")),
    ("grpc", re.compile(r"grpc")),
    ("aiohttp", re.compile(r"aiohttp|multidict|yarl")),
    ("asyncio", re.compile(r"asyncio/")),
    ("threading/queue", re.compile(r"(threading|queue|concurrent/futures)")),
    ("json/orjson", re.compile(r"json")),
    ("logging", re.compile(r"logging/")),
    ("prometheus_client", re.compile(r"prometheus_client/")),
]
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:]*)(?::(?P<line>\d+))?\)$")


def layer_of(frame: str) -> str:
    match = _FRAME.match(frame)
    path = match.group("file") if match else frame
    for name, pattern in LAYERS:
        if pattern.search(path):
            return name
    return "other (stdlib, interpreter)"


def short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "server/", "generated/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match.group('func')} ({path})"


def summarize(folded: Path, top: int = 25) -> str:
    stacks: list[tuple[list[str], int]] = []
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            # py-spy prefixes the thread: "process ...;thread (0x...);frame;..."
            frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            stacks.append((frames, int(count)))
    total = sum(count for _, count in stacks) or 1
    by_layer: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        if not frames:
            continue
        by_layer[layer_of(frames[-1])] += count
        own[short(frames[-1])] += count
        for frame in set(frames):
            inclusive[short(frame)] += count
        # the innermost frame of our own code: what of ours led to the leaf
        for frame in reversed(frames):
            if "spur_runs/" in frame:
                ours[short(frame)] += count
                break
    lines = [f"{total} samples", "", "by layer of the leaf frame:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in by_layer.most_common()]
    lines += ["", f"top {top} by inclusive time:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", f"top {top} by self time:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines += ["", f"top {top} innermost spur_runs frames (time spent in or below them):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in ours.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("get", "list", "http_get", "http_list"), default="get")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL (what limits a GIL-bound server)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "profiles")
    args = parser.parse_args()
    ensure_tools()
    tools_python = ensure_tools_venv(profile=True)
    py_spy = tools_python.parent / "py-spy"
    args.out.mkdir(parents=True, exist_ok=True)
    work = DATA / "work" / "profile"
    work.mkdir(parents=True, exist_ok=True)
    procs = Processes()
    db = create_database(args.backend, args.runs, f"profile{args.case}")
    try:
        seed_database(db)
        servers = Servers(procs, tools_python, db)
        server, grpc_port, http_port = servers.start_ours()
        ids = sample_runs(db, 1000)
        ids_file = work / "run_ids.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        load: GrpcLoad | HttpLoad
        if args.case == "get":
            segments = max(1, args.seconds // 2)
            bodies = [
                grpc_body(work, f"get-{i}", pb.GetRunRequest(run_id=i)) for i in ids[:segments]
            ]
            load = GrpcLoad(grpc_port, GET_RUN_PATH, bodies, [0] * len(bodies))
        elif args.case == "list":
            body = grpc_body(work, "list", pb.ListRunsRequest(page_size=10))
            load = GrpcLoad(grpc_port, LIST_RUNS_PATH, [body], [0])
        elif args.case == "http_get":
            load = HttpLoad(http_port, "/run/{id}/", ids_file)
        else:
            load = HttpLoad(http_port, "/run/?page=1&page_size=10", None)
        load.run(2, work)  # warm-up
        name = f"{args.case}-{args.backend}" + ("-gil" if args.gil else "")
        folded = args.out / f"{name}.folded"
        spy = subprocess.Popen(
            [
                str(py_spy),
                "record",
                "--pid",
                str(server.pid),
                "--rate",
                str(args.rate),
                "--duration",
                str(args.seconds),
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(folded),
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        result: list[Sample] = []
        loader = threading.Thread(target=lambda: result.append(load.run(args.seconds, work)))
        loader.start()
        loader.join()
        _, err = spy.communicate(timeout=args.seconds + 60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode()[-2000:]}")
        sample = result[0]
        header = (
            f"{args.case} on {db.name} runs: {sample.rps:.0f} req/s while sampled "
            f"(p50 {sample.p50_ms:.1f} ms), py-spy --rate {args.rate} --nonblocking"
            f"{' --gil (GIL holder only)' if args.gil else ''}, "
            f"{args.seconds} s\n"
        )
        text = header + summarize(folded)
        (args.out / f"{name}.txt").write_text(text)
        print(text)
        return 0
    finally:
        procs.stop_all()
        drop_database(db)


if __name__ == "__main__":
    sys.exit(main())
