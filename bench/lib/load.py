# ruff: noqa: E501  (command lines and log lines read better unbroken)
"""Load generators and the measurement of cases in rounds.

h2load for gRPC (-t1 -c4 -m4: 16 calls in flight), wrk for HTTP (-t1 -c16:
HTTP/1.1 has one request in flight per connection). h2load posts one body
for every request, so "GetRun of a random run" is a sequence of equal
segments, each on another random run; wrk draws a random run per request
(wrk_paths.lua). Server CPU per request (user + system of the server's
processes over the window, from /proc) is recorded beside req/s: on a shared
machine it is the figure that moves least when other work runs.
"""

from __future__ import annotations

import re
import statistics
import struct
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .common import (
    FLOOR_PATH,
    GRPC_HEADERS,
    H2LOAD_CLIENTS,
    H2LOAD_STREAMS,
    LIB,
    WRK_CONNECTIONS,
    log,
)
from .procs import switches_between, tree_cpu, tree_switches


@dataclass
class Sample:
    rps: float
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_us: float = 0.0  # server CPU per request
    switches: float = 0.0  # the server's context switches per request


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


@dataclass
class GrpcLoad:
    """h2load posting length-prefixed protobuf bodies, one segment per body."""

    port: int
    path: str
    bodies: list[Path]  # one segment each, in turn
    min_data: list[int]  # smallest DATA bytes per answer of each body (gRPC errors have none)

    counted: bool = False  # set once a case fell back to counting
    # Calls in flight: h2load's -c and -m. Fewer for a case the server itself
    # runs a few of at once (deep page-number pages: half its RPC threads).
    clients: int = H2LOAD_CLIENTS
    streams: int = H2LOAD_STREAMS
    # More request headers than gRPC's own (deadline_load.py: grpc-timeout).
    headers: tuple[str, ...] = ()

    @property
    def SLOW_CALLS(self) -> int:  # noqa: N802 - was a constant; same meaning
        """A case so slow that a timed segment completes fewer calls than
        this is measured by count instead: this many calls (two waves of
        those in flight), however long they take."""
        return 2 * self.clients * self.streams

    def _h2load(
        self, n: int, body: Path, min_data: int, work: Path, limit: list[str]
    ) -> tuple[int, float, list[float]]:
        """One h2load run: (calls done, seconds, latencies in ms)."""
        log_file = work / f"h2load-{n}.log"
        command = [
            "h2load", "-t", "1", "-c", str(self.clients), "-m", str(self.streams),
            *limit, *GRPC_HEADERS, *(a for h in self.headers for a in ("-H", h)), "-d", str(body),
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
            percentile(latencies, 50),
            percentile(latencies, 99),
        )

    def describe(self) -> str:
        return (
            f"h2load -t1 -c{self.clients} -m{self.streams} -D <segment> -H 'content-type: application/grpc' "
            f"-H 'te: trailers' {''.join(f'-H {h!r} ' for h in self.headers)}-d <body> http://127.0.0.1:PORT{self.path}"
            + (f"  ({len(self.bodies)} segments, one body each)" if len(self.bodies) > 1 else "")
            + (
                f"  (too slow for a {self.clients}x{self.streams} timed window: -n {self.SLOW_CALLS} per round instead of -D)"
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
            "--timeout", "60s", "-s", str(LIB / "wrk_paths.lua"), f"http://127.0.0.1:{self.port}",
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
            f"wrk -t1 -c{WRK_CONNECTIONS} -d <seconds>s --timeout 60s -s bench/lib/wrk_paths.lua "
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
        before, switched = tree_cpu(pid), tree_switches(pid)
        sample = self.load.run(seconds, work)
        sample.cpu_us = (tree_cpu(pid) - before) / sample.requests * 1e6
        sample.switches = switches_between(switched, tree_switches(pid)) / sample.requests
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
            "switches": med("switches"),
            "requests": sum(x.requests for x in s),
            "rounds": [asdict(x) for x in s],
        }


def per_round_ratio(a: Case, b: Case, attr: str = "rps") -> float:
    """Median over rounds of a/b (each round measured a and b back to back)."""
    return statistics.median(
        getattr(x, attr) / getattr(y, attr) for x, y in zip(a.samples, b.samples, strict=True)
    )


def floor_load(port: int, work: Path, segments: int) -> GrpcLoad:
    """The floor's load (lib/floor_server.py): an empty request in every
    segment, each answered by an empty message (a 5-byte frame)."""
    empty = work / "empty.grpc"
    empty.write_bytes(struct.pack(">?I", False, 0))
    return GrpcLoad(port, FLOOR_PATH, [empty] * segments, [5] * segments)


def grpc_body(work: Path, name: str, message: Any) -> Path:
    raw = message.SerializeToString()
    path = work / f"{name}.grpc"
    path.write_bytes(struct.pack(">?I", False, len(raw)) + raw)
    return path


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
                f"p50 {sample.p50_ms:7.2f} ms  p99 {sample.p99_ms:7.2f} ms  {sample.cpu_us:7.0f} us CPU/req  "
                f"{sample.switches:5.1f} switches/req"
            )
