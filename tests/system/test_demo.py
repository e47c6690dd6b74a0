"""`spur-runs demo` (its own process, the installed command) beside a real
server, on SQLite and PostgreSQL: a WatchRun stream sees the seeded running
run move task by task and ends when it completes; new runs follow; SIGINT
and SIGTERM stop the demo cleanly."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest
from sqlalchemy.engine import make_url

from servers import start_server
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from tools import spur_runs, tool

pytestmark = pytest.mark.filterwarnings("ignore:Computed column:sqlalchemy.exc.SAWarning")


@pytest.fixture
def seeded(database_url: str) -> str:
    for args in (["migrate"], ["seed"]):
        result = spur_runs(*args, "--database-url", database_url)
        assert result.returncode == 0, result.stderr
    return database_url


def start_demo(url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [tool("spur-runs"), "demo", "--database-url", url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def stub(seeded: str) -> Iterator[RunServiceStub]:
    server = start_server(seeded, watch_interval=0.1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield RunServiceStub(channel)
    finally:
        server.stop(grace=1)


@pytest.mark.slow
def test_watch_run_sees_the_demo_move_the_running_run(seeded: str, stub: RunServiceStub) -> None:
    stream = stub.WatchRun(pb.WatchRunRequest(run_id="R5"), timeout=90)
    first = next(stream).run
    assert first.status == run_pb2.Run.RUNNING  # the seed's running run
    demo = start_demo(seeded, "--step-seconds", "0.3", "--runs", "2")
    try:
        messages = [first, *(message.run for message in stream)]  # ends with the run
        out, err = demo.communicate(timeout=90)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, err

    statuses = [run.status for run in messages]
    assert statuses[-1] == run_pb2.Run.COMPLETED
    assert statuses.count(run_pb2.Run.RUNNING) == len(statuses) - 1
    # Several changes, each a different picture of the tasks, as they happened.
    pictures = [(run.status, *(task.status for task in run.tasks)) for run in messages]
    assert len(messages) >= 4 and len(set(pictures)) == len(pictures)
    assert pictures[0][1:].count(run_pb2.Task.COMPLETED) == 1
    assert pictures[-1][1:] == (run_pb2.Task.COMPLETED,) * 6
    completed = [picture[1:].count(run_pb2.Task.COMPLETED) for picture in pictures]
    assert completed == sorted(completed)
    assert messages[-1].HasField("end_time") and messages[-1].outputs

    # Then it started a new run (the next free id) and took it to the end.
    assert out.splitlines() == [
        "demo: a change every 0.3 s to 1 run(s) at a time, until 2 run(s) completed; Ctrl-C stops",
        "R5: moving it (Demo: Invoice approval, RUNNING)",
        "R5: COMPLETED",
        "R21: started (Demo: Support ticket triage)",
        "R21: COMPLETED",
        "demo: stopped, 2 run(s) completed",
    ]
    new = stub.GetRun(pb.GetRunRequest(run_id="R21"), timeout=10).run
    assert new.status == run_pb2.Run.COMPLETED and new.task_count == 6
    assert all(task.status == run_pb2.Task.COMPLETED for task in new.tasks)
    assert all(task.HasField("start_time") and task.HasField("end_time") for task in new.tasks)


@pytest.mark.slow
def test_watching_a_run_the_demo_starts(seeded: str, stub: RunServiceStub) -> None:
    """A new run moves from PENDING to COMPLETED under a watcher's eyes."""
    demo = start_demo(seeded, "--step-seconds", "0.2", "--runs", "2")
    try:
        assert demo.stdout is not None
        lines = iter(demo.stdout.readline, "")
        assert "R21: started" in next(line for line in lines if "R21" in line)
        statuses = [
            message.run.status
            for message in stub.WatchRun(pb.WatchRunRequest(run_id="R21"), timeout=60)
        ]
        assert demo.wait(timeout=60) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
    assert statuses[-1] == run_pb2.Run.COMPLETED
    assert len(statuses) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_demo_cleanly(seeded: str, signum: signal.Signals) -> None:
    demo = start_demo(seeded, "--step-seconds", "0.1")  # no bound: until stopped
    try:
        assert demo.stdout is not None
        lines = iter(demo.stdout.readline, "")
        next(line for line in lines if "R21: started" in line)
        demo.send_signal(signum)
        out, err = demo.communicate(timeout=20)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, err
    assert out.splitlines()[-1].startswith("demo: stopped")
    assert "Traceback" not in err


@pytest.mark.slow
def test_seconds_bound_the_demo(seeded: str) -> None:
    began = time.monotonic()
    result = spur_runs("demo", "--database-url", seeded, "--step-seconds", "0.2", "--seconds", "1")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - began < 30
    assert result.stdout.splitlines()[-1] == "demo: stopped, 0 run(s) completed"


@pytest.mark.slow
def test_the_demo_outlasts_a_lock_longer_than_its_busy_timeout(sqlite_url: str) -> None:
    """SQLite: another process holds the write lock past the demo's 5 s busy
    timeout; the write fails, is tried again, and the demo goes on."""
    for args in (["migrate"], ["seed"]):
        assert spur_runs(*args, "--database-url", sqlite_url).returncode == 0
    demo = start_demo(sqlite_url, "--step-seconds", "0.1", "--runs", "2")
    locker = sqlite3.connect(make_url(sqlite_url).database or "", isolation_level=None)
    try:
        assert demo.stdout is not None
        lines = iter(demo.stdout.readline, "")
        next(line for line in lines if line.startswith("R5: moving it"))
        locker.execute("BEGIN EXCLUSIVE")
        time.sleep(6.5)
        locker.execute("ROLLBACK")
        out, err = demo.communicate(timeout=60)
    finally:
        locker.close()
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, err
    assert "demo: a write failed (database is locked); trying again" in err
    assert out.splitlines()[-1] == "demo: stopped, 2 run(s) completed"
