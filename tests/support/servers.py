"""A real server: in this process on a loopback port (`start_server`), or
the `spur-runs` command on a free port, waited for through gRPC health."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from spur_runs.config import Config
from spur_runs.runtime.server import RunsServer, create_server


@contextmanager
def serve_command(
    args: Sequence[str],
    log: IO[str],
    env: Mapping[str, str] | None = None,
    inherit: bool = True,
) -> Iterator[subprocess.Popen[bytes]]:
    """`spur-runs serve ARGS` as a child process writing its log to `log`,
    in this environment with `env` added (or in `env` alone: `inherit`).
    A block that ends normally ends with SIGTERM and a clean exit (0) within
    30 s; on any failure the process is killed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "spur_runs", "serve", *args],
        env={**(os.environ if inherit else {}), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        yield process
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()


def start_server(database_url: str, **config: object) -> RunsServer:
    config = {"grpc_address": "127.0.0.1:0", **config}
    server, _ = create_server(Config(database_url=database_url, **config))  # type: ignore[arg-type]
    server.start()
    return server


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out as a connection's local port."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port for a server started by its number a moment later. Below the
    kernel's ephemeral range: a port 0 picked there could be taken meanwhile
    as the local port of one of the suite's many outgoing connections, and
    the server then refused to start (seen in CI)."""
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(10_000, low) if low > 10_000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port found")


def wait_health(channel: grpc.Channel, want: int, timeout: float = 15) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
        except grpc.RpcError:
            status = None
        if status == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"health stayed {status}, wanted {want}")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout}s: {what}")
