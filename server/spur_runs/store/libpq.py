"""PostgreSQL's hot reads sent through libpq by psycopg's own low-level API.

hot.py runs the hot reads on the DBAPI cursor. On PostgreSQL the cursor
itself was most of a GetRun's statement cost, in Python: its execute and
fetch build a query, ask whether to prepare it, and run a generator through
four waits. Measured in process, one GetRun's statement (10k runs): 85.5 µs
of CPU through `cursor.execute` and `fetchall`; 31.9 µs sent with
`PGconn.exec_prepared` (psycopg.pq), its parameters dumped and its rows
loaded by a `psycopg.adapt.Transformer` of the connection, which holds the
very dumpers and loaders the cursor uses (db.py's orjson for JSON columns
among them): the same values, types and all. libpq waits for the answer
without the interpreter lock, in one wait instead of four.

What the cursor did and this keeps doing:
- a prepared statement in autocommit (Database.read_one: GetRun, list
  pages), as psycopg prepares a query it has run five times; none on a
  connection whose `prepare_threshold` is None (PgBouncer in transaction
  mode). One that is gone (psycopg's DEALLOCATE ALL, DISCARD ALL) is
  prepared again;
- the transaction: psycopg begins one lazily, at a statement, when the
  connection is not in autocommit. The first statement of such a connection
  is left to the cursor, which sends BEGIN (Database.read's REPEATABLE READ
  snapshot); later ones run in it;
- errors are psycopg's error classes (psycopg.errors.lookup by SQLSTATE), and
  hot.fetch raises them as SQLAlchemy's execution would.

A caller's deadline shorter than --db-timeout-seconds (the session's
statement_timeout) lowers the bound of each statement in a scope that
Database.read_one marks (DEADLINE_BOUND): `set_config('statement_timeout',
ms, true)` and the statement go in one pipeline before one Sync, so both run
in the implicit transaction that Sync ends. One round trip, as without a
deadline, and nothing is left on the session: the bound ends with that
transaction (a session SET would reach other clients' statements through
PgBouncer in transaction mode). PostgreSQL starts a fresh statement timer at
each Execute, so the read gets the lowered bound (tests/integration/
test_deadline_bound.py). A statement not yet prepared on the connection is
prepared in the same pipeline, after the bound: parsing it waits for a
locked table as running it does. Before, such a read began a transaction
for the bound: BEGIN, set_config, the read and ROLLBACK, four round trips.

Only statements written for psycopg come here: SQLAlchemy compiled them
(hot.Statement), or they are fixed SQL (runs._STATUS_LABELS).
"""

from __future__ import annotations

import hashlib
import re
import select
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from sqlalchemy import Connection

from .. import deadline
from .pg_watchdog import WATCHDOG, bound_of

# In SQL compiled for psycopg (pyformat): a parameter, or a percent sign
# doubled (a literal one).
_PYFORMAT = re.compile(r"%\(([^)]+)\)s|%%")

# The key of this module's state in the pooled connection's `info`, which
# SQLAlchemy keeps for the life of that DBAPI connection.
_STATE = "spur_runs.libpq"

_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_IN_TRANSACTION = pq.TransactionStatus.INTRANS
_PIPELINE_SYNC = pq.ExecStatus.PIPELINE_SYNC
_PIPELINE_OFF = pq.PipelineStatus.OFF
_NO_SUCH_STATEMENT = "26000"  # invalid_sql_statement_name
_ALREADY_PREPARED = "42P05"  # duplicate_prepared_statement


# The key, in a connection's `info`, that marks a scope of Database.read_one
# whose caller's deadline bounds its statements (module docstring).
DEADLINE_BOUND = "spur_runs.deadline_bound"

# Whether this libpq has pipeline mode (14 and later; psycopg-binary bundles
# a newer one). Without it Database.read_one bounds such reads in a
# transaction, as before.
PIPELINES: bool = psycopg.Pipeline.is_supported()

SET_BOUND = "SELECT set_config('statement_timeout', %s, true)"
_SET_BOUND = SET_BOUND.replace("%s", "$1").encode()


@contextmanager
def deadline_bound(conn: Connection) -> Iterator[None]:
    """Mark `conn`'s statements in this scope as bounded by the caller's
    deadline (see the module docstring)."""
    info = conn.info
    info[DEADLINE_BOUND] = True
    try:
        yield
    finally:
        info.pop(DEADLINE_BOUND, None)


def deadline_ms(info: Mapping[str, Any], dbapi: Any) -> bytes | None:
    """The bound, in milliseconds as text, that the caller's deadline sets on
    the next statement of the connection whose `info` and DBAPI connection
    these are: None outside a marked scope, or in a transaction
    (Database.read has lowered the bound there already)."""
    if not (info.get(DEADLINE_BOUND) and dbapi.autocommit):
        return None
    left = deadline.remaining()
    if left is None:
        return None
    # At least 1: 0 would turn the bound off. A deadline already past is
    # cancelled by the server at once (DEADLINE_EXCEEDED).
    return str(max(int(left * 1000), 1)).encode()


class Prepared:
    """One statement as libpq takes it, prepared once per connection: the SQL
    that SQLAlchemy compiled for psycopg, its parameters numbered ($1) as
    psycopg numbers them before it sends a query."""

    __slots__ = ("sql", "names", "name", "formats")

    def __init__(self, sql: str) -> None:
        numbers: dict[str, int] = {}

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                return "%"
            return f"${numbers.setdefault(name, len(numbers) + 1)}"

        self.sql = _PYFORMAT.sub(number, sql).encode()
        self.names = tuple(numbers)
        # One name per SQL text: two statements never share one.
        self.name = b"spur_runs_" + hashlib.sha1(self.sql).hexdigest()[:24].encode()
        # Every parameter as text: the server takes it as the type the
        # statement gives it (its casts, or what it compares with).
        self.formats = [PyFormat.TEXT] * len(self.names)


class _State:
    """What one DBAPI connection keeps: its Transformer and the names it has
    prepared."""

    __slots__ = ("dbapi", "transformer", "prepared", "watched")

    def __init__(self, dbapi: psycopg.Connection[Any]) -> None:
        self.dbapi = dbapi
        self.transformer = Transformer.from_context(dbapi)
        self.prepared: set[bytes] = set()
        self.watched = bound_of(dbapi)


def can_send(dbapi: Any) -> bool:
    """Whether this DBAPI connection takes statements through libpq here: a
    psycopg connection in autocommit or in a transaction already begun (else
    the cursor sends BEGIN first)."""
    return isinstance(dbapi, psycopg.Connection) and (
        dbapi.autocommit or dbapi.pgconn.transaction_status == _IN_TRANSACTION
    )


def fetch(
    conn: Connection,
    dbapi: psycopg.Connection[Any],
    statement: Prepared,
    arguments: Mapping[str, Any],
) -> list[tuple[Any, ...]]:
    """Every row of `statement` with `arguments` (by parameter name), as
    tuples of the values the cursor would have given. Raises psycopg's errors."""
    info = conn.connection.info
    state = info.get(_STATE)
    if state is None or state.dbapi is not dbapi:
        state = info[_STATE] = _State(dbapi)
    transformer = state.transformer
    params = transformer.dump_sequence([arguments[n] for n in statement.names], statement.formats)
    pgconn = dbapi.pgconn
    watched, bound = state.watched
    bound_ms = deadline_ms(info, dbapi)
    # A database that never answers (pg_watchdog.py).
    armed = watched and WATCHDOG.arm(dbapi, bound)
    try:
        if bound_ms is not None:
            result = _run_bounded(state, pgconn, statement, params, bound_ms, dbapi)
        elif dbapi.autocommit and dbapi.prepare_threshold is not None:
            result = _run_prepared(state, pgconn, statement, params)
        else:
            # In a transaction, an unnamed statement: a prepared one can be
            # gone (psycopg deallocates all of a connection's prepared
            # statements at a rollback after it prepared one of its own), and
            # the failure would abort the caller's transaction, where
            # autocommit can prepare it again. psycopg itself forgets what it
            # counted towards preparing at every rollback, so Database.read's
            # statements were unnamed too.
            result = pgconn.exec_params(statement.sql, params)
            _check(result, _TUPLES_OK)
    except BaseException:
        if armed:
            WATCHDOG.disarm(dbapi)
        raise
    if armed and not WATCHDOG.disarm(dbapi):
        # Cut as its answer came: the rows are whole, the socket is not.
        conn.invalidate()
    transformer.set_pgresult(result)
    try:
        return transformer.load_rows(0, result.ntuples, tuple)
    finally:
        transformer.set_pgresult(None)


def _run_prepared(
    state: _State, pgconn: pq.abc.PGconn, statement: Prepared, params: Any
) -> pq.abc.PGresult:
    """Run the named statement, preparing it first where this connection has
    not (or no longer has) it. In autocommit: a failure changes nothing."""
    if statement.name not in state.prepared:
        _prepare(state, pgconn, statement)
    result = pgconn.exec_prepared(statement.name, params)
    if result.status != _TUPLES_OK and _sqlstate(result) == _NO_SUCH_STATEMENT:
        _prepare(state, pgconn, statement)  # deallocated since: once more
        result = pgconn.exec_prepared(statement.name, params)
    _check(result, _TUPLES_OK)
    return result


def _run_bounded(
    state: _State,
    pgconn: pq.abc.PGconn,
    statement: Prepared,
    params: Any,
    bound_ms: bytes,
    dbapi: psycopg.Connection[Any],
) -> pq.abc.PGresult:
    """Run the statement after lowering statement_timeout to `bound_ms`, in
    one round trip (module docstring). Named where the connection prepares
    statements, as _run_prepared, and prepared in the same pipeline after
    the bound: parsing waits for the table's lock as running does."""
    named = dbapi.prepare_threshold is not None
    prepare = named and statement.name not in state.prepared
    for _ in range(2):
        results = _pipelined(pgconn, statement, params, bound_ms, named, prepare)
        if prepare:
            code = _sqlstate(results[1])
            if results[1].status == _COMMAND_OK or code == _ALREADY_PREPARED:
                state.prepared.add(statement.name)  # kept, whatever the read did
            if code == _ALREADY_PREPARED:
                prepare = False  # the read was skipped: once more without
                continue
        elif named and _sqlstate(results[-1]) == _NO_SUCH_STATEMENT:
            state.prepared.discard(statement.name)  # deallocated since: once more
            prepare = True
            continue
        break
    for result in results:  # the first failure; those after it were skipped
        if result.status not in (_TUPLES_OK, _COMMAND_OK):
            _check(result, _TUPLES_OK)
    return results[-1]


def _pipelined(
    pgconn: pq.abc.PGconn,
    statement: Prepared,
    params: Any,
    bound_ms: bytes,
    named: bool,
    prepare: bool,
) -> list[pq.abc.PGresult]:
    """set_config, the statement's Parse where `prepare`, and the statement,
    in one pipeline before one Sync: their results in that order. After a
    failure PostgreSQL skips the rest (PIPELINE_ABORTED) and rolls back the
    implicit transaction at the Sync."""
    pgconn.enter_pipeline_mode()
    try:
        pgconn.send_query_params(_SET_BOUND, [bound_ms])
        if prepare:
            pgconn.send_prepare(statement.name, statement.sql)
        if named:
            pgconn.send_query_prepared(statement.name, params)
        else:
            pgconn.send_query_params(statement.sql, params)
        pgconn.pipeline_sync()  # sends the Sync and flushes
        results: list[pq.abc.PGresult] = []
        while True:
            result = _next_result(pgconn)
            if result is None:  # the end of one statement's results
                continue
            if result.status == _PIPELINE_SYNC:
                break
            results.append(result)
    finally:
        if pgconn.pipeline_status != _PIPELINE_OFF:
            try:
                pgconn.exit_pipeline_mode()
            except psycopg.Error:
                # Results still pending (the connection failed mid-way, or
                # the wait was interrupted): closed, so that no one reuses it
                # in pipeline mode; SQLAlchemy and held.py replace a closed
                # connection.
                pgconn.finish()
    expected = 3 if prepare else 2
    if len(results) != expected:
        raise psycopg.OperationalError(
            f"a pipeline of {expected} messages gave {len(results)} results"
        )
    return results


def _next_result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
    """The next result, waited for in poll() (without the interpreter lock):
    libpq's own blocking wait for a pipeline's result would hold it. The
    connection is non-blocking (psycopg's): what the socket did not take
    yet is still in libpq, and the server answers only once the Sync comes,
    so until it is all sent this waits to write too, as libpq's
    documentation asks (consume_input sends more)."""
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            return pgconn.get_result()
        events = select.POLLIN
        if pgconn.flush():
            events |= select.POLLOUT
        poller = select.poll()
        poller.register(pgconn.socket, events)
        poller.poll()


def _prepare(state: _State, pgconn: pq.abc.PGconn, statement: Prepared) -> None:
    prepared = pgconn.prepare(statement.name, statement.sql)
    if _sqlstate(prepared) != _ALREADY_PREPARED:
        _check(prepared, _COMMAND_OK)
    state.prepared.add(statement.name)


def _sqlstate(result: pq.abc.PGresult) -> str | None:
    code = result.error_field(pq.DiagnosticField.SQLSTATE)
    return code.decode() if code else None


def _check(result: pq.abc.PGresult, expected: pq.ExecStatus) -> None:
    """Raise the error of a failed `result` as psycopg's class for its SQLSTATE."""
    if result.status == expected:
        return
    message = result.error_message.decode(errors="replace").strip() or "statement failed"
    code = _sqlstate(result)
    try:
        error_class = psycopg.errors.lookup(code) if code else psycopg.OperationalError
    except KeyError:  # a SQLSTATE psycopg has no class for
        error_class = psycopg.DatabaseError
    raise error_class(message)
