"""Processes the bench starts, and what /proc says about them: CPU, memory, children."""

from __future__ import annotations

import ctypes
import http.client
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import grpc

from .common import LOGS, log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        self,
        name: str,
        command: list[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
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
            cwd=cwd,
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


def tree_switches(pid: int) -> dict[str, int]:
    """Context switches (voluntary and not) of each live thread of a process
    tree, by /proc path: a thread hands the interpreter lock over, or waits
    for it, with one. See switches_between."""
    counts: dict[str, int] = {}
    for p in descendants(pid):
        for status in Path(f"/proc/{p}/task").glob("*/status"):
            try:
                total = 0
                for line in status.read_text().splitlines():
                    if "ctxt_switches:" in line:
                        total += int(line.rpartition(":")[2])
                counts[str(status)] = total
            except (OSError, ValueError):
                pass  # the thread ended meanwhile
    return counts


def switches_between(before: dict[str, int], after: dict[str, int]) -> int:
    """The switches of the threads alive at `after` since `before` (a thread
    started since counts from 0). A thread that ended in between takes its
    count with it and is left out: a summed count would go down (PySpur's
    worker threads come and go), and a lower bound is the honest figure."""
    return sum(count - before.get(thread, 0) for thread, count in after.items())


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
