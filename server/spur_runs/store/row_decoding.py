"""How the hot reads (hot.py) decode a row's values: each column's
processor, and one generated function per statement that decodes a whole
row as one expression.

SQLAlchemy's result processors decode what a driver gives (SQLite's DATETIME
text, its JSON text, enum names); three of them are replaced here by the
same work in one C call each (`datetime.fromisoformat`, `orjson.loads`, an
enum's members), with SQLAlchemy's own as the fallback. `row_decoder` writes
those inline, with no call of ours per value; a row they refuse goes to the
processors one by one, and a value no processor reads is DATA_LOSS naming
its row and column. All of it runs when a statement is compiled (hot.py's
_Compiled), once per dialect; the decoders it builds run per row.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import JSON, DateTime, String
from sqlalchemy.sql import Select

from ..errors import DataLoss
from .engine import load_json

Processor = Callable[[Any], Any]


def sqlite_datetime(fallback: Processor | None) -> Processor:
    """SQLite's DATETIME text ("2026-11-29 12:04:00.123456", as SQLAlchemy
    and so PySpur write it) to a naive datetime, in C; anything fromisoformat
    refuses goes to SQLAlchemy's own processor (which raises, or parses a
    storage format of its own)."""
    parse = datetime.fromisoformat

    def process(value: Any) -> Any:
        if value is None or type(value) is not str:
            return value
        try:
            return parse(value)
        except ValueError:
            return fallback(value) if fallback is not None else value

    return process


def json_timestamp(value: Any) -> Any:
    """A timestamp in PostgreSQL's JSON ("2026-11-29T12:04:00.123456", with
    its offset for a timestamptz) to a datetime, in C."""
    return None if value is None else datetime.fromisoformat(value)


def enum_member(enum_class: type[enum.Enum]) -> Processor:
    """A stored enum name to its member, as SQLAlchemy's Enum reads it (a
    name that is no member raises LookupError), in one lookup."""
    members = enum_class.__members__

    def process(value: Any) -> Any:
        if value is None:
            return None
        try:
            return members[value]
        except KeyError:
            raise LookupError(
                f"{value!r} is not among the names of {enum_class.__name__}"
            ) from None

    return process


def sqlite_json(value: Any) -> Any:
    """SQLite's JSON text, parsed as engine.create_db_engine's json_deserializer
    (engine.load_json) parses it: SQLAlchemy's processor calls that function.
    orjson is called here, not through load_json: one Python call fewer for
    each of a GetRun's ~13 JSON values; load_json takes what orjson refuses."""
    if value is None:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return load_json(value)


def packed_as_text(column_type: Any) -> bool:
    """Whether SQLite's json_array is given a column's value as text. It
    refuses a BLOB ("JSON cannot hold BLOB values": INTERNAL on every read
    of the run), and sqlite3 stores one for bytes given to any column:
    PySpur's own ORM did, for a task's `error`, and serves it as text
    (a review, 2026-12-04). Text, times and JSON are text already; CAST
    leaves them as they are, and numbers stay numbers."""
    return isinstance(column_type, (String, DateTime, JSON))  # (Enum is a String)


class Inline(NamedTuple):
    """A column's decoding as row_decoder writes it inline: an expression
    of the value `{v}` that calls or indexes `helper` as `{h}`. It is the
    processor's common case; anything it raises on (an enum name that is no
    member, text that is no ISO timestamp or strict JSON, a value of
    another type) sends the row to the processors, which decide."""

    template: str
    helper: Any


# The helper called on the value, None kept.
CALL = "None if {v} is None else {h}({v})"


# The rows whose columns a statement reads, by the table of its "id" column,
# as an error names them.
_NOUNS = {"runs": "run", "tasks": "task", "workflow_versions": "workflow version"}


class Columns(NamedTuple):
    """What an error about a stored value says of its row (_slow_decoder)."""

    keys: tuple[str, ...]
    times: frozenset[int]  # the DATETIME columns' indexes
    id_index: int | None
    noun: str

    @classmethod
    def of(cls, statement: Select[Any]) -> Columns:
        selected = list(statement.selected_columns)
        keys = tuple(str(column.key) for column in selected)
        id_index = keys.index("id") if "id" in keys else None
        # The id's table, through the subqueries it may be read from.
        tables = (
            [getattr(getattr(c, "table", None), "name", "") for c in selected[id_index].proxy_set]
            if id_index is not None
            else []
        )
        return cls(
            keys,
            frozenset(i for i, c in enumerate(selected) if isinstance(c.type, DateTime)),
            id_index,
            next((_NOUNS[name] for name in tables if name in _NOUNS), "row"),
        )


def _slow_decoder(processors: Mapping[int, Processor], columns: Columns) -> Processor:
    """A row decoded by its columns' processors, one at a time: the rare row
    the inline expressions refuse. A stored value that no processor reads
    (text that is no time, JSON that is no JSON, a status PySpur does not
    write, a number in a DATETIME column, all written by some other tool)
    is DATA_LOSS naming the row and the column. It used to raise on, as
    INTERNAL with a traceback on every read of the row (a review, 2026-12-03)."""

    def decode(row: Any) -> tuple[Any, ...]:
        values = list(row)
        for i, process in processors.items():
            try:
                value = process(values[i])
            except Exception as error:  # noqa: BLE001 - any processor's refusal
                raise _unreadable(values, columns, i, str(error)) from None
            if value is not None and i in columns.times and not isinstance(value, datetime):
                raise _unreadable(values, columns, i, f"a {type(value).__name__}, not a time")
            values[i] = value
        return tuple(values)

    return decode


def _unreadable(values: list[Any], columns: Columns, index: int, reason: str) -> DataLoss:
    where = columns.noun
    if columns.id_index is not None:
        where += f" {values[columns.id_index]}"
    if len(reason) > 120:
        reason = reason[:117] + "..."
    return DataLoss(
        f"{where}: {columns.keys[index]} holds a value this service cannot read ({reason})"
    )


def row_decoder(
    width: int,
    results: Sequence[tuple[int, Processor]],
    inline: Mapping[int, Inline],
    columns: Columns,
) -> Callable[[Any], Any]:
    """A function of a row that returns it as a tuple with the columns of
    `results` decoded, as one expression: one call per row, none per
    column that needs no decoding (measured: a third of the cost of a loop
    over the processors). The columns of `inline` are decoded without a
    call of ours either: a task row holds seven values to decode, and one
    call per value cost 2.6% of a GetRun's instructions in process (886.8k
    -> 864.0k on SQLite); a row that the inline expressions refuse is
    decoded by the processors."""
    processors = dict(results)
    namespace: dict[str, Any] = {f"p{i}": process for i, process in processors.items()}
    namespace["slow"] = _slow_decoder(processors, columns)
    fast = [f"r{i}" if i not in processors else f"p{i}(r{i})" for i in range(width)]
    for i, (template, helper) in inline.items():
        if i in processors:
            namespace[f"h{i}"] = helper
            fast[i] = f"({template.format(v=f'r{i}', h=f'h{i}')})"
    names = ", ".join(f"r{i}" for i in range(width))
    source = (
        "def decode(row):\n"
        "    try:\n"
        f"        {names}, = row\n"
        f"        return ({', '.join(fast)},)\n"
        "    except Exception:\n"
        "        pass\n"
        "    return slow(row)\n"
    )
    exec(source, namespace)  # noqa: S102 - source built above from column indexes only
    return namespace["decode"]  # type: ignore[no-any-return]
