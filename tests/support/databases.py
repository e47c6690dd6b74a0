"""The databases tests run on: the PostgreSQL at 127.0.0.1:5432 (or
SPUR_RUNS_TEST_POSTGRES), one new database per use. Under CI (CI=true) a
PostgreSQL that cannot be reached fails the suite; elsewhere its tests are
skipped."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get(
    "SPUR_RUNS_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() == "true"


def _postgres_unreachable(error: Exception) -> None:
    message = f"PostgreSQL at {PG_ADMIN_URL} unreachable: {error}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def new_postgres_database(prefix: str = "spur_test") -> Iterator[str]:
    """URL of a new, empty PostgreSQL database, dropped at the end."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # noqa: BLE001
        admin.dispose()
        _postgres_unreachable(error)
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
