"""Operations against real servers: reads routed to a PostgreSQL read replica
and DeleteRun to the primary (two databases holding different rows prove
where each call went), health following the replica too, and
`spur-runs serve --workers 2` sharing one port."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest
from grpc_health.v1 import health_pb2
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from databases import PG_ADMIN_URL, new_postgres_database
from factories import add_run, add_workflow, all_done
from metrics import method, scrape, value
from servers import free_port, serve_command, start_server, wait_health, wait_until
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.store.db import Database
from spur_runs.store.models import Run


@pytest.fixture
def replica_url(postgres_url: str) -> Iterator[str]:
    """A second empty PostgreSQL database, standing in for a read replica
    (a real standby would copy the primary; here it holds other rows, so
    that every answer shows which database gave it)."""
    with new_postgres_database() as url:
        yield url


def _fill(url: str, marker: str, runs: int) -> list[str]:
    from spur_runs.store.migrate import migrate

    migrate(url)
    db = Database.from_url(url, pool_size=1)
    with db.write() as s:
        workflow = add_workflow(s, name=marker)
        ids = [
            add_run(s, workflow, tasks=all_done(), initial_inputs={"input_node": {"db": marker}})
            for _ in range(runs)
        ]
    db.dispose()
    return ids


def _count(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as connection:
        found = int(connection.execute(select(func.count()).select_from(Run)).scalar_one())
    engine.dispose()
    return found


def _set_connections(url: str, allowed: bool) -> None:
    name = make_url(url).database
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}'))
        if not allowed:
            c.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
    admin.dispose()


@pytest.mark.slow
def test_reads_go_to_the_replica_and_deletes_to_the_primary(
    postgres_url: str, replica_url: str
) -> None:
    primary_ids = _fill(postgres_url, "primary", runs=3)  # R1 R2 R3
    replica_ids = _fill(replica_url, "replica", runs=1)  # R1, other content
    assert primary_ids[0] == replica_ids[0] == "R1"
    server = start_server(postgres_url, read_database_url=replica_url, health_interval=0.2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            # Every read RPC answers from the replica.
            assert [r.id for r in stub.ListRuns(pb.ListRunsRequest()).runs] == ["R1"]
            run = stub.GetRun(pb.GetRunRequest(run_id="R1")).run
            assert run.initial_inputs["input_node"]["db"] == "replica"
            assert len(stub.GetRunTasks(pb.GetRunTasksRequest(run_id="R1")).tasks) == 6
            stub.GetChildRuns(pb.GetChildRunsRequest(run_id="R1"))
            with pytest.raises(grpc.RpcError) as raised:
                stub.GetRun(pb.GetRunRequest(run_id="R2"))  # only on the primary
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND

            # DeleteRun goes to the primary: R3 exists only there.
            stub.DeleteRun(pb.DeleteRunRequest(run_id="R3"))
            assert _count(postgres_url) == 2 and _count(replica_url) == 1
            # Deleting R1 on the primary; the "replica" never gets the change
            # here, as a lagging real one would not have it yet.
            stub.DeleteRun(pb.DeleteRunRequest(run_id="R1"))
            assert _count(postgres_url) == 1
            assert stub.GetRun(pb.GetRunRequest(run_id="R1")).run.id == "R1"

            assert value(scrape_local(server), "spur_runs_db_pool_size", database="replica") > 0

            # Health covers the replica: reads cannot be served without it.
            wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
            _set_connections(replica_url, allowed=False)
            try:
                wait_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING)
                with pytest.raises(grpc.RpcError) as raised:
                    stub.ListRuns(pb.ListRunsRequest(), timeout=10)
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            finally:
                _set_connections(replica_url, allowed=True)
            wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
            assert [r.id for r in stub.ListRuns(pb.ListRunsRequest()).runs] == ["R1"]
    finally:
        server.stop(grace=1)


def scrape_local(server: object) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    body, _ = server.metrics.exposition()  # type: ignore[attr-defined]
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def _serving_pids(log: Path) -> set[int]:
    """The processes whose JSON log says they serve gRPC (a line still being
    written is skipped)."""
    pids = set()
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("message", "").startswith("serving gRPC"):
            pids.add(record["pid"])
    return pids


@pytest.mark.slow
@pytest.mark.exclusive  # three processes start within wait_health's 15 s
def test_workers_share_the_port_and_their_metrics(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    (run_id,) = _fill(url, "demo", runs=1)
    grpc_port, http_port = free_port(), free_port()
    log_file = (tmp_path / "stderr").open("w+")
    calls = 24
    with serve_command(
        ["--database-url", url, "--workers", "2",
         "--grpc-address", f"127.0.0.1:{grpc_port}", "--http-address", f"127.0.0.1:{http_port}",
         "--log-format", "json"],
        log_file,
    ):  # fmt: skip
        for attempt in range(calls):
            # A channel of its own, hence a connection of its own, that the
            # kernel hands to either worker.
            options = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=options) as channel:
                if attempt == 0:
                    wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
                    # Health answers once one worker listens; the calls must
                    # find both (the kernel spreads connections over the
                    # listeners there are).
                    wait_until(
                        lambda: len(_serving_pids(tmp_path / "stderr")) == 2,
                        "both workers serving",
                        timeout=60,
                    )
                assert (
                    RunServiceStub(channel).GetRun(pb.GetRunRequest(run_id=run_id)).run.id == run_id
                )
        # Whichever worker answers the scrape, it counts every worker's calls.
        for _ in range(6):
            samples = scrape(http_port)
            assert (
                value(samples, "grpc_server_handled_total", **method("GetRun", grpc_code="OK"))
                == calls
            )
            # Two pools of 16, added up.
            assert value(samples, "spur_runs_db_pool_size", database="primary") == 32
    log_file.seek(0)
    lines = [json.loads(line) for line in log_file.read().splitlines() if line.startswith("{")]
    served_by = {
        line["pid"]
        for line in lines
        if line["logger"] == "spur_runs.access" and line["method"].endswith("/GetRun")
    }
    assert len(served_by) == 2, f"calls served by {served_by}, not by two workers"
    assert any("all workers drained and exited" in line["message"] for line in lines)


@pytest.mark.slow
@pytest.mark.exclusive  # three processes start within wait_until's bound
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM])
def test_workers_drain_when_their_process_group_is_signalled(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """A closing terminal or SSH session (SIGHUP), Ctrl-C (SIGINT) and
    systemd's stop (SIGTERM to every process of the unit's cgroup) signal
    parent and workers alike. SIGHUP used to kill them all at once (exit -1,
    no drain, no log line); SIGTERM made each worker exit at once (exit 1,
    every call in flight cut), the parent's forwarded SIGTERM being its
    second. Now the workers ignore SIGINT and SIGHUP, the parent's order
    comes through a pipe, not as a signal, they drain once, and the parent
    exits 0."""
    process, log, _, grpc_port = _two_workers(tmp_path, start_new_session=True)
    workers: list[int] = []
    locker = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    try:
        wait_until(lambda: len(_serving_pids(log)) == 2, "both workers serving", timeout=60)
        workers = sorted(_serving_pids(log))
        (run_id,) = locker.execute("SELECT id FROM runs").fetchone()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            # A delete in flight during the drain: it waits for SQLite's
            # write lock, which is let go once the workers drain.
            locker.execute("BEGIN IMMEDIATE")
            held = RunServiceStub(channel).DeleteRun.future(
                pb.DeleteRunRequest(run_id=run_id), timeout=30
            )
            time.sleep(1.0)  # (the delete now waits for the lock, in a worker)
            os.killpg(process.pid, signum)
            wait_until(lambda: "draining" in log.read_text(), "the drain begun", timeout=10)
            time.sleep(1.0)
            locker.execute("ROLLBACK")
            held.result(timeout=30)  # drained: answered, not cut
        code = process.wait(timeout=30)
        text = log.read_text()
        assert code == 0, text
        assert "all workers drained and exited" in text, text
        assert "during the drain: exiting now" not in text, text
    finally:
        locker.close()
        if process.poll() is None:
            process.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.exclusive  # three processes start within wait_until's bound
def test_a_workers_own_sigterm_after_its_parents_order_still_drains(tmp_path: Path) -> None:
    """systemd's stop sends SIGTERM to parent and workers at once; which a
    worker hears first, its own signal or the parent's order through the
    pipe, is a race (a busy worker's main thread waits for the interpreter
    lock). Order first, then its own SIGTERM: the worker took the signal
    for a second, impatient one and exited 1 at once, cutting the calls in
    flight; one stop is one stop, in either order."""
    process, log, _, grpc_port = _two_workers(tmp_path)
    workers: list[int] = []
    locker = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    try:
        wait_until(lambda: len(_serving_pids(log)) == 2, "both workers serving", timeout=60)
        workers = sorted(_serving_pids(log))
        (run_id,) = locker.execute("SELECT id FROM runs").fetchone()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            locker.execute("BEGIN IMMEDIATE")
            held = RunServiceStub(channel).DeleteRun.future(
                pb.DeleteRunRequest(run_id=run_id), timeout=30
            )
            time.sleep(1.0)  # (the delete now waits for the lock, in a worker)
            process.send_signal(signal.SIGTERM)  # the parent's alone: its order goes first
            wait_until(
                lambda: log.read_text().count("stopped by the parent: draining") == 2,
                "both workers ordered to drain",
                timeout=10,
            )
            for pid in workers:  # then the cgroup's SIGTERM reaches them
                if _alive(pid):
                    os.kill(pid, signal.SIGTERM)
            time.sleep(1.0)
            locker.execute("ROLLBACK")
            held.result(timeout=30)  # drained: answered, not cut
        code = process.wait(timeout=30)
        text = log.read_text()
        assert code == 0, text
        assert "during the drain: exiting now" not in text, text
        assert "all workers drained and exited" in text, text
    finally:
        locker.close()
        if process.poll() is None:
            process.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


class _Workers(NamedTuple):
    process: subprocess.Popen[bytes]
    log: Path  # its stderr: JSON lines
    command: list[str]
    grpc_port: int


def _two_workers(tmp_path: Path, **popen: Any) -> _Workers:
    """`serve --workers 2` started on a demo database."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    _fill(url, "demo", runs=1)
    log = tmp_path / "stderr"
    grpc_port = free_port()
    command = [sys.executable, "-m", "spur_runs", "serve", "--database-url", url,
               "--workers", "2", "--grpc-address", f"127.0.0.1:{grpc_port}",
               "--log-format", "json"]  # fmt: skip
    with log.open("w") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, **popen)
    return _Workers(process, log, command, grpc_port)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie left for init to reap does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.exclusive  # three processes start within wait_until's bound
def test_workers_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL forwards nothing: the workers must notice their parent gone
    and stop, leaving the port to the parent a supervisor restarts."""
    process, log, command, grpc_port = _two_workers(tmp_path)
    try:
        wait_until(lambda: len(_serving_pids(log)) == 2, "both workers serving", timeout=60)
        workers = _serving_pids(log)
        process.kill()
        process.wait(timeout=10)
        wait_until(lambda: not any(_alive(pid) for pid in workers), "workers gone", timeout=30)
        with (tmp_path / "again").open("w") as err:
            again = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                wait_health(channel, health_pb2.HealthCheckResponse.SERVING, timeout=60)
            assert again.poll() is None
        finally:
            again.send_signal(signal.SIGTERM)
            assert again.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        for pid in _serving_pids(log):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("workers", "taken_flag"),
    [("1", "--grpc-address"), ("2", "--grpc-address"), ("1", "--health-address")],
)
def test_a_port_in_use_stops_start_up(tmp_path: Path, workers: str, taken_flag: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        addresses = {"--grpc-address": "127.0.0.1:0", taken_flag: f"127.0.0.1:{port}"}
        if workers != "1":  # workers need a fixed port
            addresses["--grpc-address"] = f"127.0.0.1:{port}"
        result = subprocess.run(
            [sys.executable, "-m", "spur_runs", "serve", "--workers", workers,
             "--database-url", f"sqlite:///{tmp_path / 'x.db'}",
             *(part for item in addresses.items() for part in item)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], result.stderr


@pytest.mark.slow
def test_ctrl_c_while_the_workers_start_is_one_clean_stop(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the process group) while `serve --workers 2` was
    still starting its workers raised KeyboardInterrupt in each worker that
    was still importing: a traceback from each, and exit 1. A SIGINT sent as
    soon as the first worker process exists must give one clean stop: exit
    0 (drained), no traceback, no worker left on the port. (Before that, the
    parent's own imports are CPython's start-up, as for any program.)"""
    for attempt in range(3):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        process, log, _, port = _two_workers(folder, start_new_session=True)
        wait_until(partial(_spawned_workers, process.pid), "a worker spawned", 60)
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(timeout=60)
        text = log.read_text()
        assert "Traceback" not in text and code == 0, (code, text[-3000:])
        # Its workers are gone with it: the port is free again.
        wait_until(partial(_port_free, port), "the port free", timeout=30)


def _spawned_workers(parent: int) -> bool:
    """Whether a worker process of `parent` exists (multiprocessing's spawn)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == parent and b"spawn_main" in command:
            return True
    return False


def _port_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
