"""Session scopes over the engines of engine.py, SQLite (the embedded
default) or PostgreSQL (psycopg 3, pooled). The caller owns the transaction: storage
functions take a session scope (a SQLAlchemy Core connection inside a
transaction) and never commit; `Database.write()` commits.

Core rather than ORM sessions: the service only reads columns into messages,
and the ORM's unit of work cost four times the SQL itself per GetRun.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import QueuePool

from .. import deadline
from ..errors import DeadlineExceeded, ResourceExhausted, Unavailable
from . import libpq, pg_watchdog
from .engine import DEAD_PEER_SECONDS, SINGLE_OPTION, WRITE_OPTION, create_db_engine
from .held import HeldConnections
from .sqlite_file import FileIdentity

# A health ping (ping()) unanswered this long marks its database unreachable,
# as it turns health NOT_SERVING (health.PING_TIMEOUT_S, the same value).
UNANSWERED_PING_S = 5.0

# How long a write waits for one of the writers' slots (Database.write),
# holding its RPC thread meanwhile: as long as rpc/arrival.py lets a stalled
# call hold one.
WRITE_SLOT_WAIT_S = 0.2


class Database:
    """One engine and its read and write session scopes; with a read replica
    (`read_engine`), reads go to it and writes to `engine`, the primary."""

    def __init__(
        self,
        engine: Engine,
        read_engine: Engine | None = None,
        timeout_seconds: float | None = None,
        held_limit: int | None = None,
        writers: int | None = None,
    ) -> None:
        self.engine = engine
        self._files = {
            role: found
            for role, bound in (("primary", engine), ("replica", read_engine))
            if bound is not None and (found := FileIdentity.of(bound)) is not None
        }
        # At most `writers` write scopes at once (None: no bound); see write().
        self._writers = None if writers is None else threading.BoundedSemaphore(writers)
        self._writers_limit = writers
        self.read_engine = read_engine
        self._timeout = timeout_seconds
        # Set by cut() at the end of a drain: no write commits from then on.
        self._cut = threading.Event()
        # SQLite connections checked out of the pools, to interrupt at the
        # cut (PostgreSQL's are cut by pg_watchdog.WATCHDOG.cut_all()).
        self._out: dict[int, Any] = {}
        self._out_lock = threading.Lock()
        for bound in self.engines.values():
            if bound.dialect.name == "sqlite":
                event.listen(bound, "checkout", self._checked_out)
                event.listen(bound, "checkin", self._checked_in)
        # By role ("primary", "replica"): whose last ping failed (and why,
        # where the ping knows better than "not answering": a replaced
        # file; else ""), and when the ping under way began (_check_reachable).
        self._unreachable: dict[str, str] = {}
        self._pinging: dict[str, float] = {}
        # The PostgreSQL connection the ping under way waits on, for
        # abandon_ping() to shut down, and whether it was abandoned (under
        # the lock: the connection goes back to the pool, and to a call,
        # only once it is no longer here).
        self._ping_lock = threading.Lock()
        self._ping_connection: psycopg.Connection[Any] | None = None
        self._ping_abandoned = False
        self._read_role = "replica" if read_engine is not None else "primary"
        reader = read_engine or engine
        self._read_bind: Engine = reader
        self._write_bind: Engine = engine.execution_options(**{WRITE_OPTION: True})
        self._single_bind: Engine = reader.execution_options(**{SINGLE_OPTION: True})
        if reader.dialect.name == "postgresql":
            # One snapshot for all the statements of a read, as SQLite's
            # transactions give: a run and its tasks are read consistently.
            # (A hot standby supports REPEATABLE READ too.)
            self._read_bind = reader.execution_options(isolation_level="REPEATABLE READ")
            # (A single statement sees one snapshot by itself: read_one runs
            # it in autocommit, which psycopg sends alone, without BEGIN and
            # ROLLBACK round trips.)
        # Single reads on a connection per thread (held.py), when the pool
        # holds several connections to one database (not SQLite's :memory:,
        # whose every connection is a database of its own). At most
        # `held_limit` (the server's RPC threads; by default the pool's size)
        # beside the pool's own.
        self._held = (
            HeldConnections(
                self._single_bind, reader.pool.size() if held_limit is None else held_limit
            )
            if isinstance(reader.pool, QueuePool)
            else None
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        pool_size: int = 16,
        read_url: str | None = None,
        timeout_seconds: float | None = None,
        dead_peer_seconds: float = DEAD_PEER_SECONDS,
        held_limit: int | None = None,
        writers: int | None = None,
        max_text: int | None = None,
    ) -> Database:
        return cls(
            create_db_engine(url, pool_size, timeout_seconds, dead_peer_seconds, max_text),
            create_db_engine(read_url, pool_size, timeout_seconds, dead_peer_seconds, max_text)
            if read_url
            else None,
            timeout_seconds,
            held_limit,
            writers,
        )

    @property
    def kept(self) -> dict[str, HeldConnections]:
        """By role: the connections kept for single reads (held.py), on the
        database that serves reads; for metrics."""
        return {} if self._held is None else {self._read_role: self._held}

    @property
    def engines(self) -> dict[str, Engine]:
        """By role, for health and metrics."""
        found = {"primary": self.engine}
        if self.read_engine is not None:
            found["replica"] = self.read_engine
        return found

    def _checked_out(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        with self._out_lock:
            self._out[id(dbapi_connection)] = dbapi_connection

    def _checked_in(self, dbapi_connection: Any, _record: Any) -> None:
        with self._out_lock:
            self._out.pop(id(dbapi_connection), None)

    def cut(self) -> None:
        """The end of a drain: the calls still running have been (or are
        being) cancelled, so none of their writes may commit. From now on
        every write scope rolls back and raises Unavailable, and SQLite's
        statements in progress are interrupted (SQLITE_INTERRUPT: rolled
        back).

        SQLite has no statement to cut while a write waits for the write
        lock (sqlite3_interrupt does not end the busy handler's sleeps, which
        last up to --db-timeout-seconds): such a write reaches its COMMIT
        only once the lock is free, and is refused there. Its thread is
        left behind by the process's exit (runtime/serve.py)."""
        self._cut.set()
        with self._out_lock:
            connections = list(self._out.values())
        for dbapi_connection in connections:
            try:
                dbapi_connection.interrupt()
            except Exception:  # noqa: BLE001, S110 - closed meanwhile: nothing to cut
                pass

    def _bound_by_deadline(self, connection: Connection) -> None:
        """Lower statement_timeout to what the caller's deadline leaves, when
        that is shorter than the server's own bound."""
        left = deadline.remaining()
        if left is None:
            return
        if left <= 0:
            raise DeadlineExceeded("the call's deadline passed before the database was asked")
        if connection.dialect.name != "postgresql":
            return
        if self._timeout is None or left < self._timeout:
            connection.execute(
                text("SELECT set_config('statement_timeout', :ms, true)"),
                {"ms": str(max(int(left * 1000), 1))},
            )

    def _check_reachable(self, role: str) -> None:
        """Fail fast while the health ping says this database is unreachable:
        its last ping failed, or the one under way has gone unanswered for
        UNANSWERED_PING_S (a network partition: nothing answers, nothing
        refuses). A call would otherwise hold its thread and a connection
        until --db-dead-peer-seconds or connect_timeout gave up, long after
        its caller's deadline; with every thread held so, health itself and
        every other call would wait. The next successful ping (every
        --health-interval) lets calls through again. Without pings (no
        server: scripts, tests) nothing is ever refused."""
        started = self._pinging.get(role)
        if role in self._unreachable or (
            started is not None and time.monotonic() - started > UNANSWERED_PING_S
        ):
            why = self._unreachable.get(role)
            raise Unavailable(
                f"{why} (health NOT_SERVING)"
                if why
                else f"the {role} database is not answering (health NOT_SERVING); retry later"
            )

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A transaction for reads (one snapshot), rolled back at the end."""
        self._check_reachable(self._read_role)
        with self._read_bind.connect() as connection, connection.begin() as transaction:
            self._bound_by_deadline(connection)
            yield connection
            transaction.rollback()

    @contextmanager
    def read_one(self) -> Iterator[Connection]:
        """A scope for a read made of ONE statement (GetRun's), which is
        consistent by itself: no transaction around it. Every statement in
        it must go through hot.fetch: under a deadline shorter than
        --db-timeout-seconds only those are bounded by it (libpq.py)."""
        left = deadline.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded("the call's deadline passed before the database was asked")
        self._check_reachable(self._read_role)
        postgresql = self._single_bind.dialect.name == "postgresql"
        # A deadline shorter than the statements' own bound lowers it: on
        # PostgreSQL in the same round trip as each read (libpq.py), or, with
        # a libpq too old for pipelines, in a transaction.
        tight = postgresql and left is not None and (self._timeout is None or left < self._timeout)
        if tight and not libpq.PIPELINES:
            with self.read() as connection:
                yield connection
            return
        if self._held is not None:
            with self._held.scope() as held:
                if held is not None:
                    if tight:
                        with libpq.deadline_bound(held):
                            yield held
                    else:
                        yield held
                    return
        if not postgresql:
            with self._single_bind.connect() as connection:
                yield connection
            return
        with self._single_bind.connect() as connection:
            # Autocommit set on psycopg's connection for this scope, not as
            # SQLAlchemy's isolation_level="AUTOCOMMIT" option: that one sets
            # and resets two connection characteristics through its dialect
            # at every checkout, and its hot reads then begin and roll back a
            # transaction of SQLAlchemy's that holds nothing (hot.fetch):
            # together a quarter of a GetRun's CPU in process (401 -> 298 µs).
            # A statement that SQLAlchemy executes here (autobegin) is sent
            # alone too, and its ROLLBACK is psycopg's no-op.
            dbapi = connection.connection.dbapi_connection
            dbapi.autocommit = True  # type: ignore[union-attr]
            try:
                if tight:
                    with libpq.deadline_bound(connection):
                        yield connection
                else:
                    yield connection
            finally:
                try:
                    dbapi.autocommit = False  # type: ignore[union-attr]
                except connection.dialect.loaded_dbapi.Error:
                    # A connection lost during the scope (SQLAlchemy has
                    # invalidated it when it met the loss): not reused.
                    connection.invalidate()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that commits at the end, or rolls back on error.

        ResourceExhausted when `writers` write scopes are open already: a
        write may wait up to --db-timeout-seconds for another writer's lock
        (SQLite's one write lock, a row PySpur holds), and writes waiting
        so on every RPC thread left reads, which never wait, unanswered for
        as long. A write over the bound waits WRITE_SLOT_WAIT_S for a slot
        (a burst of quick deletes), then is refused (429: retry)."""
        self._check_reachable("primary")
        slots = self._writers
        if slots is not None and not slots.acquire(timeout=WRITE_SLOT_WAIT_S):
            raise ResourceExhausted(
                f"{self._writers_limit} writes are in progress, the most this server runs at "
                "once; retry shortly"
            )
        try:
            with self._write_bind.connect() as connection, connection.begin():
                self._bound_by_deadline(connection)
                yield connection
                if self._cut.is_set():  # raised here, the transaction rolls back
                    raise Unavailable(
                        "the server is stopping: this write was rolled back; retry elsewhere"
                    )
        finally:
            if slots is not None:
                slots.release()

    def ping(self) -> None:
        """Raises when a database (primary or replica) cannot answer a
        trivial query, or is a SQLite file replaced or removed since the
        first ping (sqlite_file.py); records which can (see _check_reachable)."""
        with self._ping_lock:
            self._ping_abandoned = False
        for role, engine in self.engines.items():
            self._pinging[role] = time.monotonic()
            try:
                file = self._files.get(role)
                if file is not None:
                    file.check()
                self._select_one(engine)
            except Exception as error:
                self._unreachable[role] = str(error) if isinstance(error, Unavailable) else ""
                if role == self._read_role and self._held is not None:
                    # The kept connections are as dead as the pool's: none
                    # is used again once health says SERVING (held.py).
                    self._held.mark_stale()
                raise
            finally:
                self._pinging.pop(role, None)
            self._unreachable.pop(role, None)

    def abandon_ping(self) -> None:
        """The ping under way has gone unanswered too long (health.py): it
        fails now, its database counted unreachable (calls refused), rather
        than when its answer comes. Its query, sent into a partition, waits
        in the kernel's retransmissions, whose intervals double (0.2 s, 0.4
        s, ... 3.2 s): after a partition of 5 s the next one came 1.2 to 2
        s after the link was back, and calls were refused all that while
        (they are from UNANSWERED_PING_S on). Its connection is shut down,
        the pool's older ones are replaced (SQLAlchemy does so for a lost
        connection), and the next ping, on a new connection, is answered as
        soon as the database can be reached. A ping still connecting ends
        by connect_timeout (engine.py)."""
        with self._ping_lock:
            self._ping_abandoned = True
            if self._ping_connection is not None:
                pg_watchdog.shut_down(self._ping_connection)

    def _select_one(self, engine: Engine) -> None:
        """SELECT 1, once more on a new connection when the pooled one turns
        out dead (and the ping was not abandoned): one connection killed
        (pg_terminate_backend, a restart since) is not a database down, and
        SQLAlchemy has just dropped the pool's older connections."""
        try:
            self._select_one_once(engine)
        except sa_exc.DBAPIError as error:
            with self._ping_lock:
                abandoned = self._ping_abandoned
            if abandoned or not error.connection_invalidated:
                raise
            self._select_one_once(engine)

    def _select_one_once(self, engine: Engine) -> None:
        with engine.connect() as connection:
            dbapi = connection.connection.dbapi_connection
            # (SQLite's pings need no cutting: a file answers or raises.)
            watched = dbapi if isinstance(dbapi, psycopg.Connection) else None
            if watched is not None:
                with self._ping_lock:
                    if self._ping_abandoned:
                        # (Abandoned while it waited for the pool or a
                        # connection: health has moved on.)
                        raise TimeoutError("the ping was abandoned before it was sent")
                    self._ping_connection = watched
            try:
                connection.execute(text("SELECT 1"))
            finally:
                if watched is not None:
                    with self._ping_lock:
                        self._ping_connection = None

    def dispose(self) -> None:
        if self._held is not None:
            self._held.close_all()
        for engine in self.engines.values():
            engine.dispose()
