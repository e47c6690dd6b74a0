"""Engines for SQLite (the embedded default) and PostgreSQL (psycopg 3,
pooled), and what they are made of: the connection hooks that set SQLite up
(WAL, foreign keys, busy_timeout, a watchdog for runaway statements), libpq's
dead-peer bounds, the JSON decoder with its text bound, and database URLs as
given and as shown. db.Database builds its session scopes on these engines;
migrate, seed and schema_check use them directly.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

from .. import deadline
from ..addresses import PREPARE_THRESHOLD, prepare_threshold
from ..errors import ResourceExhausted
from .pg_watchdog import WatchedConnection, watched_cursor

log = logging.getLogger(__name__)

WRITE_OPTION = "spur_runs_write"
SINGLE_OPTION = "spur_runs_single_statement"

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


def _finite_or_none(text: str) -> float | None:
    number = float(text)
    return number if math.isfinite(number) else None


def load_json(text: str | bytes) -> Any:
    """JSON columns as Python values. orjson parses them ~8x faster than the
    json module (the tasks of a list page hold ~60 JSON values); it refuses
    NaN and Infinity, which Python's json.dumps writes and PySpur may have
    stored, and numbers beyond a double (1e400), so those documents take
    the json module's slower path, which reads all of these as None: a
    protobuf Value holding NaN or an infinity has no proto3 JSON form (Go's
    protojson, Python's json_format and protobuf-es refuse the whole
    message), and PySpur's own answers have them as null."""
    left = getattr(_TEXT, "left", None)
    if left is not None:
        _TEXT.left = left = left - len(text)
        if left < 0:
            raise text_too_large(_TEXT.limit)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text, parse_constant=_not_a_number, parse_float=_finite_or_none)


def _not_a_number(_constant: str) -> None:
    """NaN, Infinity and -Infinity: see load_json."""
    return None


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
        # psycopg's (and libpq's) least: a SYN lost (a partition) goes again
        # after 1 s, and next after 3 s, as the attempt ends anyway; so a
        # failed attempt ends sooner and the next one (health's ping, every
        # --health-interval) sends a SYN of its own (runtime/health.py).
        "connect_timeout": 2,
        **dead_peer_args(dead_peer_seconds),
        # A client-side bound too, for a database that never answers.
        "cursor_factory": watched_cursor(timeout_seconds),
    }
    if PREPARE_THRESHOLD in parsed.query:
        # Given to psycopg.connect as its keyword (addresses.PREPARE_THRESHOLD),
        # not to libpq, and as a number or None: SQLAlchemy would pass the
        # text on, which psycopg compares with its counts (a TypeError at
        # every statement). libpq.py reads it from the connection.
        connect_args["prepare_threshold"] = prepare_threshold(parsed.query[PREPARE_THRESHOLD])
        parsed = parsed.difference_update_query([PREPARE_THRESHOLD])
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
    if timeout_seconds is not None:
        shown = shown_url(parsed)
        event.listen(
            engine,
            "first_connect",
            lambda dbapi_connection, _record: _warn_dropped_options(dbapi_connection, shown),
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


def _warn_dropped_options(dbapi: Any, shown: str) -> None:
    """On an engine's first connection: warn when its statement_timeout came
    from somewhere other than the start-up options that carry
    --db-timeout-seconds (pg_settings.source 'client'). PgBouncer drops them
    where told to (ignore_startup_parameters) and refuses them otherwise; a
    plain proxy passes them on. It cannot tell PgBouncer's session mode
    from its transaction mode, where named prepared statements fail now and
    then (docs/production.md), so it warns and names the URL's
    prepare_threshold rather than change what the operator set. Nothing is
    said where prepared statements are off already. One statement per
    engine, never on a call's path."""
    if getattr(dbapi, "prepare_threshold", None) is None:
        return
    try:
        with dbapi.cursor() as cursor:
            cursor.execute("SELECT source FROM pg_settings WHERE name = 'statement_timeout'")
            row = cursor.fetchone()
        dbapi.rollback()  # the SELECT began a transaction; the pool expects none
    except Exception:  # noqa: BLE001 - a warning's check must not fail a connection
        log.debug("could not read where statement_timeout came from", exc_info=True)
        return
    if row is not None and row[0] != "client":
        log.warning(
            "%s: statement_timeout is the %s's, not --db-timeout-seconds: the start-up "
            "options were dropped, as PgBouncer does with ignore_startup_parameters. Through "
            "PgBouncer in transaction mode, add ?prepare_threshold=none to the URL "
            "(docs/production.md)",
            shown,
            row[0],
        )
