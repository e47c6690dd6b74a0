"""Database URLs as logs, messages and printed output show them (store/engine.py
shown_url): no password, neither in user:password@ nor in the query string,
where libpq takes `password` and `sslpassword` too."""

from __future__ import annotations

import pytest

from spur_runs.config import ConfigError
from spur_runs.store.engine import shown_url
from spur_runs.store.schema_check import require_tables


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://u@127.0.0.1:25999/x?password=qs3cret",
            "postgresql://u@127.0.0.1:25999/x?password=***",
        ),
        (
            "postgresql+psycopg://u:pw@h/x?sslpassword=k3y&sslmode=require",
            "postgresql+psycopg://u:***@h/x?sslmode=require&sslpassword=***",
        ),
        (
            "postgresql://u@h/x?PassWord=a&password=b",
            "postgresql://u@h/x?PassWord=***&password=***",
        ),
        # Files are no secret; nor are other parameters (as SQLAlchemy renders them).
        (
            "postgresql://u@h/x?passfile=/etc/pgpass&application_name=runs",
            "postgresql://u@h/x?application_name=runs&passfile=%2Fetc%2Fpgpass",
        ),
        ("sqlite:////var/lib/runs.db", "sqlite:////var/lib/runs.db"),
    ],
)
def test_secrets_in_a_url_are_masked(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_a_repeated_secret_parameter_is_masked_whole() -> None:
    shown = shown_url("postgresql://u@h/x?password=one&password=two")
    assert "one" not in shown and "two" not in shown and "password=***" in shown


def test_a_start_up_error_does_not_show_the_password() -> None:
    """require_tables names the database in its message (`spur-runs serve`,
    seed and demo print it and exit 2)."""
    with pytest.raises(ConfigError) as raised:
        require_tables("sqlite:///:memory:?password=qs3cret")
    assert "qs3cret" not in str(raised.value)
    assert "password=***" in str(raised.value)
