"""Engines and session scopes for SQLite (the embedded default) and
PostgreSQL (psycopg 3, pooled). The caller owns the transaction: storage
functions take a session scope (a SQLAlchemy Core connection inside a
transaction) and never commit; `Database.write()` commits.

Core rather than ORM sessions: the service only reads columns into messages,
and the ORM's unit of work cost four times the SQL itself per GetRun.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url

WRITE_OPTION = "spur_runs_write"


def normalize_url(url: str) -> URL:
    """postgres:// and postgresql:// go through psycopg 3."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event (below) start every transaction, reads
    # included: pysqlite alone would run SELECTs outside any transaction, and
    # the statements of one call could then see different snapshots (a run
    # read before a concurrent delete, its tasks after it).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # PySpur declares foreign keys; SQLite enforces them only when asked.
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL: readers never block the engine's writer, nor it them.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # A write transaction takes the write lock up front (IMMEDIATE) so that it
    # waits for a concurrent writer (busy_timeout) instead of failing when it
    # upgrades from reading to writing.
    write = connection.get_execution_options().get(WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def create_db_engine(url: str, pool_size: int = 16) -> Engine:
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"check_same_thread": False, "timeout": 5},
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=5,
        # A connection the server dropped (restart, failover) is replaced
        # transparently instead of failing the next call.
        pool_pre_ping=True,
        # Fail fast when the server is down instead of hanging the call.
        connect_args={"connect_timeout": 3},
    )


class Database:
    """One engine and its read and write session scopes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._read_bind: Engine = engine
        self._write_bind: Engine = engine.execution_options(**{WRITE_OPTION: True})
        if engine.dialect.name == "postgresql":
            # One snapshot for all the statements of a read, as SQLite's
            # transactions give: a run and its tasks are read consistently.
            self._read_bind = engine.execution_options(isolation_level="REPEATABLE READ")

    @classmethod
    def from_url(cls, url: str, pool_size: int = 16) -> Database:
        return cls(create_db_engine(url, pool_size))

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A transaction for reads (one snapshot), rolled back at the end."""
        with self._read_bind.connect() as connection, connection.begin() as transaction:
            yield connection
            transaction.rollback()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that commits at the end, or rolls back on error."""
        with self._write_bind.connect() as connection, connection.begin():
            yield connection

    def ping(self) -> None:
        """Raises when the database cannot answer a trivial query."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
