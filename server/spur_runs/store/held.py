"""Single reads on a connection that each thread keeps between calls.

`Database.read_one` (GetRun, a ListRuns page, GetChildRuns: one statement
each) used to check a connection out of the pool, wrap it in a SQLAlchemy
`Connection` and check it in again; on SQLite it also began and rolled back
a transaction of SQLAlchemy's (for the "begin" listener, which puts back a
busy_timeout that a write lowered), on PostgreSQL it turned psycopg's
autocommit on and off. On SQLite that was 17 µs in process, about what
SQLite takes to run GetRun's statement (docs/performance.md, "Eighth
step"). Here a thread keeps one `Connection` for these reads instead, taken
out of the pool once (`detach()`: it no longer counts against the pool's
size, nor shows in its metrics) and used for nothing else.

Why that serves no stale answer: the connection is in autocommit (SQLite's
isolation_level=None from engine._sqlite_connect, with no BEGIN sent on it;
psycopg's autocommit, set here once), so each SELECT is its own snapshot
and sees every commit made before it, by this process or another (PySpur).
After every read the connection must be outside any transaction,
SQLAlchemy's or the database's; otherwise, or after any database error, it
is closed, and the thread's next read opens another.

Why no begin: the connection never writes, so nothing lowers SQLite's
busy_timeout (engine._sqlite_begin), and the statement's own listeners
(before_cursor_execute: the watchdog, statement counts) still run
(hot.fetch).

A lost connection (a PostgreSQL restart, a failover): the read that meets
it fails (UNAVAILABLE, as with a pooled connection), and every thread's kept
connection is replaced at its next read, as SQLAlchemy replaces the pool's
connections older than the failure. When the pool meets the loss first (a
multi-statement read), its "invalidate" event marks the kept connections
stale the same way, and so does a failed health ping (Database.ping): once
health says SERVING again, no call meets a dead kept connection.

Bounded: at most `limit` connections are kept (the server's --max-workers,
by default the pool's size); beyond it, a read takes a pooled connection as
before. A thread's connection is closed when the thread ends; `close_all()`
(Database.dispose) closes the idle ones, and one that a read is using is
closed by its thread when the read ends.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, event
from sqlalchemy import exc as sa_exc

# The execution option that marks a kept connection: hot.fetch begins no
# transaction on it (see above).
HELD_OPTION = "spur_runs_held"


def _idle(dbapi: Any) -> bool:
    """Whether the DBAPI connection is open and in no transaction."""
    if isinstance(dbapi, psycopg.Connection):
        return bool(
            not dbapi.closed
            and not dbapi.broken
            and dbapi.autocommit
            and dbapi.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        )
    return dbapi is not None and not dbapi.in_transaction  # sqlite3


class _Holder:
    """What a thread keeps (in a threading.local): when the thread ends, the
    holder is collected and its connection closed (weakref.finalize)."""

    __slots__ = ("connection", "generation", "__weakref__")

    def __init__(self, connection: Connection, generation: int) -> None:
        self.connection = connection
        self.generation = generation


class HeldConnections:
    """The kept connections of one engine (the single-statement bind)."""

    def __init__(self, engine: Engine, limit: int) -> None:
        self._engine = engine
        self._limit = limit
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[Connection] = set()
        # Connections being made for a thread (_take), counted against the
        # limit with the open ones.
        self._connecting = 0
        # The connections in a read now: close_all leaves them to their
        # thread (closing one under a running statement is unsafe; psycopg
        # frees its libpq connection).
        self._busy: set[Connection] = set()
        # Bumped by close_all and by a dropped connection: a holder of an
        # older generation is stale, and its thread closes it.
        self._generation = 0
        # The pool invalidates a connection when it meets a dropped one (and
        # then every older one): ours are as old (see above).
        event.listen(engine, "invalidate", self._pool_invalidated)

    def __len__(self) -> int:
        return len(self._open)

    def in_use(self) -> int:
        """How many kept connections a read is using now (metrics)."""
        return len(self._busy)

    def _pool_invalidated(self, *_args: Any) -> None:
        self.mark_stale()

    def mark_stale(self) -> None:
        """Every kept connection is replaced at its thread's next read."""
        with self._lock:
            self._generation += 1

    @contextmanager
    def scope(self) -> Iterator[Connection | None]:
        """This thread's kept connection for one read, or None when `limit`
        connections are kept already (the caller then uses the pool)."""
        taken = self._take()
        if taken is None:
            yield None
            return
        connection, generation = taken
        try:
            yield connection
        except sa_exc.DBAPIError as error:
            if error.connection_invalidated:
                # The database dropped it: the other threads' kept
                # connections are as old, and are replaced at their next
                # read (by their own thread, which may be using one now).
                self.mark_stale()
            self._discard(connection)  # its state is unknown: a fresh one next time
            raise
        finally:
            # Busy until _end is done: it uses the connection (a rollback,
            # the DBAPI connection's state), and close_all, which leaves a
            # busy one to its thread, closed it under _end when it ran
            # between the two (a drain's end, calls still running): the
            # read, which had its answer, failed ("This Connection is
            # closed").
            try:
                if not connection.closed and generation == self._generation:
                    self._end(connection)
            finally:
                self._busy.discard(connection)  # whatever _end raised
            if not connection.closed and generation != self._generation:
                self._discard(connection)  # close_all passed it by, or it is stale

    def _end(self, connection: Connection) -> None:
        """After a read: no transaction may outlive it."""
        try:
            if connection.in_transaction():
                # SQLAlchemy's autobegin (a statement it executed): on this
                # connection it sent no BEGIN (engine._sqlite_begin), so this
                # rollback is sqlite3's no-op.
                connection.rollback()
            if _idle(connection.connection.dbapi_connection):
                return
        except sa_exc.DBAPIError:
            pass
        # SQLite itself is in a transaction (a BEGIN sent by hand), or the
        # connection is gone: never carried over to the next read.
        self._discard(connection)

    def _take(self) -> tuple[Connection, int] | None:
        found: _Holder | None = getattr(self._local, "holder", None)
        if found is not None:
            # Busy before the generation is read: close_all bumps the
            # generation before it looks at who is busy, so either it
            # leaves this connection alone or this read sees it stale.
            self._busy.add(found.connection)
            generation = self._generation
            if found.generation == generation and not found.connection.closed:
                return found.connection, generation
            self._busy.discard(found.connection)
            # Dropped here, outside the lock: its finalizer takes it.
            self._local.holder = found = None
        # A place reserved under the lock, the connection made outside it:
        # making one waits for the database (up to connect_timeout, 2 s,
        # when it does not answer), and under the lock every other thread's
        # new connection, and every mark_stale() (a failed call's, the
        # health ping's), waited behind it. In a partition those waits
        # added up: a call held its thread 6 s, 2 s per connection attempt
        # queued before it (test_partition.py, test_held_reads.py). The
        # generation is read with the reservation: a close_all() meanwhile
        # leaves the new connection stale, closed at the end of its read.
        with self._lock:
            if len(self._open) + self._connecting >= self._limit:
                return None
            self._connecting += 1
            generation = self._generation
        try:
            connection = self._engine.connect()
            try:
                connection.connection.detach()
                connection.execution_options(**{HELD_OPTION: True})
                dbapi = connection.connection.dbapi_connection
                if isinstance(dbapi, psycopg.Connection):
                    dbapi.autocommit = True  # for good: it only reads
            except BaseException:
                connection.close()
                raise
        except BaseException:
            with self._lock:
                self._connecting -= 1
            raise
        with self._lock:
            self._connecting -= 1
            self._open.add(connection)
            self._busy.add(connection)
            holder = _Holder(connection, generation)
        weakref.finalize(holder, self._discard, connection)
        self._local.holder = holder
        return connection, generation

    def _discard(self, connection: Connection) -> None:
        with self._lock:
            self._open.discard(connection)
        _close(connection)

    def close_all(self) -> None:
        """Close every kept connection that no read is using; a busy one is
        closed by its thread when its read ends (the generation changed)."""
        with self._lock:
            self._generation += 1
            found, self._open = self._open, set()
            idle = [connection for connection in found if connection not in self._busy]
        for connection in idle:
            _close(connection)


def _close(connection: Connection) -> None:
    try:
        connection.close()  # detached: closes the DBAPI connection
    except Exception:  # noqa: S110 - closing a broken connection; it is gone either way
        pass
