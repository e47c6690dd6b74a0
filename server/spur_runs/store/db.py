"""Engines and session scopes for SQLite (the embedded default) and
PostgreSQL (psycopg 3, pooled). The caller owns the transaction: storage
functions take a session scope (a SQLAlchemy Core connection inside a
transaction) and never commit; `Database.write()` commits.

Core rather than ORM sessions: the service only reads columns into messages,
and the ORM's unit of work cost four times the SQL itself per GetRun.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import QueuePool

from .. import deadline
from ..errors import DeadlineExceeded, ResourceExhausted, Unavailable
from .held import HeldConnections
from .pg_watchdog import WatchedConnection, watched_cursor
from .sqlite_file import FileIdentity

WRITE_OPTION = "spur_runs_write"
SINGLE_OPTION = "spur_runs_single_statement"

# A health ping (ping()) unanswered this long marks its database unreachable,
# as it turns health NOT_SERVING (health.PING_TIMEOUT_S, the same value).
UNANSWERED_PING_S = 5.0

# How long a write waits for one of the writers' slots (Database.write),
# holding its RPC thread meanwhile: as long as rpc/arrival.py lets a stalled
# call hold one.
WRITE_SLOT_WAIT_S = 0.2

# --db-dead-peer-seconds' default: how long a PostgreSQL connection may go
# unanswered before the kernel drops it (see dead_peer_args).
DEAD_PEER_SECONDS = 10.0

# Key of a SQLite connection's _Watchdog in its pool entry's info (public:
# bench/sqlite_watchdog.py measures with the watchdog off).
WATCHDOG_KEY = "spur_runs_watchdog"
# SQLite virtual machine steps between two looks at the watchdog's clock.
# A runaway statement makes ~55 million a second (measured: a recursive CTE
# on this machine's SQLite 3.40), so it is stopped within ~2 ms of its bound
# (plus a wait for the GIL, at most the 5 ms switch interval). A GetRun or a
# ListRuns page takes far fewer steps, and so never calls into Python.
WATCHDOG_STEPS = 100_000


class _Watchdog:
    """The progress handler of one SQLite connection: interrupts whatever
    statement it runs once `until` (a time.monotonic() value) has passed.

    SQLite has no statement_timeout: busy_timeout bounds only waits for a
    lock, and a statement that computes forever (a recursive query over a
    cycle) held its thread, its connection and the write lock with no end,
    deadline or not. The interrupted statement fails with SQLITE_INTERRUPT
    (rpc/status.py: DEADLINE_EXCEEDED) and its transaction is rolled back."""

    __slots__ = ("until",)

    def __init__(self) -> None:
        self.until: float | None = None

    def __call__(self) -> int:
        until = self.until
        return 1 if until is not None and time.monotonic() > until else 0


def normalize_url(url: str) -> URL:
    """postgres:// and postgresql:// go through psycopg 3."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


# What one hot read (hot.fetch) may still decode on this thread, in
# characters: its rows' text, counted before it becomes Python objects, which
# take several times its size (a review, 2026-12-04: a list page of runs
# whose tasks held 1 MB outputs took 2.4 GB before the response's size was
# known). psycopg decodes JSON columns in load_json; SQLite's rows are text
# that hot.fetch measures itself.
_TEXT = threading.local()


def text_too_large(limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"the answer's stored data is more than {limit} characters, more than one response "
        "may carry (--max-response-bytes); ask for fewer runs or tasks at once"
    )


def bound_text(limit: int | None) -> None:
    """Count the JSON that load_json decodes on this thread against `limit`,
    until bound_text(None). (Two calls, not a context manager: hot.fetch
    runs on every call.)"""
    _TEXT.limit = _TEXT.left = limit


# Query parameters of a database URL that carry a secret: libpq's (and so
# psycopg's) password and the key's passphrase, sslpassword. passfile and
# sslkey name files, which are no secret.
SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})


def shown_url(url: str | URL) -> str:
    """`url` as logs, messages and printed output show it: the password of
    user:password@ and the values of SECRET_QUERY_KEYS as ***. SQLAlchemy's
    render_as_string(hide_password=True) masks the first only, and
    `postgresql://u@host/db?password=...` was logged in plain text."""
    parsed = make_url(url) if isinstance(url, str) else url
    # A placeholder of letters, which the query string leaves unescaped
    # ("***" would be shown as %2A%2A%2A), replaced once rendered.
    secret = {key: _MASKED for key in parsed.query if key.lower() in SECRET_QUERY_KEYS}
    if secret:
        parsed = parsed.update_query_dict(secret)
    return parsed.render_as_string(hide_password=True).replace(_MASKED, "***")


_MASKED = "SpurRunsMaskedSecret"


def load_json(text: str | bytes) -> Any:
    """JSON columns as Python values. orjson parses them ~8x faster than the
    json module (the tasks of a list page hold ~60 JSON values); it refuses
    NaN and Infinity, which Python's json.dumps writes and PySpur may have
    stored, so those documents take the json module's slower path."""
    left = getattr(_TEXT, "left", None)
    if left is not None:
        _TEXT.left = left = left - len(text)
        if left < 0:
            raise text_too_large(_TEXT.limit)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _sqlite_connect(
    dbapi_connection: Any, record: Any, busy_timeout_ms: int = 5000, max_text: int | None = None
) -> None:
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
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.close()
    if max_text is not None:
        # No string SQLite builds (a packed row, hot.py) may pass this: it
        # stops with SQLITE_TOOBIG as it reaches it, where a count of the
        # rows' text in Python comes after SQLite and sqlite3 have held it
        # all (1.8 GB for a page of runs with 1 MB outputs).
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_text)
    watchdog = _Watchdog()
    dbapi_connection.set_progress_handler(watchdog, WATCHDOG_STEPS)
    record.info[WATCHDOG_KEY] = watchdog


def _sqlite_arm(connection: Connection, timeout_seconds: float | None) -> None:
    """Before each statement: bound it by `timeout_seconds` (the server's
    --db-timeout-seconds) and by the deadline of the call it serves, as
    PostgreSQL's statement_timeout bounds it there. The bound stays armed
    while the caller fetches the rows (SQLite computes them as they are
    fetched) and is replaced by the next statement's."""
    watchdog = connection.info.get(WATCHDOG_KEY)
    if watchdog is None:
        return
    now = time.monotonic()
    bounds = [now + left for left in (timeout_seconds, deadline.remaining()) if left is not None]
    watchdog.until = min(bounds) if bounds else None


def _sqlite_begin(connection: Any, busy_timeout_ms: int = 5000) -> None:
    # A write transaction takes the write lock up front (IMMEDIATE) so that it
    # waits for a concurrent writer (busy_timeout) instead of failing when it
    # upgrades from reading to writing.
    options = connection.get_execution_options()
    write = options.get(WRITE_OPTION, False)
    # SQLite's twin of PostgreSQL's deadline-lowered statement_timeout: a
    # writer waiting for a lock held elsewhere (another process's BEGIN
    # EXCLUSIVE) gives up while its caller still listens, and answers
    # DEADLINE_EXCEEDED (rpc/status.py), instead of holding a thread and a connection for the full
    # --db-timeout-seconds after the client's DEADLINE_EXCEEDED. Only writes
    # wait for locks (WAL readers never do); a read puts the bound back.
    wanted = busy_timeout_ms
    left = deadline.remaining() if write else None
    if left is not None:
        # 80%: the answer must reach the caller before its own deadline
        # fires, on a busy machine too (SQLite's busy handler sleeps in steps).
        wanted = max(1, min(busy_timeout_ms, int(left * 800)))
    if connection.info.get("busy_timeout_ms", busy_timeout_ms) != wanted:
        connection.exec_driver_sql(f"PRAGMA busy_timeout={wanted}")
    connection.info["busy_timeout_ms"] = wanted
    if options.get(SINGLE_OPTION, False):
        # Database.read_one: one SELECT is its own snapshot; BEGIN and
        # ROLLBACK around it would cost a third of a GetRun's SQL.
        return
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def dead_peer_args(seconds: float) -> dict[str, int]:
    """libpq's TCP settings that drop a connection to a PostgreSQL that has
    vanished without a reset (a failover, a dropped route, a partition)
    within about `seconds`, instead of the ~15 minutes of the kernel's
    retransmissions, during which the call, its thread and its pooled
    connection would wait for an answer that cannot come.

    tcp_user_timeout bounds how long sent data may stay unacknowledged (a
    query sent into the void). Keepalive probes cover the other case, a
    query whose answer never comes on an otherwise idle socket: the first
    one after half the bound, then probes whose unanswered run ends it
    (Linux drops the connection at tcp_user_timeout once probes are out;
    elsewhere idle + count x interval gives about the same bound). Neither
    touches a healthy connection, however long its query runs: the peer
    acknowledges data and probes."""
    whole = max(1, round(seconds))
    idle = max(1, whole // 2)
    count = 3
    return {
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": max(1, (whole - idle) // count),
        "keepalives_count": count,
        "tcp_user_timeout": max(1000, int(seconds * 1000)),
    }


# An execution option: the most text, in characters, that one of the hot
# reads (hot.py) may bring back before its rows are decoded.
MAX_TEXT_OPTION = "spur_runs_max_text"


def create_db_engine(
    url: str,
    pool_size: int = 16,
    timeout_seconds: float | None = None,
    dead_peer_seconds: float = DEAD_PEER_SECONDS,
    max_text: int | None = None,
) -> Engine:
    """`timeout_seconds` bounds each statement (the server's --db-timeout-seconds);
    None leaves migrations and seeding unbounded. `dead_peer_seconds` bounds
    how long a PostgreSQL connection waits on a peer that no longer answers
    (dead_peer_args); a long migration or statement is not cut by it.
    `max_text` bounds the text of each hot read's rows (MAX_TEXT_OPTION)."""
    parsed = normalize_url(url)
    options = {} if max_text is None else {MAX_TEXT_OPTION: max_text}
    if parsed.get_backend_name() == "sqlite":
        busy = 5.0 if timeout_seconds is None else timeout_seconds
        engine = create_engine(
            parsed,
            execution_options=options,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"check_same_thread": False, "timeout": busy},
            json_deserializer=load_json,
        )
        event.listen(
            engine,
            "connect",
            lambda connection, record: _sqlite_connect(
                connection, record, int(busy * 1000), max_text
            ),
        )
        event.listen(
            engine, "begin", lambda connection: _sqlite_begin(connection, int(busy * 1000))
        )
        event.listen(
            engine,
            "before_cursor_execute",
            lambda connection, *_args: _sqlite_arm(connection, timeout_seconds),
        )
        return engine
    connect_args: dict[str, Any] = {
        "connect_timeout": 3,
        **dead_peer_args(dead_peer_seconds),
        # A client-side bound too, for a database that never answers.
        "cursor_factory": watched_cursor(timeout_seconds),
    }
    if timeout_seconds is not None:
        # Server-side bound: PostgreSQL cancels a statement running (or
        # waiting for a lock) longer than this, and the connection is free.
        connect_args["options"] = f"-c statement_timeout={max(int(timeout_seconds * 1000), 1)}"
    engine = create_engine(
        parsed,
        execution_options=options,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=5,
        # No pool_pre_ping: it costs a round trip on every call (a tenth of
        # a GetRun). A connection the server dropped (restart, failover)
        # fails the one call that meets it, with UNAVAILABLE (which clients
        # retry), and SQLAlchemy then replaces every connection of the pool
        # older than that failure, so the next calls get fresh ones.
        # Fail fast when the server is down instead of hanging the call
        # (connect_timeout, in connect_args).
        connect_args=connect_args,
        json_deserializer=load_json,  # given to psycopg, which parses json columns
    )
    if engine.dialect.driver == "psycopg":
        # COMMIT and ROLLBACK bounded too (pg_watchdog.WatchedConnection):
        # the connection psycopg.connect makes, of that class.
        event.listen(
            engine,
            "do_connect",
            lambda _dialect, _record, cargs, cparams: WatchedConnection.connect(*cargs, **cparams),
        )
    return engine


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
        consistent by itself: no transaction around it. Falls back to read()
        when the caller's deadline must lower PostgreSQL's statement_timeout
        (set_config(..., true) needs a transaction)."""
        left = deadline.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded("the call's deadline passed before the database was asked")
        self._check_reachable(self._read_role)
        tight = left is not None and (self._timeout is None or left < self._timeout)
        postgresql = self._single_bind.dialect.name == "postgresql"
        if tight and postgresql:
            with self.read() as connection:
                yield connection
            return
        if self._held is not None:
            with self._held.scope() as held:
                if held is not None:
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
        for role, engine in self.engines.items():
            self._pinging[role] = time.monotonic()
            try:
                file = self._files.get(role)
                if file is not None:
                    file.check()
                _select_one(engine)
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

    def dispose(self) -> None:
        if self._held is not None:
            self._held.close_all()
        for engine in self.engines.values():
            engine.dispose()


def _select_one(engine: Engine) -> None:
    """SELECT 1, once more on a new connection when the pooled one turns out
    dead: one connection killed (pg_terminate_backend, a restart since) is
    not a database down, and SQLAlchemy has just dropped the pool's older
    connections."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except sa_exc.DBAPIError as error:
        if not error.connection_invalidated:
            raise
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
