# ruff: noqa: E501  (report strings and command lines read better unbroken)
"""The benchmark suite of issue 5: spur-runs side by side with PySpur and the gRPC floor.

    /work/venv/bin/python bench/run.py --quick     # 10,000 runs only, a few minutes
    /work/venv/bin/python bench/run.py             # 10,000 and 1,000,000 runs, ~20 minutes

(any Python with the project installed: `pip install -e '.[dev]'`). Writes
bench/results/RESULTS.md, results.json and throughput.png. Loopback only.

What it does, in one process so that every ratio is measured in one run:

1. Installs what is missing: h2load and wrk with apt-get (nghttp2-client,
   wrk), and bench/.data/venv, a venv of its own, with PySpur 0.1.18
   (--no-deps) plus what its Runs router needs, at the versions PySpur pins,
   and matplotlib for the chart.
2. Counts GetRun's SQL statements for a run of 10 and of 1,000 tasks, in
   process (a SQLAlchemy before_cursor_execute listener).
3. For each database (SQLite file under bench/.data, PostgreSQL database
   spur_bench_* at 127.0.0.1:5432, dropped at the end), at 10,000 and
   1,000,000 runs: `spur-runs migrate` + `spur-runs seed --runs N` (timed),
   then `spur-runs serve` (gRPC + HTTP), PySpur's router under uvicorn on the
   same database, and the two floor servers (bench/floor_server.py); every
   case is measured `--rounds` times, the cases of one comparison next to
   each other in every round (the order reversed every other round), and a
   ratio is the median of its per-round ratios.
4. `--workers 2` against 1 under the same load (SQLite, smallest size).
5. Server RSS at the end of each database's cases; the chart and the tables.

Load: h2load for gRPC (-t1 -c4 -m4: 16 calls in flight), wrk for HTTP (-t1
-c16: 16 requests in flight; HTTP/1.1 has one per connection). h2load posts
one body for every request, so "GetRun of a random run" is a sequence of
equal segments, each on another random run (the floor is loaded with the
same segments); wrk draws a random run per request (wrk_paths.lua), the same
sequence on both sides. Server CPU per request (user + system of the server's
processes over the window, from /proc) is reported beside req/s: on this
shared machine it is the figure that moves least when other work runs.
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import json
import os
import platform
import random
import re
import shlex
import signal
import statistics
import struct
import subprocess
import sys
import time
import venv
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import grpc  # noqa: E402
from http_vs_grpc import cpu_seconds, ensure_tools, free_port  # noqa: E402  (the colleague's helpers)

from spur.runs.v1 import run_service_pb2 as pb  # noqa: E402
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub  # noqa: E402
from spur_runs.config import Config  # noqa: E402

DATA = BENCH / ".data"
RESULTS = BENCH / "results"
TOOLS_VENV = DATA / "venv"
LOGS = DATA / "logs"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# PySpur 0.1.18 without its ~50 dependencies, plus what its Runs router and
# models import, at the versions PySpur pins (pydantic and SQLAlchemy set most
# of its cost). uvicorn[standard] (uvloop, httptools) is what a full
# `pip install pyspur` brings along (through chromadb): the peer at its best.
PEER_PACKAGES = [
    "fastapi==0.115.6",
    "pydantic==2.10.5",
    "sqlalchemy==2.0.36",
    "loguru==0.7.3",
    "jinja2==3.1.6",
    "uvicorn[standard]",
    "psycopg2-binary==2.9.10",  # PySpur's PostgreSQL driver
]
TOOL_PACKAGES = ["matplotlib"]

H2LOAD_CLIENTS, H2LOAD_STREAMS = 4, 4
WRK_CONNECTIONS = H2LOAD_CLIENTS * H2LOAD_STREAMS  # the same 16 in flight
GRPC_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
FLOOR_PATH = "/bench.Floor/Empty"
GET_RUN_PATH = "/spur.runs.v1.RunService/GetRun"
LIST_RUNS_PATH = "/spur.runs.v1.RunService/ListRuns"

# Defaults of `spur-runs serve`, which the bench's servers (and the floor) use.
_DEFAULTS = Config()

TARGETS = {
    "floor": 0.5,  # GetRun >= 50% of the empty-echo floor
    "http_get": 10.0,  # HTTP GET /run/{id}/ >= 10x PySpur's
    "http_vs_grpc": 1.5,  # HTTP GET costs <= 1.5x GetRun over gRPC (the HTTP issue)
    "list": 20.0,  # ListRuns >= 20x PySpur's list page
    "deep": 1.3,  # keyset page at depth ~1M within 1.3x of page 1
    "rss_mb": 150.0,
    "seed_s": 60.0,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------
# Installation


def _pip(venv_dir: Path, *args: str) -> None:
    # Quiet: pip warns about each of PySpur's ~50 requirements left out on purpose.
    done = subprocess.run(
        [
            str(venv_dir / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            *args,
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def ensure_tools_venv(profile: bool) -> Path:
    """bench/.data/venv with the PySpur peer and matplotlib; returns its python."""
    python = TOOLS_VENV / "bin" / "python"
    wanted = ["pyspur==0.1.18 (--no-deps)", *PEER_PACKAGES, *TOOL_PACKAGES]
    if profile:
        wanted.append("py-spy")
    stamp = TOOLS_VENV / ".bench-packages"
    try:
        installed = set(json.loads(stamp.read_text()))
    except (OSError, ValueError):  # none yet, or another format: install again
        installed = set()
    if python.exists() and set(wanted) <= installed:
        return python
    log(f"installing the peer and chart tools into {TOOLS_VENV}")
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(TOOLS_VENV)
    _pip(TOOLS_VENV, "--no-deps", "pyspur==0.1.18")
    _pip(TOOLS_VENV, *PEER_PACKAGES, *TOOL_PACKAGES, *(["py-spy"] if profile else []))
    # Whatever else PySpur's models and router import would show here.
    check = (
        "import importlib, pkgutil, pyspur.models as m\n"
        "for i in pkgutil.walk_packages(m.__path__, 'pyspur.models.'): importlib.import_module(i.name)\n"
        "import pyspur.api.run_management, matplotlib, uvicorn\n"
    )
    env = {**os.environ, "SQLITE_OVERRIDE_DATABASE_URL": "sqlite://"}
    subprocess.run([str(python), "-c", check], check=True, env=env)
    stamp.write_text(json.dumps(sorted(set(wanted) | installed)))
    return python


def package_versions(python: Path, names: Sequence[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = '-'\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [str(python), "-c", code, *names], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


# ---------------------------------------------------------------------------
# Processes


def _die_with_parent() -> None:
    """Children get SIGTERM if the bench itself dies (no stray servers)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Processes:
    """Every server the bench starts, stopped in `stop_all` whatever happens."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, command: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        LOGS.mkdir(parents=True, exist_ok=True)
        out = open(LOGS / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        out.write(f"\n=== {datetime.now().isoformat()} {shlex.join(command)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=_die_with_parent,
        )
        process.bench_name = name  # type: ignore[attr-defined]
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{process.bench_name} did not stop in {timeout}s: killing it")  # type: ignore[attr-defined]
                process.kill()
                process.wait()
        if process in self.started:
            self.started.remove(process)

    def stop_all(self) -> None:
        for process in list(reversed(self.started)):
            self.stop(process)


def descendants(pid: int) -> list[int]:
    found = [pid]
    for p in list(found):
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.extend(descendants(int(child)))
    return list(dict.fromkeys(found))


def tree_cpu(pid: int) -> float:
    total = 0.0
    for p in descendants(pid):
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) in MB of one process."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def wait_until(
    check: Callable[[], bool], process: subprocess.Popen[bytes], what: str, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}; see {LOGS}")
        try:
            if check():
                return
        except (grpc.RpcError, OSError, http.client.HTTPException):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{what} did not become ready in {timeout}s; see {LOGS}")


def http_get(port: int, path: str, timeout: float = 60) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# ---------------------------------------------------------------------------
# Load generators


@dataclass
class Sample:
    rps: float
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_us: float = 0.0  # server CPU per request


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


_SIZE = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


@dataclass
class GrpcLoad:
    """h2load posting length-prefixed protobuf bodies, one segment per body."""

    port: int
    path: str
    bodies: list[Path]  # one segment each, in turn
    min_data: list[int]  # smallest DATA bytes per answer of each body (gRPC errors have none)

    # A case so slow that a timed segment completes fewer calls than this is
    # measured by count instead: SLOW_CALLS calls (two waves of the 16 in
    # flight), however long they take.
    SLOW_CALLS = 2 * H2LOAD_CLIENTS * H2LOAD_STREAMS
    counted: bool = False  # set once a case fell back to counting

    def _h2load(
        self, n: int, body: Path, min_data: int, work: Path, limit: list[str]
    ) -> tuple[int, float, list[float]]:
        """One h2load run: (calls done, seconds, latencies in ms)."""
        log_file = work / f"h2load-{n}.log"
        command = [
            "h2load", "-t", "1", "-c", str(H2LOAD_CLIENTS), "-m", str(H2LOAD_STREAMS),
            *limit, *GRPC_HEADERS, "-d", str(body),
            "--log-file", str(log_file), f"http://127.0.0.1:{self.port}{self.path}",
        ]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, timeout=900).stdout
        finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
        requests = re.search(
            r"(\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out
        )
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        data = re.search(r"\(\d+\) headers .*?, ([\d.]+)(B|KB|MB|GB) \((\d+)\) data", out)
        if not (finished and requests and codes and data):
            raise RuntimeError(f"h2load: unexpected output:\n{out}")
        done = int(requests.group(1))
        if requests.group(3, 4, 5) != ("0", "0", "0") or codes.group(2, 3, 4) != ("0", "0", "0"):
            raise RuntimeError(f"h2load: failed requests:\n{out}")
        if done and int(data.group(3)) / done < 0.9 * min_data:
            raise RuntimeError(
                f"h2load: {int(data.group(3)) / done:.0f} DATA bytes per answer, expected >= "
                f"{min_data}: gRPC errors (they answer HTTP 200 with no DATA)\n{out}"
            )
        latencies = []
        if log_file.exists():
            for line in log_file.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) == 3:
                    latencies.append(int(parts[2]) / 1000)
            log_file.unlink()
        seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
        return done, seconds, latencies

    def run(self, seconds: float, work: Path, warmup: bool = False) -> Sample:
        segment_ms = max(int(seconds * 1000 / len(self.bodies)), 200)
        latencies: list[float] = []
        done_total, elapsed = 0, 0.0
        for n, (body, min_data) in enumerate(zip(self.bodies, self.min_data, strict=True)):
            if self.counted and not warmup:
                limit = ["-n", str(self.SLOW_CALLS)]
            else:
                limit = ["-D", f"{segment_ms}ms"]
            done, took, times = self._h2load(n, body, min_data, work, limit)
            if done < self.SLOW_CALLS and limit[0] == "-D" and not warmup:
                log(
                    f"  {done} calls in {took:.1f} s: too slow for a timed segment, counting {self.SLOW_CALLS} calls instead"
                )
                self.counted = True
                limit = ["-n", str(self.SLOW_CALLS)]
                done, took, times = self._h2load(n, body, min_data, work, limit)
            if done == 0 and not warmup:
                raise RuntimeError(f"h2load: no call completed ({limit})")
            done_total += done
            elapsed += took
            latencies += times
        latencies.sort()
        return Sample(
            done_total / elapsed if elapsed else 0.0,
            done_total,
            elapsed,
            _percentile(latencies, 50),
            _percentile(latencies, 99),
        )

    def describe(self) -> str:
        return (
            f"h2load -t1 -c{H2LOAD_CLIENTS} -m{H2LOAD_STREAMS} -D <segment> -H 'content-type: application/grpc' "
            f"-H 'te: trailers' -d <body> http://127.0.0.1:PORT{self.path}"
            + (f"  ({len(self.bodies)} segments, one body each)" if len(self.bodies) > 1 else "")
            + (
                f"  (too slow for a {H2LOAD_CLIENTS}x{H2LOAD_STREAMS} timed window: -n {self.SLOW_CALLS} per round instead of -D)"
                if self.counted
                else ""
            )
        )


@dataclass
class HttpLoad:
    """wrk GETs, a random path per request from `ids` (or the one path)."""

    port: int
    template: str  # "/run/{id}/" or a fixed path
    ids: Path | None
    seed: int = 1

    def run(self, seconds: float, work: Path) -> Sample:
        command = [
            "wrk", "-t", "1", "-c", str(WRK_CONNECTIONS), "-d", f"{max(int(round(seconds)), 1)}s",
            "--timeout", "60s", "-s", str(BENCH / "wrk_paths.lua"), f"http://127.0.0.1:{self.port}",
            "--", str(self.ids) if self.ids else "-", self.template, str(self.seed),
        ]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120).stdout
        line = re.search(r"^BENCH (.*)$", out, re.M)
        if not line:
            raise RuntimeError(f"wrk: unexpected output:\n{out}")
        v = {k: int(x) for k, x in (kv.split("=") for kv in line.group(1).split())}
        errors = {k: x for k, x in v.items() if k.startswith("err_") and x}
        if errors or v["requests"] == 0:
            raise RuntimeError(f"wrk: failed requests {errors}:\n{out}")
        elapsed = v["duration_us"] / 1e6
        self.seed += 1  # the next round draws other runs (the peer's is advanced alike)
        return Sample(
            v["requests"] / elapsed, v["requests"], elapsed, v["p50_us"] / 1000, v["p99_us"] / 1000
        )

    def describe(self) -> str:
        what = "a random run id per request" if self.ids else "one path"
        return (
            f"wrk -t1 -c{WRK_CONNECTIONS} -d <seconds>s --timeout 60s -s bench/wrk_paths.lua "
            f"http://127.0.0.1:PORT -- <ids> '{self.template}' <seed>  ({what})"
        )


@dataclass
class Case:
    key: str
    label: str
    side: str  # "spur-runs gRPC", "spur-runs HTTP", "PySpur", "floor"
    load: GrpcLoad | HttpLoad
    pid: Callable[[], int]
    samples: list[Sample] = field(default_factory=list)

    def measure(self, seconds: float, work: Path) -> Sample:
        pid = self.pid()
        before = tree_cpu(pid)
        sample = self.load.run(seconds, work)
        sample.cpu_us = (tree_cpu(pid) - before) / sample.requests * 1e6
        self.samples.append(sample)
        return sample

    def summary(self) -> dict[str, Any]:
        s = self.samples
        med = lambda attr: statistics.median(getattr(x, attr) for x in s)  # noqa: E731
        return {
            "key": self.key,
            "label": self.label,
            "side": self.side,
            "client": self.load.describe(),
            "rps": med("rps"),
            "rps_min": min(x.rps for x in s),
            "rps_max": max(x.rps for x in s),
            "p50_ms": med("p50_ms"),
            "p99_ms": med("p99_ms"),
            "cpu_us": med("cpu_us"),
            "requests": sum(x.requests for x in s),
            "rounds": [asdict(x) for x in s],
        }


def per_round_ratio(a: Case, b: Case, attr: str = "rps") -> float:
    """Median over rounds of a/b (each round measured a and b back to back)."""
    return statistics.median(
        getattr(x, attr) / getattr(y, attr) for x, y in zip(a.samples, b.samples, strict=True)
    )


# ---------------------------------------------------------------------------
# Data


@dataclass
class Database:
    backend: str  # sqlite | postgresql
    runs: int
    url: str
    peer_env: dict[str, str]
    pg_name: str | None = None

    @property
    def name(self) -> str:
        size = f"{self.runs // 1000}k" if self.runs < 1_000_000 else f"{self.runs // 1_000_000}M"
        return f"{'SQLite' if self.backend == 'sqlite' else 'PostgreSQL'} {size}"

    @property
    def slug(self) -> str:
        return f"{self.backend}-{self.runs}"


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def create_database(backend: str, runs: int, tag: str) -> Database:
    """An empty database (a fresh SQLite file, or a new PostgreSQL database)
    for `runs` runs; `tag` keeps the databases of different scripts apart.
    Also used by soak.py and watchers.py."""
    if backend == "sqlite":
        path = DATA / f"{tag}-sqlite-{runs}.db"
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return Database(
            backend,
            runs,
            f"sqlite:///{path}",
            {"SQLITE_OVERRIDE_DATABASE_URL": f"sqlite:///{path}"},
        )
    name = f"spur_bench_{tag}_{runs}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _pg_admin(f'CREATE DATABASE "{name}"')
    env = {
        "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": "",
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": "5432",
        "POSTGRES_DB": name,
    }
    return Database(
        backend, runs, f"postgresql://postgres@127.0.0.1:5432/{name}", env, pg_name=name
    )


def drop_database(db: Database) -> None:
    if db.pg_name:
        _pg_admin(f'DROP DATABASE IF EXISTS "{db.pg_name}" WITH (FORCE)')
    else:
        path = db.url.removeprefix("sqlite:///")
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def spur_runs(*args: str, timeout: float = 900) -> tuple[float, str]:
    """Run the `spur-runs` command; (wall seconds, output)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "spur_runs", *args], capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"spur-runs {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return seconds, done.stdout + done.stderr


def seed_database(db: Database) -> dict[str, Any]:
    migrate_s, _ = spur_runs("migrate", "--database-url", db.url)
    seed_s, out = spur_runs("seed", "--database-url", db.url, "--runs", str(db.runs))
    said = re.search(r"seeded (\d+) runs .* in ([\d.]+) s", out)
    log(
        f"{db.name}: migrate {migrate_s:.1f} s, seed --runs {db.runs} {seed_s:.1f} s ({out.splitlines()[0] if out else ''})"
    )
    result: dict[str, Any] = {
        "migrate_s": migrate_s,
        "seed_s": seed_s,
        "seed_reported_s": float(said.group(2)) if said else None,
    }
    if db.backend == "postgresql":
        result["analyze"] = analyze_postgres(db)
    return result


def _time_list_page(url: str) -> float:
    """Milliseconds of one ListRuns page 1 (page_size 10), in process."""
    from spur_runs.api.service import RunService
    from spur_runs.store.db import Database as SpurDatabase

    spur = SpurDatabase.from_url(url, pool_size=1)
    try:
        service = RunService(spur)
        service.ListRuns(pb.ListRunsRequest(page_size=1), None)  # type: ignore[arg-type]
        start = time.perf_counter()
        service.ListRuns(pb.ListRunsRequest(page_size=10), None)  # type: ignore[arg-type]
        return (time.perf_counter() - start) * 1000
    finally:
        spur.dispose()


def analyze_postgres(db: Database) -> dict[str, float]:
    """`spur-runs seed` leaves PostgreSQL without statistics on what it
    loaded; until autovacuum gets to the tables, the planner guesses. The
    bench runs ANALYZE, as autovacuum soon would, and records one ListRuns
    page before and after it."""
    import psycopg

    before = _time_list_page(db.url)
    start = time.perf_counter()
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute("ANALYZE")
    analyze_s = time.perf_counter() - start
    after = _time_list_page(db.url)
    log(
        f"{db.name}: ListRuns page 1 took {before:.0f} ms right after the seed, "
        f"{after:.0f} ms after ANALYZE ({analyze_s:.1f} s)"
    )
    return {"list_ms_before": before, "list_ms_after": after, "analyze_s": analyze_s}


def sample_runs(db: Database, count: int, seed: int = 5) -> list[str]:
    """`count` run ids drawn uniformly among all runs (by _intid)."""
    from sqlalchemy import create_engine, func, select

    from spur_runs.store.db import normalize_url
    from spur_runs.store.models import Run

    engine = create_engine(normalize_url(db.url))
    try:
        with engine.connect() as conn:
            low, high = conn.execute(select(func.min(Run._intid), func.max(Run._intid))).one()
            rng = random.Random(seed)
            picks = rng.sample(range(low, high + 1), min(count * 2, high - low + 1))
            found: list[str] = []
            for start in range(0, len(picks), 500):
                chunk = picks[start : start + 500]
                found += conn.execute(select(Run.id).where(Run._intid.in_(chunk))).scalars().all()
            by_intid = {int(i[1:]): i for i in found}
            return [by_intid[p] for p in picks if p in by_intid][:count]
    finally:
        engine.dispose()


def deep_cursor(db: Database, depth: int) -> tuple[str, int]:
    """The page token of the row at `depth` (0-based: the page starts after
    it) in ListRuns' order, and the page number that starts there."""
    from sqlalchemy import create_engine, select

    from spur_runs.api.paging import encode_run_cursor
    from spur_runs.store.db import normalize_url
    from spur_runs.store.models import Run

    engine = create_engine(normalize_url(db.url))
    try:
        with engine.connect() as conn:
            start_time, intid = conn.execute(
                select(Run.start_time, Run._intid)
                .where(Run.start_time.is_not(None))
                .order_by(Run.start_time.desc(), Run._intid.desc())
                .offset(depth - 1)
                .limit(1)
            ).one()
    finally:
        engine.dispose()
    return encode_run_cursor("runs", start_time, intid), depth // 10 + 1


# ---------------------------------------------------------------------------
# GetRun's statement count (in process)


def statement_counts(
    backend: str, tag: str, sizes: Sequence[int] = (10, 1000, 1500)
) -> dict[str, Any]:
    from sqlalchemy import event, insert, select

    from spur_runs.api.service import RunService
    from spur_runs.store.db import Database as SpurDatabase
    from spur_runs.store.models import Run, Task

    db = create_database(backend, 0, f"{tag}_stmt") if backend == "postgresql" else None
    if db is None:
        path = DATA / "statements.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        db = Database("sqlite", 0, f"sqlite:///{path}", {})
    try:
        spur_runs("migrate", "--database-url", db.url)
        spur_runs("seed", "--database-url", db.url, "--runs", "1")
        spur = SpurDatabase.from_url(db.url, pool_size=2)
        run_ids: dict[int, str] = {}
        with spur.write() as conn:
            template_run = dict(conn.execute(select(Run.__table__).limit(1)).mappings().one())
            template_task = dict(
                conn.execute(
                    select(Task.__table__).where(Task.run_id == template_run["id"]).limit(1)
                )
                .mappings()
                .one()
            )
            for n in sizes:
                values = {k: v for k, v in template_run.items() if k not in ("_intid", "id")}
                values["parent_run_id"] = None
                intid = conn.execute(
                    insert(Run.__table__).values(**values).returning(Run._intid)
                ).scalar_one()
                run_id = f"R{intid}"
                task = {k: v for k, v in template_task.items() if k not in ("_intid", "id")}
                conn.execute(insert(Task.__table__), [{**task, "run_id": run_id} for _ in range(n)])
                run_ids[n] = run_id
        statements: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements.append(statement)

        for engine in spur.engines.values():
            event.listen(engine, "before_cursor_execute", count)
        service = RunService(spur)
        result: dict[str, Any] = {"database": db.name.split()[0], "runs": {}}
        for n, run_id in run_ids.items():
            counts = []
            for _ in range(2):  # the first call may also read the workflow version (cached after)
                statements.clear()
                response = service.GetRun(pb.GetRunRequest(run_id=run_id), None)  # type: ignore[arg-type]
                counts.append(len(statements))
            result["runs"][n] = {
                "first_call": counts[0],
                "statements": counts[1],
                "tasks_embedded": len(response.run.tasks),
                "task_count": response.run.task_count,
                "sql": [" ".join(s.split())[:140] for s in statements],
            }
        spur.dispose()
        return result
    finally:
        drop_database(db)


# ---------------------------------------------------------------------------
# Servers


class Servers:
    def __init__(self, procs: Processes, tools_python: Path, db: Database) -> None:
        self.procs, self.python, self.db = procs, tools_python, db
        self.ours: subprocess.Popen[bytes] | None = None
        self.peer: subprocess.Popen[bytes] | None = None

    def start_ours(
        self, workers: int = 1, name: str = "spur-runs"
    ) -> tuple[subprocess.Popen[bytes], int, int]:
        grpc_port, http_port = free_port(), free_port()
        command = [
            sys.executable, "-m", "spur_runs", "serve", "--database-url", self.db.url,
            "--grpc-address", f"127.0.0.1:{grpc_port}", "--http-address", f"127.0.0.1:{http_port}",
            "--log-level", "WARNING",
        ]  # fmt: skip
        if workers > 1:
            command += ["--workers", str(workers)]
        process = self.procs.start(f"{name}-{self.db.slug}", command)

        def ready() -> bool:
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                RunServiceStub(channel).ListRuns(pb.ListRunsRequest(page_size=1), timeout=2)
            return http_get(http_port, "/run?page_size=1", timeout=2)[0] == 200

        wait_until(ready, process, name)
        if workers > 1:  # every worker up: each answers on its own connection
            wait_until(lambda: len(descendants(process.pid)) > workers, process, name)
            time.sleep(2)
        return process, grpc_port, http_port

    def start_peer(self) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        command = [
            str(self.python), "-m", "uvicorn", "pyspur_peer:app", "--app-dir", str(BENCH),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        process = self.procs.start(f"pyspur-{self.db.slug}", command, env=self.db.peer_env)
        wait_until(
            lambda: http_get(port, "/run/?page=1&page_size=1", timeout=5)[0] == 200,
            process,
            "PySpur",
        )
        return process, port


def start_floor(procs: Processes, mode: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = procs.start(
        f"floor-{mode}",
        [sys.executable, str(BENCH / "floor_server.py"), "--mode", mode, "--port", str(port)],
    )

    def ready() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(FLOOR_PATH)
            return call(b"", timeout=2) == b""

    wait_until(ready, process, f"floor ({mode})")
    return process, port


def grpc_body(work: Path, name: str, message: Any) -> Path:
    raw = message.SerializeToString()
    path = work / f"{name}.grpc"
    path.write_bytes(struct.pack(">?I", False, len(raw)) + raw)
    return path


# ---------------------------------------------------------------------------
# One database's cases


@dataclass
class Settings:
    seconds: float
    rounds: int
    segments: int  # random runs per round for gRPC GetRun
    warmup: float


def run_rounds(cases: Sequence[Case], settings: Settings, work: Path, label: str) -> None:
    for case in cases:  # warm-up: connections, caches, the interpreters' first calls
        if isinstance(case.load, GrpcLoad):
            case.load.run(settings.warmup, work, warmup=True)
        else:
            case.load.run(settings.warmup, work)
        case.samples.clear()
    for n in range(settings.rounds):
        order = cases if n % 2 == 0 else list(reversed(cases))
        for case in order:
            sample = case.measure(settings.seconds, work)
            log(
                f"{label} round {n + 1}/{settings.rounds} {case.label:<44} {sample.rps:8.1f} req/s  "
                f"p50 {sample.p50_ms:7.2f} ms  p99 {sample.p99_ms:7.2f} ms  {sample.cpu_us:7.0f} us CPU/req"
            )


def bench_database(
    db: Database,
    procs: Processes,
    tools_python: Path,
    floors: dict[str, tuple[subprocess.Popen[bytes], int]],
    settings: Settings,
    with_workers: bool,
) -> dict[str, Any]:
    work = DATA / "work" / db.slug
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"name": db.name, "backend": db.backend, "runs": db.runs}
    out.update(seed_database(db))
    servers = Servers(procs, tools_python, db)
    ours, grpc_port, http_port = servers.start_ours()
    peer, peer_port = servers.start_peer()
    try:
        # Random runs: for h2load, one body per segment; for wrk, a list.
        needed = settings.rounds * settings.segments + 1
        ids = sample_runs(db, max(1000, needed))
        ids_file = work / "run_ids.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        grpc_ids = ids[:needed]
        depth = db.runs - 100  # ~the whole table deep, a full page beyond it
        token, page = deep_cursor(db, depth)
        out["deep"] = {"depth": depth, "page": page}

        bodies: dict[str, list[Path]] = {}
        min_data: dict[str, list[int]] = {}
        with grpc.insecure_channel(
            f"127.0.0.1:{grpc_port}", options=[("grpc.max_receive_message_length", 64 << 20)]
        ) as channel:
            stub = RunServiceStub(channel)

            def body(key: str, name: str, call: Callable[..., Any], request: Any) -> Any:
                response = call(request, timeout=120)
                bodies.setdefault(key, []).append(grpc_body(work, name, request))
                min_data.setdefault(key, []).append(len(response.SerializeToString()) + 5)
                return response

            for run_id in grpc_ids:
                got = body("get", f"get-{run_id}", stub.GetRun, pb.GetRunRequest(run_id=run_id))
                assert got.run.id == run_id
            first = body("page1", "list-page1", stub.ListRuns, pb.ListRunsRequest(page_size=10))
            keyset = body(
                "keyset",
                "list-keyset",
                stub.ListRuns,
                pb.ListRunsRequest(page_size=10, page_token=token),
            )
            numbered = body(
                "pagenum",
                "list-pagenum",
                stub.ListRuns,
                pb.ListRunsRequest(page_size=10, page=page),
            )
            assert len(first.runs) == 10 and len(keyset.runs) == 10
            if [r.id for r in keyset.runs] != [r.id for r in numbered.runs]:
                raise RuntimeError(
                    f"keyset page after depth {depth} and page {page} differ: "
                    f"{[r.id for r in keyset.runs]} vs {[r.id for r in numbered.runs]}"
                )
            out["sizes"] = {
                "get_run_bytes": statistics.median(min_data["get"]) - 5,
                "list_page_bytes": min_data["page1"][0] - 5,
                "keyset_page_bytes": min_data["keyset"][0] - 5,
                "pagenum_page_bytes": min_data["pagenum"][0] - 5,
                "tasks_per_run": statistics.median(
                    len(stub.GetRun(pb.GetRunRequest(run_id=i)).run.tasks) for i in grpc_ids[:10]
                ),
            }
        for path in (f"/run/{ids[0]}/", "/run/?page=1&page_size=10"):
            for port, who in ((http_port, "spur-runs"), (peer_port, "PySpur")):
                status, data = http_get(port, path)
                if status != 200:
                    raise RuntimeError(f"{who} GET {path}: HTTP {status}: {data[:300]!r}")
                out["sizes"][f"{who} GET {path.replace(ids[0], '{id}')} bytes"] = len(data)

        floor_sync, floor_aio = floors["sync"], floors["aio"]
        empty = DATA / "work" / "empty.grpc"
        empty.write_bytes(b"\x00\x00\x00\x00\x00")
        seg = settings.segments
        ours_pid, peer_pid = (lambda: ours.pid), (lambda: peer.pid)
        cases = {
            "floor_sync": Case("floor_sync", "floor: empty unary, sync grpcio", "floor",
                               GrpcLoad(floor_sync[1], FLOOR_PATH, [empty] * seg, [5] * seg), lambda: floor_sync[0].pid),
            "grpc_get": Case("grpc_get", "GetRun, random run (gRPC)", "spur-runs gRPC",
                             GrpcLoad(grpc_port, GET_RUN_PATH, bodies["get"][:seg], min_data["get"][:seg]), ours_pid),
            "floor_aio": Case("floor_aio", "floor: empty unary, aio grpcio", "floor",
                              GrpcLoad(floor_aio[1], FLOOR_PATH, [empty] * seg, [5] * seg), lambda: floor_aio[0].pid),
            "http_get": Case("http_get", "GET /run/{id}/, random run (HTTP)", "spur-runs HTTP",
                             HttpLoad(http_port, "/run/{id}/", ids_file), ours_pid),
            "pyspur_get": Case("pyspur_get", "PySpur GET /run/{id}/, random run", "PySpur",
                               HttpLoad(peer_port, "/run/{id}/", ids_file), peer_pid),
            "grpc_list": Case("grpc_list", "ListRuns page 1, page_size 10 (gRPC)", "spur-runs gRPC",
                              GrpcLoad(grpc_port, LIST_RUNS_PATH, bodies["page1"], min_data["page1"]), ours_pid),
            "http_list": Case("http_list", "GET /run/?page=1&page_size=10 (HTTP)", "spur-runs HTTP",
                              HttpLoad(http_port, "/run/?page=1&page_size=10", None), ours_pid),
            "pyspur_list": Case("pyspur_list", "PySpur GET /run/?page=1&page_size=10", "PySpur",
                                HttpLoad(peer_port, "/run/?page=1&page_size=10", None), peer_pid),
            "grpc_keyset": Case("grpc_keyset", f"ListRuns keyset token, depth {depth:,} (gRPC)", "spur-runs gRPC",
                                GrpcLoad(grpc_port, LIST_RUNS_PATH, bodies["keyset"], min_data["keyset"]), ours_pid),
            "grpc_pagenum": Case("grpc_pagenum", f"ListRuns page={page:,}, same depth (gRPC)", "spur-runs gRPC",
                                 GrpcLoad(grpc_port, LIST_RUNS_PATH, bodies["pagenum"], min_data["pagenum"]), ours_pid),
        }  # fmt: skip
        # Grouped so that each comparison is measured back to back.
        order = ["floor_sync", "grpc_get", "floor_aio", "http_get", "pyspur_get",
                 "grpc_list", "http_list", "pyspur_list", "grpc_keyset", "grpc_pagenum"]  # fmt: skip
        # The second HTTP/PySpur pair uses the same random sequence.
        cases["pyspur_get"].load.seed = cases["http_get"].load.seed  # type: ignore[union-attr]
        run_rounds([cases[k] for k in order], settings, work, db.name)
        c = cases
        out["cases"] = {k: c[k].summary() for k in order}
        out["ratios"] = {
            "get_vs_floor_sync": per_round_ratio(c["grpc_get"], c["floor_sync"]),
            "get_vs_floor_aio": per_round_ratio(c["grpc_get"], c["floor_aio"]),
            "floor_cpu_share": per_round_ratio(c["floor_sync"], c["grpc_get"], "cpu_us"),
            "http_get_vs_pyspur": per_round_ratio(c["http_get"], c["pyspur_get"]),
            "http_get_vs_pyspur_cpu": per_round_ratio(c["pyspur_get"], c["http_get"], "cpu_us"),
            "grpc_list_vs_pyspur": per_round_ratio(c["grpc_list"], c["pyspur_list"]),
            "grpc_list_vs_pyspur_cpu": per_round_ratio(c["pyspur_list"], c["grpc_list"], "cpu_us"),
            "http_list_vs_pyspur": per_round_ratio(c["http_list"], c["pyspur_list"]),
            "http_list_vs_pyspur_cpu": per_round_ratio(c["pyspur_list"], c["http_list"], "cpu_us"),
            "page1_vs_keyset": per_round_ratio(c["grpc_list"], c["grpc_keyset"]),
            "keyset_vs_page1_p50": per_round_ratio(c["grpc_keyset"], c["grpc_list"], "p50_ms"),
            "keyset_vs_page1_cpu": per_round_ratio(c["grpc_keyset"], c["grpc_list"], "cpu_us"),
            "page1_vs_pagenum": per_round_ratio(c["grpc_list"], c["grpc_pagenum"]),
            "floor_aio_vs_sync": per_round_ratio(c["floor_aio"], c["floor_sync"]),
        }
        if with_workers:
            out["workers"] = bench_workers(servers, cases, settings, work, db)
        out["memory"] = {"spur-runs": memory(ours.pid), "PySpur": memory(peer.pid)}
        log(f"{db.name}: spur-runs RSS {out['memory']['spur-runs']}")
        return out
    finally:
        procs.stop(peer)
        procs.stop(ours)


def bench_workers(
    servers: Servers, cases: dict[str, Case], settings: Settings, work: Path, db: Database
) -> dict[str, Any]:
    """--workers 2 against the single server already running, same loads."""
    two, grpc_port, http_port = servers.start_ours(workers=2, name="spur-runs-workers2")
    try:
        one_get, one_http = cases["grpc_get"], cases["http_get"]
        g1 = Case(
            "w1_grpc", "GetRun random, 1 process", "spur-runs gRPC", one_get.load, one_get.pid
        )
        g2_load = GrpcLoad(grpc_port, GET_RUN_PATH, one_get.load.bodies, one_get.load.min_data)  # type: ignore[union-attr]
        g2 = Case(
            "w2_grpc", "GetRun random, --workers 2", "spur-runs gRPC", g2_load, lambda: two.pid
        )
        h1 = Case(
            "w1_http",
            "GET /run/{id}/ random, 1 process",
            "spur-runs HTTP",
            HttpLoad(one_http.load.port, "/run/{id}/", one_http.load.ids),
            one_http.pid,
        )  # type: ignore[union-attr]
        h2 = Case(
            "w2_http",
            "GET /run/{id}/ random, --workers 2",
            "spur-runs HTTP",
            HttpLoad(http_port, "/run/{id}/", one_http.load.ids),
            lambda: two.pid,
        )  # type: ignore[union-attr]
        all_cases = [g1, g2, h1, h2]
        split: list[list[float]] = []
        pids = [
            p
            for p in descendants(two.pid)
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()  # not the resource tracker
        ]

        def per_worker_cpu() -> list[float]:
            return [cpu_seconds(p) for p in pids]

        before = per_worker_cpu()
        run_rounds(all_cases, settings, work, f"{db.name} workers")
        after = per_worker_cpu()
        split.append([a - b for a, b in zip(after, before, strict=True)])
        return {
            "cases": {c.key: c.summary() for c in all_cases},
            "grpc_ratio": per_round_ratio(g2, g1),
            "http_ratio": per_round_ratio(h2, h1),
            "worker_cpu_split_s": split[0],
            "memory": {str(p): memory(p) for p in [two.pid, *pids]},
        }
    finally:
        servers.procs.stop(two)


# ---------------------------------------------------------------------------
# Report


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(
        next(
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": next(
            (
                line.split("=", 1)[1].strip('"')
                for line in Path("/etc/os-release").read_text().splitlines()
                if line.startswith("PRETTY_NAME")
            ),
            "",
        ),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def targets_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for d in results["datasets"]:
        r, c, n = d["ratios"], d["cases"], d["name"]
        rows.append(
            {
                "target": "GetRun (random run) >= 50% of the sync empty-echo floor",
                "where": n,
                "measured": f"{c['grpc_get']['rps']:,.0f} vs {c['floor_sync']['rps']:,.0f} req/s",
                "ratio": f"{r['get_vs_floor_sync']:.1%} (CPU/call: floor is {r['floor_cpu_share']:.1%} of GetRun's)",
                "verdict": verdict(r["get_vs_floor_sync"] >= TARGETS["floor"]),
            }
        )
        rows.append(
            {
                "target": "HTTP GET /run/{id}/ >= 10x PySpur's GET of the same runs",
                "where": n,
                "measured": f"{c['http_get']['rps']:,.0f} vs {c['pyspur_get']['rps']:,.0f} req/s",
                "ratio": f"{r['http_get_vs_pyspur']:.1f}x (server CPU/req: PySpur's is {r['http_get_vs_pyspur_cpu']:.1f}x ours)",
                "verdict": verdict(r["http_get_vs_pyspur"] >= TARGETS["http_get"]),
            }
        )
        http_cost = statistics.median(
            h["cpu_us"] / g["cpu_us"]
            for h, g in zip(c["http_get"]["rounds"], c["grpc_get"]["rounds"], strict=True)
        )
        rows.append(
            {
                "target": "HTTP GET /run/{id}/ costs <= 1.5x GetRun over gRPC (server CPU/req)",
                "where": n,
                "measured": f"{c['http_get']['cpu_us']:,.0f} vs {c['grpc_get']['cpu_us']:,.0f} "
                f"us/req ({c['http_get']['rps']:,.0f} vs {c['grpc_get']['rps']:,.0f} req/s)",
                "ratio": f"{http_cost:.2f}x (median of the per-round ratios)",
                "verdict": verdict(http_cost <= TARGETS["http_vs_grpc"]),
            }
        )
        for side, key, ratio in (
            ("gRPC", "grpc_list", "grpc_list_vs_pyspur"),
            ("HTTP", "http_list", "http_list_vs_pyspur"),
        ):
            rows.append(
                {
                    "target": f"ListRuns page_size 10 ({side}) >= 20x PySpur's list page",
                    "where": n,
                    "measured": f"{c[key]['rps']:,.0f} vs {c['pyspur_list']['rps']:,.0f} req/s",
                    "ratio": f"{r[ratio]:.1f}x (server CPU/req: PySpur's is {r[ratio + '_cpu']:.1f}x ours)",
                    "verdict": verdict(r[ratio] >= TARGETS["list"]),
                }
            )
        rows.append(
            {
                "target": f"keyset page at depth {d['deep']['depth']:,} within 1.3x of page 1",
                "where": n,
                "measured": f"{c['grpc_keyset']['rps']:,.0f} vs {c['grpc_list']['rps']:,.0f} req/s; "
                f"page-number at the same depth {c['grpc_pagenum']['rps']:,.1f} req/s",
                "ratio": f"{r['page1_vs_keyset']:.2f}x slower (p50 {r['keyset_vs_page1_p50']:.2f}x, CPU {r['keyset_vs_page1_cpu']:.2f}x); "
                f"page-number: {r['page1_vs_pagenum']:.1f}x slower",
                "verdict": verdict(r["page1_vs_keyset"] <= TARGETS["deep"])
                if d["runs"] >= 1_000_000
                else "info (target at 1M)",
            }
        )
    for s in results["statements"]:
        runs = s["runs"]
        counts = {int(k): v["statements"] for k, v in runs.items()}
        rows.append(
            {
                "target": "GetRun SQL statements constant in tasks (10 vs 1,000)",
                "where": s["database"],
                "measured": ", ".join(f"{k:,} tasks: {v}" for k, v in sorted(counts.items())),
                "ratio": f"{counts[1000]} vs {counts[10]}",
                "verdict": verdict(counts[1000] == counts[10]),
            }
        )
    big = [d for d in results["datasets"] if d["runs"] >= 1_000_000]
    for d in big or results["datasets"]:
        rss = d["memory"]["spur-runs"]
        rows.append(
            {
                "target": "server RSS <= 150 MB after the whole bench",
                "where": d["name"],
                "measured": f"VmRSS {rss['VmRSS']:.0f} MB (peak {rss['VmHWM']:.0f} MB)",
                "ratio": f"{rss['VmRSS'] / TARGETS['rss_mb']:.2f}x the bound",
                "verdict": verdict(rss["VmRSS"] <= TARGETS["rss_mb"])
                + ("" if big else " (10k only: target is on 1M)"),
            }
        )
    sqlite_big = [d for d in big if d["backend"] == "sqlite"]
    for d in sqlite_big or [d for d in results["datasets"] if d["backend"] == "sqlite"]:
        rows.append(
            {
                "target": f"spur-runs seed --runs {d['runs']:,} <= 60 s on SQLite",
                "where": d["name"],
                "measured": f"{d['seed_s']:.1f} s wall (the command says {d['seed_reported_s']} s)",
                "ratio": f"{d['seed_s'] / TARGETS['seed_s']:.2f}x the bound",
                "verdict": verdict(d["seed_s"] <= TARGETS["seed_s"])
                if sqlite_big
                else "n/a (quick: 1M not seeded)",
            }
        )
    for d in results["datasets"]:
        if "workers" in d:
            w = d["workers"]
            rows.append(
                {
                    "target": "--workers 2 vs 1 under the same load (report)",
                    "where": d["name"],
                    "measured": f"gRPC GetRun {w['cases']['w2_grpc']['rps']:,.0f} vs {w['cases']['w1_grpc']['rps']:,.0f} req/s; "
                    f"HTTP GET {w['cases']['w2_http']['rps']:,.0f} vs {w['cases']['w1_http']['rps']:,.0f} req/s",
                    "ratio": f"gRPC {w['grpc_ratio']:.2f}x, HTTP {w['http_ratio']:.2f}x",
                    "verdict": "report",
                }
            )
    return rows


def _fmt_case(case: dict[str, Any]) -> str:
    rps = case["rps"]
    spread = (
        f"{case['rps_min']:,.0f}–{case['rps_max']:,.0f}"
        if rps >= 100
        else f"{case['rps_min']:,.1f}–{case['rps_max']:,.1f}"
    )
    value = f"{rps:,.0f}" if rps >= 100 else f"{rps:,.1f}"
    return (
        f"| {case['label']} | {case['side']} | **{value}** | {spread} | {case['p50_ms']:.2f} | "
        f"{case['p99_ms']:.2f} | {case['cpu_us']:,.0f} | {case['requests']:,} |"
    )


def write_markdown(results: dict[str, Any], path: Path) -> None:
    m, s = results["meta"], results["settings"]
    lines = [
        "# spur-runs benchmark results",
        "",
        f"Measured {m['date']} with `{m['command']}` ({'quick mode: 10,000 runs only' if s['quick'] else 'full mode'}), "
        f"{m['wall_minutes']:.1f} minutes wall. Produced by [bench/run.py](../run.py); raw numbers in "
        "[results.json](results.json), chart [throughput.png](throughput.png).",
        ""
        + (
            f"Plus a second invocation, `{m['second_invocation']['command']}`, at {m['second_invocation']['date']} "
            f"({m['second_invocation']['wall_minutes']:.1f} minutes): see the PostgreSQL 1M section.\n"
            if m.get("second_invocation")
            else ""
        ),
        f"**Machine**: {m['machine']['cpu']}, {m['machine']['cores']} cores, {m['machine']['memory_gb']} GB, "
        f"{m['machine']['os']}, Linux {m['machine']['kernel']}, Python {m['machine']['python']}; "
        f"load average at start {m['load_start'][0]:.1f}, at end {m['load_end'][0]:.1f} (a shared machine: "
        "other jobs ran during the bench; absolute numbers drift, ratios are measured back to back). "
        "Load generators, servers and databases all on this machine, over loopback.",
        "",
        f"**Versions**: spur-runs {m['versions']['ours'].get('spur-runs')}, grpcio {m['versions']['ours'].get('grpcio')}, "
        f"SQLAlchemy {m['versions']['ours'].get('SQLAlchemy')}, protobuf {m['versions']['ours'].get('protobuf')}; "
        "peer: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"]["peer"].items())
        + f"; PostgreSQL {m.get('postgres', '?')}; "
        f"{m['tools']['h2load']}, {m['tools']['wrk']}.",
        "",
        f"**Method**: each case {s['seconds']:g} s × {s['rounds']} rounds after a {s['warmup']:g} s warm-up; "
        "the cases of a comparison run back to back in every round (order reversed every other round); "
        "req/s, p50 and p99 are medians over rounds (spread: slowest–fastest round); a ratio is the median of "
        "the per-round ratios. 16 requests in flight on every side: "
        f"`h2load -t1 -c{H2LOAD_CLIENTS} -m{H2LOAD_STREAMS}` for gRPC, `wrk -t1 -c{WRK_CONNECTIONS}` for HTTP. "
        "Server CPU/req is user+system time of the server's process(es) over the window divided by requests: "
        "the figure the noise moves least. On PostgreSQL it leaves out the database's own backends (another process); "
        "on SQLite the database work is in it.",
        "",
        "## Targets",
        "",
        "| target | database | measured | ratio | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in results["targets"]:
        lines.append(
            f"| {row['target']} | {row['where']} | {row['measured']} | {row['ratio']} | **{row['verdict']}** |"
        )
    lines += ["", "## Every case", ""]
    header = [
        "| case | side | req/s | spread | p50 ms | p99 ms | server CPU µs/req | requests |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d in results["datasets"]:
        sizes = d.get("sizes", {})
        lines += [
            f"### {d['name']} runs",
            "",
            f"`spur-runs migrate` {d['migrate_s']:.1f} s, `spur-runs seed --runs {d['runs']:,}` {d['seed_s']:.1f} s. "
            f"A GetRun answer is ~{sizes.get('get_run_bytes', 0):,.0f} bytes of protobuf ({sizes.get('tasks_per_run', 0):g} tasks), "
            f"a list page {sizes.get('list_page_bytes', 0):,} bytes (page 1; the deep page "
            f"{sizes.get('keyset_page_bytes', 0):,} bytes: other runs, older ones). Deep page: depth {d['deep']['depth']:,} "
            f"(keyset token of the row there; page-number paging: page={d['deep']['page']:,})."
            + (
                f" Then `ANALYZE` ({d['analyze']['analyze_s']:.1f} s): the seed leaves no planner statistics, "
                f"and one ListRuns page 1 took **{d['analyze']['list_ms_before']:,.0f} ms** before it, "
                f"{d['analyze']['list_ms_after']:,.0f} ms after."
                if "analyze" in d
                else ""
            )
            + (
                f" Measured by a separate invocation: {d['run_note']}." if d.get("run_note") else ""
            ),
            "",
            *header,
        ]
        lines += [_fmt_case(c) for c in d["cases"].values()]
        mem = d["memory"]
        lines += [
            "",
            f"RSS at the end: spur-runs {mem['spur-runs']['VmRSS']:.0f} MB (peak {mem['spur-runs']['VmHWM']:.0f} MB), "
            f"PySpur {mem['PySpur']['VmRSS']:.0f} MB (peak {mem['PySpur']['VmHWM']:.0f} MB).",
            "",
        ]
        if "workers" in d:
            w = d["workers"]
            lines += [f"#### `--workers 2` vs 1 ({d['name']})", "", *header]
            lines += [_fmt_case(c) for c in w["cases"].values()]
            split = ", ".join(f"{x:.1f} s" for x in w["worker_cpu_split_s"])
            lines += [
                "",
                f"Ratio (2 workers / 1): gRPC {w['grpc_ratio']:.2f}x, HTTP {w['http_ratio']:.2f}x. CPU of each "
                f"worker process over those rounds: {split} (h2load's 4 connections are spread over the workers "
                "by the kernel's SO_REUSEPORT hash, which need not be even). The machine has 2 cores, shared "
                "with the load generator and the other jobs.",
                "",
            ]
    lines += ["## GetRun's SQL statements", ""]
    for st in results["statements"]:
        lines.append(f"{st['database']}:")
        lines.append("")
        for n, v in sorted(st["runs"].items(), key=lambda kv: int(kv[0])):
            lines.append(
                f"- run with {int(n):,} tasks: **{v['statements']}** statements per GetRun "
                f"({v['first_call']} on the first call, which also reads the workflow version into the cache); "
                f"{v['tasks_embedded']:,} tasks embedded, task_count {v['task_count']:,}"
            )
        last = st["runs"][max(st["runs"], key=int)]
        lines += [
            "",
            "  the statements (largest run): " + "; ".join(f"`{q}`" for q in last["sql"]),
            "",
        ]
    lines += ["## How each case is loaded", ""]
    for note in results["notes"]:
        lines.append(f"- {note}")
    lines += ["", "## Commands", "", "```sh", results["meta"]["command"], "```", ""]
    for c in results["commands"]:
        lines.append(f"- {c}")
    lines.append("")
    path.write_text("\n".join(lines))


# ---------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="10,000 runs only, shorter cases (a few minutes)"
    )
    parser.add_argument(
        "--seconds", type=float, default=3, help="seconds per case per round (default 3)"
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 5; quick 2)")
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql"
    )
    parser.add_argument(
        "--sizes", help="comma-separated run counts (default 10000,1000000; quick 10000)"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="results folder (default bench/results)"
    )
    parser.add_argument(
        "--max-minutes", type=float, default=35, help="skip databases not started by then"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also install py-spy into the bench venv"
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: rewrite RESULTS.md and the chart in --out from a results.json",
    )
    args = parser.parse_args()
    if args.report:
        results = json.loads(args.report.read_text())
        results["targets"] = targets_table(results)
        args.out.mkdir(parents=True, exist_ok=True)
        if args.report.resolve() != (args.out / "results.json").resolve():
            (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        write_markdown(results, args.out / "RESULTS.md")
        subprocess.run(
            [
                str(ensure_tools_venv(False)),
                str(BENCH / "chart.py"),
                str(args.out / "results.json"),
                str(args.out / "throughput.png"),
            ],
            check=True,
        )
        return 0
    seconds = args.seconds
    rounds = args.rounds or (2 if args.quick else 5)
    sizes = [
        int(x) for x in (args.sizes or ("10000" if args.quick else "10000,1000000")).split(",")
    ]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    settings = Settings(seconds=seconds, rounds=rounds, segments=max(1, int(seconds)), warmup=1.0)
    command = "python bench/run.py" + "".join(f" {a}" for a in sys.argv[1:])
    started, load_start = time.monotonic(), os.getloadavg()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks

    DATA.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    ensure_tools()
    tools_python = ensure_tools_venv(args.profile)
    tag = f"{os.getpid()}"
    procs = Processes()
    results: dict[str, Any] = {"datasets": [], "statements": [], "skipped": []}
    try:
        log("GetRun statement counts")
        for backend in backends:
            results["statements"].append(statement_counts(backend, tag))
            log(
                f"  {backend}: "
                + ", ".join(
                    f"{n} tasks: {v['statements']}"
                    for n, v in results["statements"][-1]["runs"].items()
                )
            )
        floors = {mode: start_floor(procs, mode) for mode in ("sync", "aio")}
        order = [(b, n) for n in sizes for b in backends]
        for backend, runs in order:
            if (time.monotonic() - started) / 60 > args.max_minutes:
                results["skipped"].append(f"{backend} {runs}: over --max-minutes")
                log(f"skipping {backend} {runs}: over {args.max_minutes} minutes")
                continue
            db = create_database(backend, runs, tag)
            try:
                log(f"=== {db.name}")
                with_workers = backend == backends[0] and runs == sizes[0]
                results["datasets"].append(
                    bench_database(db, procs, tools_python, floors, settings, with_workers)
                )
            except Exception as error:  # report the others; say what this one could not do
                log(f"{db.name} FAILED: {error}")
                results["skipped"].append(f"{db.name}: failed: {str(error)[:500]}")
            finally:
                drop_database(db)
            partial = dict(results, meta={}, settings=asdict(settings))
            (args.out / "results.partial.json").write_text(
                json.dumps(partial, indent=1, default=str)
            )
    finally:
        procs.stop_all()

    versions_ours = package_versions(
        Path(sys.executable), ["spur-runs", "grpcio", "SQLAlchemy", "protobuf", "psycopg"]
    )
    versions_peer = package_versions(
        tools_python,
        ["pyspur", "fastapi", "pydantic", "SQLAlchemy", "uvicorn", "uvloop", "httptools"],
    )
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL) as conn:
            postgres = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    except Exception:
        postgres = "?"
    results["meta"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine(),
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "wall_minutes": (time.monotonic() - started) / 60,
        "versions": {"ours": versions_ours, "peer": versions_peer},
        "postgres": postgres,
        "tools": {
            "h2load": subprocess.run(["h2load", "--version"], capture_output=True, text=True)
            .stdout.split("\n")[0]
            .strip(),
            "wrk": (
                subprocess.run(["wrk", "-v"], capture_output=True, text=True)
                .stdout.split("\n")[0]
                .split(" [")[0]
            ).strip(),
        },
    }
    results["settings"] = {
        **asdict(settings),
        "quick": args.quick,
        "sizes": sizes,
        "backends": backends,
    }
    results["targets"] = targets_table(results)
    results["notes"] = [
        "gRPC GetRun of a random run: h2load sends one body file for every request, so each round is cut into "
        f"{settings.segments} equal segments, each posting the GetRunRequest of another run drawn at random "
        "(uniformly over all runs); the floor is loaded with exactly the same segments (same durations, same "
        "h2load flags), so the ratio compares like with like.",
        "HTTP GETs of a random run: wrk_paths.lua draws a run per request from 1,000 run ids drawn uniformly "
        "over all runs; spur-runs and PySpur get the same ids and the same random seed each round.",
        "Lists: spur-runs' ListRuns lists every run (child runs too); PySpur's list defaults to parent_only=True "
        "(its top-level runs only). Both answer 10 runs with their tasks and workflow version.",
        "Deep pages: the keyset token is `spur_runs.paging.encode_run_cursor('runs', start_time, _intid)` of the "
        "row at that depth in ListRuns' order (start_time DESC, _intid DESC); the bench checks that the token's "
        "page and page-number paging at the same depth return the same 10 runs before loading them.",
        "gRPC answers failures with HTTP 200: every request body is called once with a gRPC client first (it "
        "must succeed), and every h2load segment must receive at least 90% of the DATA bytes of a successful "
        "answer per request (errors carry none), else the bench stops.",
        "The floor: bench/floor_server.py, a generic handler returning empty bytes (no protobuf, no "
        "interceptors, no database) with spur-runs' default thread pool "
        f"({_DEFAULTS.max_workers}), maximum_concurrent_rpcs ({_DEFAULTS.max_concurrent_rpcs}) and "
        "channel options; its aio twin for the aio figure. spur-runs is a sync grpcio server, so its target is "
        "the sync floor.",
        "PySpur: its Runs router (pyspur.api.run_management) mounted at /run in bench/pyspur_peer.py, "
        "uvicorn with uvloop and httptools (what a full PySpur install brings), access log off, log level "
        "warning; spur-runs serves with --log-level WARNING (no access lines). Both read the same database, "
        "after `spur-runs migrate` (PySpur gets the task index too).",
        "Server RSS: VmRSS (and VmHWM, the peak) from /proc/PID/status of the `spur-runs serve` process at the "
        "end of all cases of its database.",
    ]
    if results["skipped"]:
        results["notes"].append("Skipped: " + "; ".join(results["skipped"]))
    results["commands"] = sorted(
        {
            "`python -m spur_runs migrate --database-url URL` then `python -m spur_runs seed --database-url URL --runs N`",
            "`python -m spur_runs serve --database-url URL --grpc-address 127.0.0.1:P --http-address 127.0.0.1:Q --log-level WARNING` (and `--workers 2`)",
            "`SQLITE_OVERRIDE_DATABASE_URL=URL python -m uvicorn pyspur_peer:app --app-dir bench --port R --log-level warning --no-access-log` (bench/.data/venv; PostgreSQL: POSTGRES_* variables)",
            "`python bench/floor_server.py --mode sync|aio --port F`",
            *(
                c.replace("PORT", "P")
                for c in {
                    GrpcLoad(0, GET_RUN_PATH, [Path("x")] * settings.segments, [0]).describe(),
                    HttpLoad(0, "/run/{id}/", Path("ids")).describe(),
                }
            ),
        }
    )
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (args.out / "results.partial.json").unlink(missing_ok=True)
    write_markdown(results, args.out / "RESULTS.md")
    subprocess.run(
        [
            str(tools_python),
            str(BENCH / "chart.py"),
            str(args.out / "results.json"),
            str(args.out / "throughput.png"),
        ],
        check=True,
    )
    log(
        f"wrote {args.out / 'RESULTS.md'} and {args.out / 'throughput.png'} in {(time.monotonic() - started) / 60:.1f} minutes"
    )
    for row in results["targets"]:
        log(f"{row['verdict']:<5} {row['target']} [{row['where']}]: {row['ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
