"""A database whose disk is full: DeleteRun answers RESOURCE_EXHAUSTED
("the database's disk is full", HTTP 429) with one ERROR in the log, not
UNAVAILABLE ("retry later"), and succeeds once space is freed.

SQLite's is a real full file system: the database on a 4 MiB tmpfs, filled
while the server runs, so that the delete's WAL cannot grow (ENOSPC, which
SQLite reports as SQLITE_FULL). PRAGMA max_page_count cannot stand in for
it: a delete only frees pages, it never needs a new one. PostgreSQL's is
its real disk_full SQLSTATE (53100), raised by the server itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

import disks
from http_client import Http, seed_runs, start_http_server
from servers import start_server
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.rpc.status import to_status
from spur_runs.store.engine import normalize_url
from spur_runs.store.migrate import migrate

DELETE_RUN = "/spur.runs.v1.RunService/DeleteRun"
MESSAGE = "the database's disk is full"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with disks.small_disk(tmp_path / "disk") as disk:
        yield disk


def disk_full_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def refused_as_disk_full(stub: RunServiceStub, run_id: str) -> None:
    """DeleteRun of `run_id` is refused as a full disk, over gRPC."""
    with pytest.raises(grpc.RpcError) as raised:
        stub.DeleteRun(pb.DeleteRunRequest(run_id=run_id), timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.details().startswith(MESSAGE), raised.value.details()


def test_deleterun_on_a_full_disk_is_resource_exhausted_until_space_is_freed(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{small_disk / 'runs.db'}"
    migrate(url)
    seeded = seed_runs(url)
    server = start_http_server(url)
    try:
        filler = disks.fill(small_disk)
        caplog.clear()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            refused_as_disk_full(stub, seeded.parent)
            assert disk_full_errors(caplog) == [
                f"{MESSAGE} in {DELETE_RUN}: database or disk is full"
            ]
            # The same over HTTP: RESOURCE_EXHAUSTED's 429.
            client = Http(server.http_port or 0)
            try:
                reply = client.request("DELETE", f"/run/{seeded.others[0]}/")
                assert reply.status == 429, reply.body
                assert reply.error(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])[
                    "message"
                ].startswith(MESSAGE)
            finally:
                client.close()
            # Nothing was written; reads go on; once space is freed, the
            # same call succeeds.
            got = stub.GetRun(pb.GetRunRequest(run_id=seeded.parent), timeout=30)
            assert got.run.id == seeded.parent
            filler.unlink()
            stub.DeleteRun(pb.DeleteRunRequest(run_id=seeded.parent), timeout=30)
            with pytest.raises(grpc.RpcError) as gone:
                stub.GetRun(pb.GetRunRequest(run_id=seeded.parent), timeout=30)
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(grace=1)


def test_postgresqls_disk_full_is_resource_exhausted(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The SQLSTATE PostgreSQL sends when it cannot extend a file (53100),
    raised by the server itself, as psycopg and SQLAlchemy hand it over."""
    engine = create_engine(normalize_url(postgres_url))
    try:
        with engine.connect() as conn, pytest.raises(sa_exc.OperationalError) as raised:
            conn.execute(
                text(
                    "DO $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on "
                    "device' USING ERRCODE = 'disk_full'; END $$"
                )
            )
    finally:
        engine.dispose()
    assert getattr(raised.value.orig, "sqlstate", None) == "53100"
    status = to_status(raised.value, DELETE_RUN)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status.message.startswith(MESSAGE)
    assert disk_full_errors(caplog) == [
        f"{MESSAGE} in {DELETE_RUN}: could not extend file: No space left on device"
    ]


def test_deleterun_on_postgresql_out_of_disk_is_resource_exhausted(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the server: PostgreSQL refuses the delete with disk_full (a
    trigger raises it, where a full disk would raise it at the write)."""
    migrate(postgres_url)
    seeded = seed_runs(postgres_url)
    engine = create_engine(normalize_url(postgres_url))
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER disk_full BEFORE DELETE ON tasks "
                    "FOR EACH STATEMENT EXECUTE FUNCTION disk_full()"
                )
            )
    finally:
        engine.dispose()
    server = start_server(postgres_url)
    try:
        caplog.clear()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            refused_as_disk_full(stub, seeded.parent)
            assert disk_full_errors(caplog) == [f"{MESSAGE} in {DELETE_RUN}: could not extend file"]
            got = stub.GetRun(pb.GetRunRequest(run_id=seeded.parent), timeout=30)
            assert len(got.run.tasks) == 6  # nothing was deleted
    finally:
        server.stop(grace=1)
