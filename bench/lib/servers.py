"""The servers the bench loads: `spur-runs serve` from this tree or from a
baseline git ref, the PySpur peer, and the empty-RPC floor."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub

from .common import DATA, FLOOR_PATH, LIB, ROOT, log
from .data import Database
from .procs import Processes, descendants, free_port, http_get, wait_until


def baseline_tree(ref: str) -> Path:
    """A detached worktree of `ref` under bench/.data (gitignored), made once
    and reused: the A/B's "before" side. Its server runs from the same venv
    as ours, with PYTHONPATH=<tree>/server:<tree>/generated (baseline_env)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    tree = DATA / f"baseline-{commit[:12]}"
    if not (tree / ".git").exists():
        log(f"git worktree add --detach {tree} {ref}")
        DATA.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit],
            check=True, capture_output=True,
        )  # fmt: skip
    head = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if head != commit:
        raise RuntimeError(f"{tree} is at {head}, not {ref} ({commit}): remove it and run again")
    found = subprocess.run(
        [sys.executable, "-c", "import spur_runs; print(spur_runs.__file__)"],
        capture_output=True, text=True, check=True, env=baseline_env(tree),
    ).stdout.strip()  # fmt: skip
    if not found.startswith(str(tree)):
        raise RuntimeError(f"PYTHONPATH={tree}/server imports spur_runs from {found}")
    return tree


def baseline_env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{tree}/server:{tree}/generated"}


class Servers:
    """The servers of one database: ours, the baseline's, the PySpur peer."""

    def __init__(self, procs: Processes, tools_python: Path, db: Database) -> None:
        self.procs, self.python, self.db = procs, tools_python, db

    def start_ours(
        self,
        workers: int = 1,
        name: str = "spur-runs",
        tree: Path | None = None,
        flags: Sequence[str] = (),
        prefix: Sequence[str] = (),
    ) -> tuple[subprocess.Popen[bytes], int, int]:
        """`python -m spur_runs serve` (gRPC + HTTP), with `flags` besides; from
        `tree` (a baseline worktree) instead of this one when given; run by
        `prefix` (such as `taskset -c 0`) when given.
        (process, gRPC port, HTTP port)"""
        grpc_port, http_port = free_port(), free_port()
        command = [
            *prefix, sys.executable, "-m", "spur_runs", "serve", "--database-url", self.db.url,
            "--grpc-address", f"127.0.0.1:{grpc_port}", "--http-address", f"127.0.0.1:{http_port}",
            "--log-level", "WARNING", *flags,
        ]  # fmt: skip
        if workers > 1:
            command += ["--workers", str(workers)]
        env = {"PYTHONPATH": baseline_env(tree)["PYTHONPATH"]} if tree else None
        process = self.procs.start(f"{name}-{self.db.slug}", command, env=env, cwd=tree)

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
            str(self.python), "-m", "uvicorn", "pyspur_peer:app", "--app-dir", str(LIB),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        process = self.procs.start(f"pyspur-{self.db.slug}", command, env=self.db.peer_env)
        wait_until(
            lambda: http_get(port, "/run/?page=1&page_size=1", timeout=5)[0] == 200,
            process,
            "PySpur",
        )
        return process, port


def start_floor(
    procs: Processes, mode: str, prefix: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], int]:
    """lib/floor_server.py: grpcio alone, an empty unary RPC (sync or aio),
    run by `prefix` (such as `taskset -c 0`) when given."""
    port = free_port()
    process = procs.start(
        f"floor-{mode}",
        [*prefix, sys.executable, str(LIB / "floor_server.py"), "--mode", mode,
         "--port", str(port)],
    )  # fmt: skip

    def ready() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(FLOOR_PATH)
            return call(b"", timeout=2) == b""

    wait_until(ready, process, f"floor ({mode})")
    return process, port
