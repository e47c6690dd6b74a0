"""Every Config field is a flag of `spur-runs serve` with an environment
twin, documented in docs/configuration.md's table; flags win over twins."""

from __future__ import annotations

import dataclasses

import pytest

from spur_runs.cli import build_parser, load_config
from spur_runs.config import ENV, Config, ConfigError
from spur_runs.settings import explain
from tools import ROOT


def _serve_flags() -> set[str]:
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    return {flag for action in serve._actions for flag in action.option_strings}


def test_every_field_has_a_flag_a_twin_and_a_readme_row() -> None:
    fields = {f.name for f in dataclasses.fields(Config)}
    assert fields == set(ENV)
    flags = _serve_flags()
    readme = (ROOT / "docs" / "configuration.md").read_text()
    for name, variable in ENV.items():
        flag = "--" + name.replace("_", "-")
        assert flag in flags, flag
        assert f"`{flag}`" in readme and f"`{variable}`" in readme, name


def test_twins_are_read_and_flags_win() -> None:
    environ = {
        "SPUR_RUNS_WORKERS": "3",
        "SPUR_RUNS_REFLECTION": "false",
        "SPUR_RUNS_DB_TIMEOUT_SECONDS": "2.5",
        "SPUR_RUNS_LOG_FORMAT": "json",
        "SPUR_RUNS_GRPC_ADDRESS": "127.0.0.1:7000",
    }
    args = build_parser().parse_args(["serve", "--workers", "2", "--reflection"])
    config = load_config(args, environ)
    assert (config.workers, config.reflection) == (2, True)  # the flags
    assert (config.db_timeout_seconds, config.log_format) == (2.5, "json")  # the twins
    args = build_parser().parse_args(["serve", "--no-reflection"])
    assert load_config(args, {}).reflection is False


def test_a_command_reads_the_twins_of_its_own_flags_only() -> None:
    """migrate has no --grpc-address: its twin is neither used nor checked
    there (serve refuses it); --log-format is every command's."""
    environ = {"SPUR_RUNS_GRPC_ADDRESS": "bad", "SPUR_RUNS_LOG_FORMAT": "json"}
    for command in ("migrate", "seed", "demo", "backup"):
        args = build_parser().parse_args([command] + (["copy.db"] if command == "backup" else []))
        config = load_config(args, environ)
        assert (config.grpc_address, config.log_format) == (Config().grpc_address, "json")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://u:s3cret@db:543x/pyspur", "its port is not a number from 0 to 65535"),
        ("postgresql://u:s3cret@db:99999/pyspur", "its port is not a number from 0 to 65535"),
        ("postgresql://u:s3cret@[::1/pyspur", "its port is not a number from 0 to 65535"),
        ("sqlite:", "is not one SQLAlchemy can read (sqlite:///FILE, postgresql://USER@HOST/DB)"),
        (
            "sqlite+aiosqlite:///runs.db",
            "SQLite is read through Python's sqlite3: sqlite:///FILE, not sqlite+aiosqlite",
        ),
        (
            "postgresql://u:s3cret@db/pyspur?prepare_threshold=off",
            "prepare_threshold must be none or a whole number 0 or more",
        ),
        (
            "postgresql://u:s3cret@db/pyspur?prepare_threshold=none&prepare_threshold=5",
            "prepare_threshold must be none or a whole number 0 or more",
        ),
    ],
)
@pytest.mark.parametrize("command", ["serve", "migrate", "seed", "demo", "backup"])
def test_a_database_url_no_command_can_open_is_a_bad_setting(
    command: str, url: str, problem: str
) -> None:
    """Refused at start as every bad setting is (one line, exit 2, the
    setting named, the URL never quoted: it may hold a password). They were
    each command's exit 1, in SQLAlchemy's words ("invalid literal for int()
    with base 10: '543x'", "Can't load plugin: sqlalchemy.dialects:...")."""
    args = build_parser().parse_args([command, *(["x.db"] if command == "backup" else [])])
    with pytest.raises(ConfigError) as raised:
        load_config(args, {"SPUR_RUNS_DATABASE_URL": url})
    line = explain(raised.value, args, {"SPUR_RUNS_DATABASE_URL": url})
    assert line == f"SPUR_RUNS_DATABASE_URL: {problem}"


def test_two_listeners_on_one_address_are_a_bad_setting() -> None:
    """It stopped with "cannot listen on 127.0.0.1:7000: Address already in
    use", as if another process held the port. Port 0 (any free port) is
    not one address."""
    args = build_parser().parse_args(
        ["serve", "--grpc-address", "127.0.0.1:7000", "--http-address", "127.0.0.1:0"]
    )
    environ = {"SPUR_RUNS_HEALTH_ADDRESS": "127.0.0.1:7000"}
    with pytest.raises(ConfigError) as raised:
        load_config(args, environ)
    assert explain(raised.value, args, environ) == (
        "--grpc-address=127.0.0.1:7000, SPUR_RUNS_HEALTH_ADDRESS=127.0.0.1:7000: "
        "are the same address: each needs a port of its own"
    )
    args = build_parser().parse_args(["serve", "--grpc-address", "127.0.0.1:0"])
    assert load_config(args, {"SPUR_RUNS_HTTP_ADDRESS": "127.0.0.1:0"}).http_address
