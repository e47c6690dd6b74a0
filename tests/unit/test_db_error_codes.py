"""rpc/status.py's reading of database errors: which ones a retry may mend
(ABORTED, UNAVAILABLE, DEADLINE_EXCEEDED) and which it never will (INTERNAL),
from the drivers' own exceptions."""

from __future__ import annotations

import logging
import sqlite3

import psycopg
import pytest
from google.rpc import code_pb2
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from spur_runs.errors import Aborted, DiskFull
from spur_runs.rpc.status import HTTP_STATUS, grpc_code, to_status


def _wrapped(error: Exception) -> sa_exc.DBAPIError:
    return sa_exc.DBAPIError.instance("SELECT 1", {}, error, psycopg.Error)


def test_a_deadlock_is_aborted() -> None:
    status = to_status(_wrapped(psycopg.errors.DeadlockDetected("deadlock")), "/m")
    assert status.code == code_pb2.ABORTED and "retry" in status.message


def test_a_standbys_recovery_conflict_stays_unavailable() -> None:
    """40001 on a replica read: what production.md's retry policy retries."""
    conflict = psycopg.errors.SerializationFailure("conflict with recovery")
    assert to_status(_wrapped(conflict), "/m").code == code_pb2.UNAVAILABLE


def test_an_aborted_write_is_aborted() -> None:
    assert to_status(Aborted("run R1: retry")).code == code_pb2.ABORTED


def test_sqlites_generic_error_is_internal_not_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ "no such column" (a schema that is not PySpur's) is no outage: a
    retry never mends it, and the log gets its traceback."""
    engine = create_engine("sqlite://")
    with engine.connect() as conn, pytest.raises(sa_exc.OperationalError) as raised:
        conn.execute(text("SELECT nope FROM sqlite_master"))
    status = to_status(raised.value, "/m")
    assert status.code == code_pb2.INTERNAL
    assert "no such column" in caplog.text


def test_sqlites_busy_is_a_deadline() -> None:
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorname = "SQLITE_BUSY"  # as sqlite3 sets it
    status = to_status(sa_exc.OperationalError("BEGIN", {}, busy), "/m")
    assert status.code == code_pb2.DEADLINE_EXCEEDED


def test_a_lost_connection_is_unavailable() -> None:
    lost = psycopg.OperationalError("server closed the connection unexpectedly")
    assert to_status(_wrapped(lost), "/m").code == code_pb2.UNAVAILABLE


def test_sqlites_full_disk_is_resource_exhausted_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SQLITE_FULL, from SQLite itself: a database at its max_page_count
    cannot grow for an insert ("database or disk is full"), as a file whose
    disk is full cannot. It used to read as UNAVAILABLE ("retry later")."""
    engine = create_engine("sqlite://")
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE t (x TEXT)"))
        conn.execute(text("PRAGMA max_page_count = 3"))
        with pytest.raises(sa_exc.OperationalError) as raised:
            conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": "x" * 100_000})
    assert raised.value.orig.sqlite_errorname == "SQLITE_FULL"  # type: ignore[union-attr]
    status = to_status(raised.value, "/m")
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    assert status.message.startswith("the database's disk is full")
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelno, r.getMessage()) for r in errors] == [
        (logging.ERROR, "the database's disk is full in /m: database or disk is full")
    ]
    assert HTTP_STATUS[grpc_code(status)] == 429


def test_a_full_disk_is_the_domain_error_disk_full() -> None:
    assert to_status(DiskFull("the database's disk is full")).code == code_pb2.RESOURCE_EXHAUSTED
