"""store/libpq.py numbers a pyformat statement's parameters as psycopg does
before sending it: one number per name, in order of first use, and a
doubled percent sign is a literal one."""

from __future__ import annotations

from spur_runs.store.libpq import Prepared


def test_parameters_are_numbered_by_first_use() -> None:
    prepared = Prepared("SELECT %(b)s, %(a)s::VARCHAR WHERE x = %(b)s LIMIT %(limit_1)s")
    assert prepared.sql == b"SELECT $1, $2::VARCHAR WHERE x = $1 LIMIT $3"
    assert prepared.names == ("b", "a", "limit_1")


def test_a_doubled_percent_sign_is_a_literal_one() -> None:
    prepared = Prepared("SELECT 'a%%(b)s' || %(c)s, 5 %% 2")
    assert prepared.sql == b"SELECT 'a%(b)s' || $1, 5 % 2"
    assert prepared.names == ("c",)


def test_a_statement_is_named_by_its_text() -> None:
    one, same, other = Prepared("SELECT %(a)s"), Prepared("SELECT %(a)s"), Prepared("SELECT 1")
    assert one.name == same.name != other.name
    assert one.name.startswith(b"spur_runs_") and len(one.name) < 64  # NAMEDATALEN
