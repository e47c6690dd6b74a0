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

Only statements SQLAlchemy compiled (hot.Statement) come here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from sqlalchemy import Connection

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
_NO_SUCH_STATEMENT = "26000"  # invalid_sql_statement_name
_ALREADY_PREPARED = "42P05"  # duplicate_prepared_statement


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
    # A database that never answers (pg_watchdog.py).
    armed = watched and WATCHDOG.arm(dbapi, bound)
    try:
        if dbapi.autocommit and dbapi.prepare_threshold is not None:
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
