"""A database that takes no writes: DeleteRun answers FAILED_PRECONDITION
("the database takes no writes (read-only)", HTTP 400) with one ERROR in
the log that has the driver's words, not UNAVAILABLE ("retry later", which
no retry mends) logged as "OperationalError" alone. Reads go on.

SQLite's is a file on a read-only bind mount (its folder stays writable, so
that its -wal and -shm can be made): SQLite opens it read-only and refuses
writes (SQLITE_READONLY). PostgreSQL's is a database whose transactions are
read-only by default, as a hot standby's are (read_only_sql_transaction):
a standby named as --database-url.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import disks
from http_client import Http, Seeded, seed_runs, start_http_server
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.store.engine import normalize_url
from spur_runs.store.migrate import migrate

DELETE_RUN = "/spur.runs.v1.RunService/DeleteRun"
MESSAGE = "the database takes no writes (read-only); nothing was written"


def refused_as_read_only(url: str, seeded: Seeded, caplog: pytest.LogCaptureFixture) -> str:
    """DeleteRun refused over gRPC and HTTP, reads served; the ERROR line."""
    server = start_http_server(url)
    try:
        caplog.clear()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                stub.DeleteRun(pb.DeleteRunRequest(run_id=seeded.parent), timeout=30)
            assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert raised.value.details() == MESSAGE
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            client = Http(server.http_port or 0)
            try:
                reply = client.request("DELETE", f"/run/{seeded.others[0]}/")
                assert reply.status == 400, reply.body
                code = grpc.StatusCode.FAILED_PRECONDITION.value[0]
                assert reply.error(code)["message"] == MESSAGE
            finally:
                client.close()
            got = stub.GetRun(pb.GetRunRequest(run_id=seeded.parent), timeout=30)
            assert got.run.id == seeded.parent  # nothing was deleted; reads go on
    finally:
        server.stop(grace=1)
    assert len(errors) == 1, errors
    prefix = f"the database takes no writes in {DELETE_RUN}: "
    assert errors[0].startswith(prefix), errors
    return errors[0].removeprefix(prefix)


def test_a_read_only_sqlite_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "runs.db"
    url = f"sqlite:///{path}"
    migrate(url)
    seeded = seed_runs(url)
    with disks.read_only(path):
        said = refused_as_read_only(url, seeded, caplog)
    assert said == "attempt to write a readonly database"


def test_a_postgresql_standby_as_the_primary(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    migrate(postgres_url)
    seeded = seed_runs(postgres_url)
    name = make_url(postgres_url).database
    engine = create_engine(normalize_url(postgres_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(
                text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            )
    finally:
        engine.dispose()
    said = refused_as_read_only(postgres_url, seeded, caplog)
    assert said == "cannot execute SELECT FOR UPDATE in a read-only transaction"
