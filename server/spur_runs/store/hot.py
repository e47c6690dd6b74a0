"""The hot reads' statements, run on the DBAPI cursor.

SQLAlchemy builds and compiles each statement once per dialect (here, at
first use) and still owns the schema, the migrations, the pool, the
transactions and their events; what it no longer does on these reads is its
per-execution machinery: an execution context, a result object and its
metadata, a Row per row. Measured in process on SQLite (a GetRun of 6
tasks): 216 µs through Connection.execute, of which 70 µs are sqlite3's
execute and fetch; exec_driver_sql is no cheaper (183 µs: it builds the
result's metadata on every call).

What SQLAlchemy's execution did and these reads must keep doing:
- the engine's and connection's `before_cursor_execute` listeners run on each
  statement (db.py's SQLite watchdog arms the call's deadline there; tests
  and bench/run.py count statements there), called as SQLAlchemy calls them
  (through `Connection.dispatch`);
- bind values go through their types' bind processors (SQLite stores
  datetimes as text that the keyset conditions compare);
- result values through their types' result processors, except three that
  are decoded in one call each (row_decoding.py), as SQLAlchemy decodes them but without
  its layers of calls around the same work: SQLite's DATETIME text
  (datetime.fromisoformat, which SQLAlchemy's parser calls too), SQLite's
  JSON text (engine.load_json, its json_deserializer) and enum names (the
  member of that name);
- a driver error is raised as SQLAlchemy's wrapper of it (rpc/status.py maps
  those), and a dropped connection is handed to SQLAlchemy (see _raise), which
  invalidates it and the pool's older connections.

On PostgreSQL, the cursor itself cost more than the rest of the read: the
statements go through libpq instead, by psycopg's own low-level API, where
the connection allows (libpq.py says when, and what it keeps).

Statements with an expanding IN are not run here: their SQL text depends on
the number of values (statements.py builds one statement per number instead).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any, NoReturn

import orjson
from sqlalchemy import JSON, Connection, DateTime, Enum, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Select

from . import libpq
from .engine import MAX_TEXT_OPTION, bound_text, text_too_large
from .held import HELD_OPTION
from .row_decoding import (
    CALL,
    Columns,
    Inline,
    Processor,
    enum_member,
    json_timestamp,
    packed_as_text,
    row_decoder,
    sqlite_datetime,
    sqlite_json,
)


class _Compiled:
    """One statement compiled for one dialect."""

    __slots__ = (
        "sql",
        "order",
        "fixed",
        "binds",
        "decode_row",
        "unpack_row",
        "packed",
        "sort_key",
        "reverse",
        "libpq",
    )

    def __init__(
        self, statement: Select[Any], dialect: Dialect, sort_by: tuple[int, ...], reverse: bool
    ) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        width = len(statement.selected_columns)
        # SQLite: all rows in one (see Statement). Its parameters keep their
        # places: the wrapper adds none.
        self.packed = bool(sort_by) and dialect.name == "sqlite"
        self.sort_key = itemgetter(*sort_by) if sort_by else None
        self.reverse = reverse
        # PostgreSQL through psycopg: also compiled for libpq (libpq.py).
        self.libpq = (
            libpq.Prepared(self.sql)
            if dialect.name == "postgresql" and dialect.driver == "psycopg"
            else None
        )
        if self.packed:
            names = [f"c{i}" for i in range(width)]
            values = [
                f"CAST({name} AS TEXT)" if packed_as_text(column.type) else name
                for name, column in zip(names, statement.selected_columns, strict=True)
            ]
            self.sql = (
                f"WITH packed({', '.join(names)}) AS ({self.sql}) "
                f"SELECT json_group_array(json_array({', '.join(values)})) FROM packed"
            )
        # Positional drivers (sqlite3's qmark) take a tuple in this order;
        # pyformat ones (psycopg) a dict.
        self.order: tuple[str, ...] | None = (
            tuple(compiled.positiontup) if compiled.positiontup else None
        )
        # Values SQLAlchemy bound itself (literals it turned into parameters).
        self.fixed = dict(compiled.params)
        self.binds: dict[str, Processor] = {}
        for name, bind in compiled.binds.items():
            encode = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if encode is not None:
                self.binds[name] = encode
        results: list[tuple[int, Processor]] = []
        # The processors of ours that the row decoders write inline
        # (row_decoder), by index: of both lists, and of from_json only.
        inline: dict[int, Inline] = {}
        inline_json: dict[int, Inline] = {}
        # The same rows as JSON arrays (unpack): on SQLite its values as the
        # driver gives them; from PostgreSQL's json_build_array, timestamps
        # are ISO text and JSON columns already parsed (with the array).
        from_json: list[tuple[int, Processor]] = []
        for index, column in enumerate(statement.selected_columns):
            process: Processor | None = column.type.dialect_impl(dialect).result_processor(
                dialect, None
            )
            in_json = process
            if isinstance(column.type, Enum) and column.type.enum_class is not None:
                process = in_json = enum_member(column.type.enum_class)
                inline[index] = Inline("{h}[{v}]", column.type.enum_class.__members__)
            elif isinstance(column.type, DateTime):
                if dialect.name == "sqlite":
                    process = in_json = sqlite_datetime(process)
                    inline[index] = Inline(CALL, datetime.fromisoformat)
                else:
                    in_json = json_timestamp
                    inline_json[index] = Inline(CALL, datetime.fromisoformat)
            elif isinstance(column.type, JSON):
                if dialect.name == "sqlite":
                    process = in_json = sqlite_json
                    inline[index] = Inline(CALL, orjson.loads)
                else:
                    in_json = None
            if process is not None:
                results.append((index, process))
            if in_json is not None:
                from_json.append((index, in_json))
        columns = Columns.of(statement)
        self.decode_row = row_decoder(width, results, inline, columns) if results else None
        if from_json == results:  # SQLite: the same values either way
            self.unpack_row = self.decode_row
        else:
            inline_json.update(inline)
            self.unpack_row = (
                row_decoder(width, from_json, inline_json, columns) if from_json else None
            )

    def arguments(self, params: Mapping[str, Any]) -> Any:
        values = {**self.fixed, **params}
        for name, process in self.binds.items():
            if name in values:
                values[name] = process(values[name])
        if self.order is None:
            return values
        return tuple([values[name] for name in self.order])

    def decode(self, rows: list[Any]) -> list[tuple[Any, ...]]:
        if self.packed:
            return self.unpack(rows[0][0])
        decode = self.decode_row
        return rows if decode is None else [decode(row) for row in rows]

    def unpack(self, packed: Any) -> list[tuple[Any, ...]]:
        """The rows of a JSON array of row arrays (its text, or the array):
        SQLite's text, integer and NULL values are JSON strings, numbers and
        nulls as they are (JSON columns are text: they stay strings until
        decoded as below). Its order is the statement's in practice, which
        SQLite does not promise for an aggregate: sorted again by the ORDER
        BY's columns, which compare in Python as in SQLite (text by code
        point, integers; a NULL among them only in a lone row)."""
        rows = orjson.loads(packed) if isinstance(packed, str | bytes) else packed
        if len(rows) > 1:
            assert self.sort_key is not None
            try:
                rows.sort(key=self.sort_key, reverse=self.reverse)
            except TypeError:  # mixed types (a number among texts): as SQLite gave them
                pass
        decode = self.unpack_row
        return [tuple(row) for row in rows] if decode is None else [decode(row) for row in rows]


class Statement:
    """A select() compiled once per dialect and run on the DBAPI cursor.

    `sort_by` (the indexes of the selected columns of the statement's ORDER
    BY, which make each row's key unique; `reverse` for DESC) packs the rows
    on SQLite: the statement answers one row of one column, a JSON array of
    the rows, put back in that order.
    sqlite3 (CPython 3.11) lets go of the interpreter lock for every row it
    steps to and for every column of every row it reads (its type), and
    under load another RPC thread takes the lock each time, which this one
    then waits to get back: two context switches. Counted with a probe on
    PyEval_SaveThread under the bench's GetRun load: 35 releases per call,
    16 of them reading the 15 columns of GetRun's one row. One array is
    also parsed in one call, in C."""

    def __init__(
        self,
        statement: Select[Any],
        *,
        sort_by: int | tuple[int, ...] = (),
        reverse: bool = False,
    ) -> None:
        self.statement = statement
        self._sort_by = (sort_by,) if isinstance(sort_by, int) else sort_by
        self._reverse = reverse
        self._compiled: dict[str, _Compiled] = {}
        self._lock = threading.Lock()

    def compiled(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect.name)
        if found is None:
            with self._lock:
                found = self._compiled.setdefault(
                    dialect.name, _Compiled(self.statement, dialect, self._sort_by, self._reverse)
                )
        return found

    def unpack(self, dialect: Dialect, packed: Any) -> list[tuple[Any, ...]]:
        """This statement's rows from a packed array that another statement
        answered (SQLite: each run of a list page carries its tasks so)."""
        return self.compiled(dialect).unpack(packed)

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """All rows of the statement with `params`, decoded as plain tuples in
        the order of its selected columns."""
        compiled = self.compiled(conn.dialect)
        return compiled.decode(
            fetch(conn, compiled.sql, compiled.arguments(params), compiled.libpq)
        )


def fetch(
    conn: Connection, sql: str, arguments: Any, prepared: libpq.Prepared | None = None
) -> list[Any]:
    """Run `sql` on `conn`'s DBAPI connection, in its transaction (if any),
    and fetch every row; through libpq (libpq.py) when `prepared` is that
    statement compiled for it and the connection can take it there."""
    options = conn.get_execution_options()
    # The cheap tests first: asking whether SQLAlchemy's event collection has
    # listeners walks its nested collections, and a kept connection (GetRun's
    # usual one) needs no answer from it.
    if not options.get(HELD_OPTION, False) and not conn.in_transaction() and conn.dispatch.begin:
        # Begin as SQLAlchemy's autobegin would, for its "begin" listeners
        # (db.py: SQLite's busy_timeout put back after a write lowered it).
        # Without listeners there is nothing to run: a PostgreSQL connection
        # outside a transaction is in autocommit (Database.read_one), and
        # SQLAlchemy's transaction would only roll back nothing at the end.
        # Nor on a connection kept for single reads (held.py): it never
        # writes, so the SQLite listener has nothing to put back there.
        conn.begin()
    dbapi: Any = conn.connection.dbapi_connection
    listeners = conn.dispatch.before_cursor_execute
    cursor = None
    bound_ms = None
    try:
        if listeners:
            cursor = dbapi.cursor()
            given = (sql, arguments)
            for listener in listeners:
                sql, arguments = listener(conn, cursor, sql, arguments, None, False)
            if sql is not given[0] or arguments is not given[1]:
                prepared = None  # a listener rewrote the statement: send what it gave
                # ...through the cursor, where the caller's deadline bounds it
                # in a transaction of its own (libpq.py bounds the others).
                bound_ms = libpq.deadline_ms(conn.connection.info, dbapi)
        # Rows too large for any response are refused before they are
        # decoded (db.text_bound): psycopg decodes JSON as it loads rows.
        max_text: int | None = options.get(MAX_TEXT_OPTION)
        try:
            if prepared is not None and libpq.can_send(dbapi):
                if max_text is None:
                    return libpq.fetch(conn, dbapi, prepared, arguments)
                bound_text(max_text)
                try:
                    return libpq.fetch(conn, dbapi, prepared, arguments)
                finally:
                    bound_text(None)
            if cursor is None:
                cursor = dbapi.cursor()
            if bound_ms is not None:
                with dbapi.transaction():
                    cursor.execute(libpq.SET_BOUND, [bound_ms.decode()])
                    cursor.execute(sql, arguments)
                    rows = cursor.fetchall()
            else:
                cursor.execute(sql, arguments)
                rows = cursor.fetchall()
            # One row is bounded by SQLite itself (engine._sqlite_connect: the
            # limit holds for a row too); many rows are counted here.
            if max_text is not None and len(rows) > 1 and _text_of(rows) > max_text:
                raise text_too_large(max_text)
            return list(rows)
        except conn.dialect.loaded_dbapi.Error as error:
            if max_text is not None and getattr(error, "sqlite_errorname", "") == "SQLITE_TOOBIG":
                raise text_too_large(max_text) from None  # engine._sqlite_connect's limit
            _raise(conn, cursor, sql, arguments, error)
    finally:
        if cursor is not None:
            cursor.close()


def _text_of(rows: list[Any]) -> int:
    """The characters of the text values of `rows` (SQLite's packed row is
    one): what decoding them would turn into Python objects."""
    size = 0
    for row in rows:
        for value in row:
            if type(value) is str or type(value) is bytes:
                size += len(value)
    return size


def _raise(conn: Connection, cursor: Any, sql: str, arguments: Any, error: Any) -> NoReturn:
    """Raise `error` as SQLAlchemy's execution would have."""
    dialect = conn.dialect
    if dialect.is_disconnect(error, conn.connection.dbapi_connection, cursor):
        # Let SQLAlchemy meet the dead connection itself: it invalidates it
        # and every pooled connection older than this failure, and raises
        # its wrapper marked connection_invalidated (UNAVAILABLE).
        conn.execute(text("SELECT 1"))
    raise sa_exc.DBAPIError.instance(
        sql, arguments, error, dialect.loaded_dbapi.Error, dialect=dialect
    ) from error


def row_type(name: str, keys: Sequence[str]) -> type[tuple[Any, ...]]:
    """A tuple type whose items are also read by name, as namedtuple makes
    them (which refuses names such as `_intid`)."""
    namespace: dict[str, Any] = {"__slots__": ()}
    namespace.update((key, property(itemgetter(i))) for i, key in enumerate(keys))
    return type(name, (tuple,), namespace)
