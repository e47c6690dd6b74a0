"""WatchRun against a real server on a loopback port, on SQLite and
PostgreSQL, with the changes written by ANOTHER PROCESS (watch_writer.py,
plain SQL, as PySpur's engine writes): each change arrives in order, the
stream ends at the terminal status, a deleted run is NOT_FOUND, cancelling
unregisters, watchers hold no thread, the poller's statements do not grow
with the watchers, tokens apply, the server's stop ends streams, and HTTP
serves the stream as newline-delimited JSON and as server-sent events."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from sqlalchemy import text

from factories import add_run, add_workflow, all_done
from half_open import NonReaders, SharedConnection
from locks import runs_locked
from servers import start_server
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database
from spur_runs.store.models import RunStatus, TaskStatus
from tools import ROOT

WRITER = ROOT / "tests" / "support" / "watch_writer.py"
INTERVAL = 0.05
WATCH_RUN = "/spur.runs.v1.RunService/WatchRun"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"


def wait_for(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def pending_run(db: Database) -> str:
    """A run the engine has just created: PENDING, one PENDING task."""
    with db.write() as s:
        return add_run(
            s,
            add_workflow(s, name=f"engine-{uuid.uuid4().hex[:8]}"),
            status=RunStatus.PENDING,
            tasks=[("input_node", TaskStatus.PENDING)],
        )


class Writer:
    """watch_writer.py in its own process: one committed step per call."""

    def __init__(self, url: str, run_id: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WRITER), url, run_id],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def step(self, name: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(name + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == f"done {name}"

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=10) == 0


@pytest.fixture
def watching(migrated_url: str) -> Iterator[RunsServer]:
    server = start_server(migrated_url, watch_interval=INTERVAL, http_address="127.0.0.1:0")
    yield server
    server.stop(grace=1)


# Where the database makes no difference (HTTP framing, tokens, limits,
# shutdown): SQLite only.
@pytest.fixture
def lite_url(sqlite_url: str) -> str:
    from spur_runs.store.migrate import migrate

    migrate(sqlite_url)
    return sqlite_url


@pytest.fixture
def lite_db(lite_url: str) -> Iterator[Database]:
    database = Database.from_url(lite_url, pool_size=2)
    yield database
    database.dispose()


@pytest.fixture
def lite_server(lite_url: str) -> Iterator[RunsServer]:
    server = start_server(lite_url, watch_interval=INTERVAL, http_address="127.0.0.1:0")
    yield server
    server.stop(grace=1)


@pytest.fixture
def stub(watching: RunsServer) -> Iterator[RunServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{watching.port}") as channel:
        yield RunServiceStub(channel)


def watches_ended(server: RunsServer, code: str) -> float | None:
    """WatchRun calls the server's metrics count as ended with `code`."""
    return server.metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {"grpc_type": "server_stream", "grpc_service": "spur.runs.v1.RunService",
         "grpc_method": "WatchRun", "grpc_code": code},
    )  # fmt: skip


def tasks_of(run: run_pb2.Run) -> list[tuple[str, str]]:
    return [(t.node_id, run_pb2.Task.Status.Name(t.status)) for t in run.tasks]


# What each step of the writer shows: (run status, [(node, task status)]).
_DONE = ("input_node", "COMPLETED")
EXPECTED = [
    ("PENDING", [("input_node", "PENDING")]),
    ("RUNNING", [("input_node", "PENDING")]),
    ("RUNNING", [("input_node", "RUNNING")]),
    ("RUNNING", [_DONE]),
    ("RUNNING", [_DONE, ("llm", "RUNNING")]),
    ("RUNNING", [_DONE, ("llm", "FAILED")]),
    ("FAILED", [_DONE, ("llm", "FAILED")]),
]


@pytest.mark.slow
def test_each_change_of_another_process_arrives_in_order_and_the_stream_ends_at_terminal(
    migrated_url: str, db: Database, watching: RunsServer, stub: RunServiceStub
) -> None:
    run_id = pending_run(db)
    writer = Writer(migrated_url, run_id)
    received: list[run_pb2.Run] = []
    stream = stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=30)
    for message in stream:
        received.append(message.run)
        step = len(received)
        if step < len(EXPECTED):
            writer.step(str(step))  # the next change, once this one is seen
    writer.close()
    assert stream.code() == grpc.StatusCode.OK
    assert [(run_pb2.Run.Status.Name(r.status), tasks_of(r)) for r in received] == EXPECTED
    first_task = received[3].tasks[0]
    assert first_task.outputs.struct_value["answer"] == "forty-two"
    assert first_task.end_time.ToJsonString() == "2026-11-02T09:00:02Z"
    assert received[5].tasks[1].error == "model timed out"
    assert received[6].end_time.ToJsonString() == "2026-11-02T09:00:05Z"
    assert received[6].percentage_complete == 50.0 and received[6].task_count == 2
    assert all(r.id == run_id for r in received)
    wait_for(lambda: watching.watch_hub.watcher_count == 0)


def test_first_message_is_what_get_run_returns_and_a_terminal_run_ends_at_once(
    db: Database, stub: RunServiceStub
) -> None:
    with db.write() as s:
        run_id = add_run(s, add_workflow(s), tasks=all_done(), outputs={"answer": 42})
    stream = stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=10)
    messages = list(stream)
    assert stream.code() == grpc.StatusCode.OK
    got = stub.GetRun(pb.GetRunRequest(run_id=run_id)).run
    assert len(messages) == 1
    watched = messages[0].run
    watched.ClearField("duration")
    got.ClearField("duration")
    assert watched == got and watched.status == run_pb2.Run.COMPLETED


def test_bad_and_unknown_runs_fail_before_the_stream_opens(stub: RunServiceStub) -> None:
    cases = [
        ("R999999", grpc.StatusCode.NOT_FOUND),
        ("X1", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for run_id, code in cases:
        stream = stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=10)
        with pytest.raises(grpc.RpcError) as raised:
            next(stream)
        assert raised.value.code() == code, run_id
    status = rpc_status.from_call(raised.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad) and bad.field_violations[0].field == "run_id"


@pytest.mark.slow
def test_a_deleted_run_is_not_found_and_the_stream_ends(
    migrated_url: str, db: Database, watching: RunsServer, stub: RunServiceStub
) -> None:
    run_id = pending_run(db)
    stream = stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=30)
    assert next(stream).run.id == run_id
    writer = Writer(migrated_url, run_id)
    writer.step("delete")
    writer.close()
    with pytest.raises(grpc.RpcError) as raised:
        next(stream)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert run_id in (raised.value.details() or "")
    wait_for(lambda: watching.watch_hub.watcher_count == 0)
    assert watches_ended(watching, "NotFound") == 1


def test_a_deleted_run_whose_id_a_new_run_got_is_not_found(
    db: Database, watching: RunsServer, stub: RunServiceStub
) -> None:
    """On SQLite a deleted newest run's id goes to the next run PySpur starts
    (no AUTOINCREMENT). Between two polls: the watch went on with the new
    run's data under the old id (a hostile review, 2026-12-03). It ends
    NOT_FOUND, as for any deleted run. Written as that reuse, in one
    transaction, on both databases."""
    run_id = pending_run(db)
    stream = stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=30)
    assert next(stream).run.status == run_pb2.Run.PENDING
    with db.write() as s:
        old = s.execute(
            text("SELECT _intid, workflow_id, workflow_version_id FROM runs WHERE id = :r"),
            {"r": run_id},
        ).one()
        s.execute(text("DELETE FROM tasks WHERE run_id = :r"), {"r": run_id})
        s.execute(text("DELETE FROM runs WHERE id = :r"), {"r": run_id})
        version = (old.workflow_id, old.workflow_version_id)
        add_run(s, version, status=RunStatus.RUNNING, start_time=datetime(2026, 11, 3))
        s.execute(
            text("UPDATE runs SET _intid = :i WHERE _intid = (SELECT max(_intid) FROM runs)"),
            {"i": old._intid},
        )
    with pytest.raises(grpc.RpcError) as raised:
        next(stream)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND, raised.value.details()
    again = stub.GetRun(pb.GetRunRequest(run_id=run_id)).run
    assert again.status == run_pb2.Run.RUNNING  # the id is the new run's now
    wait_for(lambda: watching.watch_hub.watcher_count == 0)


def test_a_run_that_cannot_be_served_fails_its_watchers_only(
    lite_url: str, lite_db: Database, lite_server: RunsServer
) -> None:
    """A change that makes one watched run unservable (DATA_LOSS: a number no
    double holds) ends that run's watchers with it; another run's change in
    the same poll still arrives (it was lost, at every poll, behind it)."""
    bad, good = pending_run(lite_db), pending_run(lite_db)
    with grpc.insecure_channel(f"127.0.0.1:{lite_server.port}") as channel:
        stub = RunServiceStub(channel)
        streams = {r: stub.WatchRun(pb.WatchRunRequest(run_id=r), timeout=20) for r in (bad, good)}
        for run_id, stream in streams.items():
            assert next(stream).run.id == run_id
        with lite_db.write() as s:
            s.execute(
                text("UPDATE runs SET outputs = :o WHERE id = :r"),
                {"o": json.dumps({"n": 10**400}), "r": bad},
            )
            s.execute(text("UPDATE runs SET status = 'COMPLETED' WHERE id = :r"), {"r": good})
        assert next(streams[good]).run.status == run_pb2.Run.Status.COMPLETED
        with pytest.raises(grpc.RpcError) as raised:
            next(streams[bad])
        assert raised.value.code() == grpc.StatusCode.DATA_LOSS


def _one_run_spoils_the_poll(server: RunsServer, db: Database, spoil: str) -> grpc.RpcError:
    """Watch two runs; in one transaction, `spoil` one (SQL, :r its id) and
    complete the other. The other's watcher must see it end; returns the
    spoiled one's error."""
    bad, good = pending_run(db), pending_run(db)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = RunServiceStub(channel)
        streams = {r: stub.WatchRun(pb.WatchRunRequest(run_id=r), timeout=20) for r in (bad, good)}
        for run_id, stream in streams.items():
            assert next(stream).run.id == run_id
        with db.write() as s:
            s.execute(text(spoil), {"r": bad})
            s.execute(text("UPDATE runs SET status = 'COMPLETED' WHERE id = :r"), {"r": good})
        assert next(streams[good]).run.status == run_pb2.Run.Status.COMPLETED
        with pytest.raises(grpc.RpcError) as raised:
            next(streams[bad])
    wait_for(lambda: server.watch_hub.watcher_count == 0)
    return raised.value


def test_a_run_too_large_to_read_fails_its_watchers_only(migrated_url: str) -> None:
    """A watched run whose stored values grew past what any response may
    carry (4 x --max-response-bytes) made every poll fail: every watch of
    every run went silent until its deadline, the poller logging "retrying"
    (a review, 2026-12-04). Now that run's watchers end RESOURCE_EXHAUSTED,
    as GetRun answers, and the others are served."""
    db = Database.from_url(migrated_url, pool_size=2)
    server = start_server(migrated_url, watch_interval=INTERVAL, max_response_bytes=65536)
    try:
        error = _one_run_spoils_the_poll(
            server,
            db,
            'UPDATE tasks SET outputs = \'{"text": "' + "x" * 300_000 + "\"}' WHERE run_id = :r",
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    finally:
        server.stop(grace=1)
        db.dispose()


@pytest.mark.parametrize(
    "spoil",
    [
        "UPDATE runs SET outputs = '{not json' WHERE id = :r",
        "UPDATE runs SET status = 'WEIRD' WHERE id = :r",
        "UPDATE tasks SET error = CAST(X'6162FF63' AS TEXT) WHERE run_id = :r",
    ],
)
def test_a_run_whose_values_no_longer_decode_fails_its_watchers_only(
    lite_db: Database, lite_server: RunsServer, spoil: str
) -> None:
    """The same for values SQLite's columns let another writer store and
    that no longer decode, which GetRun answers DATA_LOSS."""
    error = _one_run_spoils_the_poll(lite_server, lite_db, spoil)
    assert error.code() == grpc.StatusCode.DATA_LOSS, error.details()


def test_cancelling_unregisters_and_is_counted(
    db: Database, watching: RunsServer, stub: RunServiceStub
) -> None:
    run_ids = [pending_run(db) for _ in range(3)]
    streams = [stub.WatchRun(pb.WatchRunRequest(run_id=r), timeout=30) for r in run_ids]
    assert [next(s).run.id for s in streams] == run_ids
    wait_for(lambda: watching.watch_hub.watcher_count == 3)
    for stream in streams:
        stream.cancel()
    wait_for(lambda: watching.watch_hub.watcher_count == 0)
    labels = {"grpc_type": "server_stream", "grpc_service": "spur.runs.v1.RunService",
              "grpc_method": "WatchRun"}  # fmt: skip
    registry = watching.metrics.registry
    wait_for(
        lambda: (
            registry.get_sample_value(
                "grpc_server_handled_total", {**labels, "grpc_code": "Canceled"}
            )
            == 3
        )
    )
    assert registry.get_sample_value("grpc_server_msg_sent_total", labels) == 3
    assert registry.get_sample_value("spur_runs_watchers", {}) == 0


@pytest.mark.slow
def test_watchers_hold_no_thread_and_the_poll_does_not_grow_with_them(
    migrated_url: str, db: Database
) -> None:
    # Two threads serve RPCs; forty open watches must leave them free.
    server = start_server(migrated_url, watch_interval=INTERVAL, max_workers=2)
    try:
        with db.write() as s:
            workflow = add_workflow(s)
            run_ids = [
                add_run(s, workflow, status=RunStatus.RUNNING, tasks=[("llm", TaskStatus.RUNNING)])
                for _ in range(40)
            ]
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            streams = [stub.WatchRun(pb.WatchRunRequest(run_id=r), timeout=30) for r in run_ids]
            assert sorted(next(s).run.id for s in streams) == sorted(run_ids)
            assert stub.GetRun(pb.GetRunRequest(run_id=run_ids[0]), timeout=5).run.id
            registry = server.metrics.registry
            # Quiet runs: one statement per poll for all forty watchers.
            names = ("spur_runs_watch_polls_total", "spur_runs_watch_statements_total")
            before = [registry.get_sample_value(n, {}) or 0 for n in names]
            time.sleep(10 * INTERVAL)
            polls, statements = (
                (registry.get_sample_value(n, {}) or 0) - b
                for n, b in zip(names, before, strict=True)
            )
            # (a poll may be under way at either end of the window: +-1)
            assert polls >= 3 and statements <= polls + 1
            # All forty change at once: still a handful of statements, and
            # each watcher gets the change.
            with db.write() as s:
                s.exec_driver_sql("UPDATE tasks SET status = 'COMPLETED'")
            before_statements = registry.get_sample_value("spur_runs_watch_statements_total", {})
            before_polls = registry.get_sample_value("spur_runs_watch_polls_total", {})
            changed = [next(s).run for s in streams]
            assert all(r.tasks[0].status == run_pb2.Task.COMPLETED for r in changed)
            spent = (
                registry.get_sample_value("spur_runs_watch_statements_total", {})
                - before_statements
            )
            polled = registry.get_sample_value("spur_runs_watch_polls_total", {}) - before_polls
            # fingerprints + runs + tasks (+ versions once) for the changed poll.
            assert spent <= polled + 3, (spent, polled)
            for stream in streams:
                stream.cancel()
    finally:
        server.stop(grace=1)


def test_beyond_max_watchers_is_resource_exhausted(lite_url: str, lite_db: Database) -> None:
    server = start_server(lite_url, watch_interval=INTERVAL, max_watchers=2)
    try:
        run_ids = [pending_run(lite_db) for _ in range(3)]
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            open_ = [stub.WatchRun(pb.WatchRunRequest(run_id=r), timeout=30) for r in run_ids[:2]]
            for stream in open_:
                next(stream)
            refused = stub.WatchRun(pb.WatchRunRequest(run_id=run_ids[2]), timeout=10)
            with pytest.raises(grpc.RpcError) as raised:
                next(refused)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            open_[0].cancel()
            wait_for(lambda: server.watch_hub.watcher_count == 1)
            assert next(stub.WatchRun(pb.WatchRunRequest(run_id=run_ids[2]), timeout=10)).run.id
    finally:
        server.stop(grace=1)


def test_one_client_address_holds_at_most_its_share_of_watches(
    lite_url: str, lite_db: Database
) -> None:
    """One client could open every watch of --max-watchers, and others could
    watch no more. An HTTP watch counts for its HTTP client's address, not
    for the gateway's socket."""
    server = start_server(
        lite_url, watch_interval=INTERVAL, http_address="127.0.0.1:0", max_watchers_per_address=2
    )
    assert server.http_port is not None
    try:
        run_ids = [pending_run(lite_db) for _ in range(4)]
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            open_ = [stub.WatchRun(pb.WatchRunRequest(run_id=r), timeout=30) for r in run_ids[:2]]
            for stream in open_:
                next(stream)
            with pytest.raises(grpc.RpcError) as raised:
                next(stub.WatchRun(pb.WatchRunRequest(run_id=run_ids[2]), timeout=10))
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "client address already holds 2 open watches" in str(raised.value.details())

            def http_watch(source: str) -> http.client.HTTPResponse:
                connection = http.client.HTTPConnection(
                    "127.0.0.1", server.http_port, timeout=30, source_address=(source, 0)
                )
                connection.request("GET", f"/run/{run_ids[3]}/watch")
                return connection.getresponse()

            # The same client over HTTP: its share is spent.
            assert http_watch("127.0.0.1").status == 429
            # Another client's HTTP watch: its own share.
            other = http_watch("127.0.0.2")
            assert other.status == 200
            assert json.loads(other.readline())["result"]["run"]["id"] == run_ids[3]
            open_[0].cancel()
            wait_for(lambda: server.watch_hub.watcher_count == 2)
            assert next(stub.WatchRun(pb.WatchRunRequest(run_id=run_ids[2]), timeout=10)).run.id
            other.close()
    finally:
        server.stop(grace=1)


def test_a_message_over_the_response_limit_ends_the_watch_resource_exhausted(
    lite_url: str, lite_db: Database
) -> None:
    """grpc refused the message in its transport: the client saw grpc's
    words, and the call was logged CANCELLED (a review, 2026-12-03)."""
    server = start_server(lite_url, watch_interval=INTERVAL, max_response_bytes=65536)
    try:
        run_id = pending_run(lite_db)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stream = RunServiceStub(channel).WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=30)
            assert next(stream).run.id == run_id  # under 64 KiB
            with lite_db.write() as s:
                s.execute(
                    text("UPDATE tasks SET outputs = :o WHERE run_id = :r"),
                    {"o": json.dumps({"text": "x" * 100_000}), "r": run_id},
                )
            with pytest.raises(grpc.RpcError) as raised:
                next(stream)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert raised.value.details() == "the response is larger than 65536 bytes"
        wait_for(lambda: server.watch_hub.watcher_count == 0)
        assert watches_ended(server, "ResourceExhausted") == 1
    finally:
        server.stop(grace=1)


def test_tokens_apply_to_watch(lite_url: str, lite_db: Database, tmp_path: Path) -> None:
    readers = tmp_path / "readers"
    readers.write_text("watch-reader\n")
    server = start_server(lite_url, reader_tokens_file=str(readers), watch_interval=INTERVAL)
    try:
        run_id = pending_run(lite_db)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            for metadata in ((), (("authorization", "Bearer nope"),)):
                stream = stub.WatchRun(
                    pb.WatchRunRequest(run_id=run_id), metadata=metadata, timeout=10
                )
                with pytest.raises(grpc.RpcError) as raised:
                    next(stream)
                assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert server.watch_hub.watcher_count == 0  # refused before any watching
            allowed = stub.WatchRun(
                pb.WatchRunRequest(run_id=run_id),
                metadata=(("authorization", "Bearer watch-reader"),), timeout=10,
            )  # fmt: skip
            assert next(allowed).run.id == run_id
            allowed.cancel()
    finally:
        server.stop(grace=1)


def test_stop_ends_open_streams_with_unavailable(lite_url: str, lite_db: Database) -> None:
    server = start_server(lite_url, watch_interval=INTERVAL)
    run_id = pending_run(lite_db)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stream = RunServiceStub(channel).WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=30)
        next(stream)
        started = time.monotonic()
        server.stop(grace=10)
        assert time.monotonic() - started < 5  # not the whole grace period
        with pytest.raises(grpc.RpcError) as raised:
            next(stream)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_stop_refuses_new_calls_while_the_poller_waits_on_the_database(
    postgres_url: str,
) -> None:
    """A drain ended the watches and only then stopped gRPC from taking calls;
    ending them waited for the poller's statement, which a lock on `runs` (a
    PySpur migration) held up to the whole grace period: all that time the
    streams stayed open and new calls were taken (and waited on the lock
    too), where SIGTERM "stops accepting calls" (configuration.md)."""
    from spur_runs.store.migrate import migrate

    migrate(postgres_url)
    db = Database.from_url(postgres_url, pool_size=1)
    run_id = pending_run(db)
    db.dispose()
    server = start_server(postgres_url, watch_interval=INTERVAL)
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 60})

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        except OSError:
            return False
        return True

    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            # Its deadline is well inside the grace period: the stream must
            # end before it, at the drain, not when the poller gets free.
            stream = RunServiceStub(channel).WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=10)
            next(stream)
            with runs_locked(postgres_url) as waiting:
                wait_for(lambda: waiting() >= 1)  # the poller waits on the lock
                stopper.start()
                with pytest.raises(grpc.RpcError) as ended:
                    next(stream)
                assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
                wait_for(lambda: not listening())  # no new calls taken
                assert waiting() >= 1, "the lock was let go meanwhile"
    finally:
        if stopper.ident is None:
            server.stop(grace=1)
        stopper.join(timeout=70)


def test_a_poll_that_outlasts_stop_leaves_no_connection_open(postgres_url: str) -> None:
    """stop() no longer waits for the poller (above): a poll held up by a
    lock then ends after the server has released its database, and gave
    its connection back to the disposed pool, which kept it open for as
    long as the process lived: a session of a stopped server."""
    from spur_runs.store.migrate import migrate

    migrate(postgres_url)
    db = Database.from_url(postgres_url, pool_size=1)
    run_id = pending_run(db)
    db.dispose()
    server = start_server(postgres_url, watch_interval=INTERVAL)
    poller = server.watch_hub._thread
    assert poller is not None
    stopped = False
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stream = RunServiceStub(channel).WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=10)
            next(stream)
            with runs_locked(postgres_url) as waiting:
                wait_for(lambda: waiting() >= 1)  # the poller waits on the lock
                server.stop(grace=1)
                stopped = True
                assert poller.is_alive()  # still waiting: what this test is about
    finally:
        if not stopped:
            server.stop(grace=1)
    poller.join(timeout=10)
    assert not poller.is_alive()
    probe = Database.from_url(postgres_url, pool_size=1)
    try:
        with probe.read() as conn:
            others = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
    finally:
        probe.dispose()
    assert others == 0


# --- HTTP ---------------------------------------------------------------------------

EVENTS = "text/event-stream"


def http_get(
    server: RunsServer, path: str, **headers: str
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    assert server.http_port is not None
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    connection.request("GET", path, headers=headers)
    return connection, connection.getresponse()


def drive(url: str, run_id: str, read: Callable[[], Any]) -> list[Any]:
    """Read messages with `read` until the stream ends, moving the writer
    one step after each."""
    writer = Writer(url, run_id)
    received = []
    while (item := read()) is not None:
        received.append(item)
        if len(received) < len(EXPECTED):
            writer.step(str(len(received)))
    writer.close()
    return received


def statuses(runs: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, str]]]]:
    return [(r["status"], [(t["node_id"], t["status"]) for t in r["tasks"]]) for r in runs]


def test_http_streams_newline_delimited_json(
    lite_url: str, lite_db: Database, lite_server: RunsServer
) -> None:
    run_id = pending_run(lite_db)
    connection, response = http_get(lite_server, f"/run/{run_id}/watch")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"

    def read() -> Any:
        line = response.readline()
        return json.loads(line) if line else None

    lines = drive(lite_url, run_id, read)
    connection.close()
    assert all(set(line) == {"result"} for line in lines)
    assert statuses([line["result"]["run"] for line in lines]) == EXPECTED


def read_event(response: http.client.HTTPResponse) -> dict[str, str] | None:
    """The fields of the next server-sent event; None at the end."""
    event: dict[str, str] = {}
    while line := response.readline():
        if line == b"\n":
            return event
        name, _, value = line.decode().rstrip("\n").partition(": ")
        event[name] = value
    return None


def test_http_streams_server_sent_events(
    lite_url: str, lite_db: Database, lite_server: RunsServer
) -> None:
    run_id = pending_run(lite_db)
    connection, response = http_get(lite_server, f"/run/{run_id}/watch", Accept=EVENTS)
    assert response.status == 200
    assert response.headers["Content-Type"] == EVENTS
    events = drive(lite_url, run_id, lambda: read_event(response))
    connection.close()
    assert all(set(event) == {"data"} for event in events)
    assert statuses([json.loads(e["data"])["run"] for e in events]) == EXPECTED


def test_http_errors_before_and_after_the_first_message(
    lite_url: str, lite_db: Database, lite_server: RunsServer
) -> None:
    # Before: ordinary error replies, with their HTTP status.
    _, missing = http_get(lite_server, "/run/R424242/watch")
    assert missing.status == 404 and json.loads(missing.read())["code"] == 5
    _, bad = http_get(lite_server, "/run/nope/watch", Accept=EVENTS)
    assert bad.status == 400 and json.loads(bad.read())["details"][0]["field_violations"]
    # After: the stream's last frame.
    for accept in ("application/json", EVENTS):
        run_id = pending_run(lite_db)
        connection, response = http_get(lite_server, f"/run/{run_id}/watch", Accept=accept)
        assert response.status == 200
        if accept == EVENTS:
            assert read_event(response)
        else:
            assert json.loads(response.readline())["result"]
        writer = Writer(lite_url, run_id)
        writer.step("delete")
        writer.close()
        if accept == EVENTS:
            event = read_event(response)
            assert event is not None and event["event"] == "error"
            error = json.loads(event["data"])
            assert read_event(response) is None
        else:
            (last,) = response.read().splitlines()
            error = json.loads(last)["error"]
        assert error["code"] == 5 and run_id in error["message"]
        connection.close()


def test_http_client_going_away_cancels_the_watch(
    lite_db: Database, lite_server: RunsServer
) -> None:
    run_id = pending_run(lite_db)
    connection, response = http_get(lite_server, f"/run/{run_id}/watch")
    assert json.loads(response.readline())["result"]["run"]["id"] == run_id
    wait_for(lambda: lite_server.watch_hub.watcher_count == 1)
    connection.close()
    response.close()
    wait_for(lambda: lite_server.watch_hub.watcher_count == 0)


def test_a_client_that_reads_nothing_is_cancelled_and_holds_up_no_one(
    lite_url: str, lite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spur_runs.api import senders

    monkeypatch.setattr(senders, "SLOW_SECONDS", 0.5)
    with lite_db.write() as s:
        workflow = add_workflow(s)
        big = add_run(s, workflow, status=RunStatus.RUNNING, outputs={"text": "x" * 3_500_000})
    other = pending_run(lite_db)
    server = start_server(lite_url, watch_interval=INTERVAL)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            # Never read: the 3.5 MB first message stalls on flow control.
            stalled = stub.WatchRun(pb.WatchRunRequest(run_id=big), timeout=30)
            wait_for(lambda: server.watch_hub.watcher_count == 1)
            reader = stub.WatchRun(pb.WatchRunRequest(run_id=other), timeout=30)
            assert next(reader).run.id == other
            # Each change is another 3.5 MB message for it: the client's
            # flow-control window fills, and a send blocks.
            for n in range(1, 60):
                if server.watch_hub.watcher_count == 1:
                    break
                with lite_db.write() as s:
                    s.exec_driver_sql(f"UPDATE runs SET output_file_id = 'f{n}' WHERE id = '{big}'")
                time.sleep(2 * INTERVAL)
            wait_for(lambda: server.watch_hub.watcher_count == 1)  # the stalled one went
            with pytest.raises(grpc.RpcError) as raised:
                for _ in stalled:
                    pass
            assert raised.value.code() == grpc.StatusCode.CANCELLED
            reader.cancel()
    finally:
        server.stop(grace=1)


def test_clients_that_read_nothing_hold_up_the_others_for_a_second_not_thirty(
    lite_url: str, lite_db: Database
) -> None:
    """As many non-reading watchers as there are sender threads held every
    sender until the 30 s slow-send check, again and again: every other
    watcher's messages waited (a red-team pass: 28 s). A second now."""
    from spur_runs.api import watch

    stalled_run = pending_run(lite_db)
    other = pending_run(lite_db)
    server = start_server(lite_url, watch_interval=INTERVAL)
    request = pb.WatchRunRequest(run_id=stalled_run).SerializeToString()
    readers = NonReaders(server.port, WATCH_RUN, request, watch.SENDERS)
    try:
        wait_for(lambda: server.watch_hub.watcher_count == watch.SENDERS)
        time.sleep(0.5)  # their first sends are blocked now
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            started = time.monotonic()
            stream = RunServiceStub(channel).WatchRun(pb.WatchRunRequest(run_id=other), timeout=20)
            assert next(stream).run.id == other
            waited = time.monotonic() - started
            stream.cancel()
        assert waited < 5, waited
        # The non-readers were cancelled to free the senders (with their
        # connection); the cancelled `other` leaves a moment after its cancel.
        wait_for(lambda: server.watch_hub.watcher_count < watch.SENDERS)
    finally:
        readers.close()
        server.stop(grace=1)


def _first_message_wait(open_stream: Callable[[grpc.Channel], Iterator[Any]], port: int) -> float:
    """Seconds an honest client on a fresh channel waits for its first
    message, retrying RESOURCE_EXHAUSTED (every call slot held a moment by
    the jam's opening streams: docs/production.md) as a client would."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        started = time.monotonic()
        while True:
            stream = open_stream(channel)
            try:
                next(stream)
                break
            except grpc.RpcError as error:
                if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:  # type: ignore[attr-defined]
                    raise
                time.sleep(0.05)
        waited = time.monotonic() - started
        stream.cancel()  # type: ignore[attr-defined]
    return waited


def test_many_non_reading_streams_on_few_connections_hold_up_no_one(
    lite_url: str, lite_db: Database
) -> None:
    """500 WatchRun streams that read nothing, on 5 connections, and 100
    health watches on one: each sender's turn with one of them cost a
    second, and an honest watcher's first message waited 23 s (health's,
    checked every --health-interval, 48 s). A jam gives up the whole
    connection of the stream it finds blocked (api/senders.py)."""
    from spur_runs.api import senders, watch

    stalled_run, other = pending_run(lite_db), pending_run(lite_db)
    # (Every stream from one address: its share raised to hold the jam.)
    server = start_server(
        lite_url, watch_interval=INTERVAL, health_interval=2.0, max_watchers_per_address=1000
    )
    watch_request = pb.WatchRunRequest(run_id=stalled_run).SerializeToString()
    health_request = health_pb2.HealthCheckRequest(service="").SerializeToString()
    jam = [NonReaders(server.port, WATCH_RUN, watch_request, 100) for _ in range(5)]
    jam.append(NonReaders(server.port, HEALTH_WATCH, health_request, 100))
    try:
        # The jam at work (its streams are given up as they come, so under
        # load fewer than its 500 are ever open at once).
        wait_for(lambda: server.watch_hub.watcher_count >= 2 * watch.SENDERS)
        waited_health = _first_message_wait(
            lambda c: health_pb2_grpc.HealthStub(c).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=60
            ),
            server.port,
        )
        waited = _first_message_wait(
            lambda c: RunServiceStub(c).WatchRun(pb.WatchRunRequest(run_id=other), timeout=60),
            server.port,
        )
        print(
            f"\nfirst message behind the jam: WatchRun {waited:.2f} s, health {waited_health:.2f} s"
        )
        assert waited < 5 and waited_health < 5, (waited, waited_health)
        # The jam is given up connection by connection. The check's round
        # that let the honest watcher's message through also gave senders to
        # streams queued beside it, of connections not given up yet. Fewer
        # than SENDERS of them is no jam: each is cancelled once its send has
        # waited SLOW_SECONDS (api/senders.py), counted from about now. Under
        # load most runs leave a few, every one blocked in a send and gone
        # 30.0-30.1 s later (5.1 s with SLOW_SECONDS at 5): a bound, not a
        # leak. So wait past that bound, with room for a loaded machine; the
        # waits of 10 and 30 s that failed in full suites were at or below it.
        wait_for(lambda: server.watch_hub.watcher_count == 0, seconds=2 * senders.SLOW_SECONDS)
    finally:
        for readers in jam:
            readers.close()
        server.stop(grace=1)


def test_non_reading_streams_too_few_for_a_jam_end_at_the_send_bound(
    lite_url: str, lite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the jam leaves (fewer blocked streams than senders) is given up
    by the senders' bound alone: grpc's blocked send returns, the call's
    termination callback runs and frees the watcher's slot. The test above
    waits for that at the real bound; here it is cut short (to 2 s, which
    leaves the four streams time to be registered on a loaded machine)."""
    from spur_runs.api import senders, watch

    monkeypatch.setattr(senders, "SLOW_SECONDS", 2.0)  # room for the four to register
    server = start_server(lite_url, watch_interval=INTERVAL)
    request = pb.WatchRunRequest(run_id=pending_run(lite_db)).SerializeToString()
    stalled = NonReaders(server.port, WATCH_RUN, request, watch.SENDERS // 2)
    try:
        wait_for(lambda: server.watch_hub.watcher_count == watch.SENDERS // 2)
        wait_for(lambda: server.watch_hub.watcher_count == 0)
    finally:
        stalled.close()
        server.stop(grace=1)


def test_a_jam_spares_the_streams_of_its_connection_that_read(
    lite_url: str, lite_db: Database
) -> None:
    """An L7 proxy carries many clients' streams on one connection: when
    some of them read nothing and jam the senders, those are given up, and
    a stream of the same connection that reads is not (a review of the jam
    check, 2026-12-04: it went with them)."""
    from spur_runs.api import watch

    reading, stalled = pending_run(lite_db), pending_run(lite_db)
    server = start_server(lite_url, watch_interval=INTERVAL)
    shared = SharedConnection(
        server.port,
        WATCH_RUN,
        pb.WatchRunRequest(run_id=reading).SerializeToString(),
        pb.WatchRunRequest(run_id=stalled).SerializeToString(),
        watch.SENDERS,
    )
    try:
        ended = shared.ended_within(4)
        assert set(shared.jammed) <= ended  # given up after the jam's second
        assert shared.read_by_1 and 1 not in ended
    finally:
        shared.close()
        server.stop(grace=1)


def test_health_watchers_that_read_nothing_hold_up_the_others_for_a_second(
    lite_url: str,
) -> None:
    from spur_runs.runtime import health_service

    server = start_server(lite_url, health_interval=0.2)
    request = health_pb2.HealthCheckRequest(service="").SerializeToString()
    readers = NonReaders(server.port, HEALTH_WATCH, request, health_service.SENDERS)
    try:
        time.sleep(1.0)  # their first sends are blocked now
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            started = time.monotonic()
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=20
            )
            assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
            waited = time.monotonic() - started
            stream.cancel()
        assert waited < 5, waited
    finally:
        readers.close()
        server.stop(grace=1)
