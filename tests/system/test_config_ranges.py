"""Every numeric setting has a range (config.RANGES), for its flag and its
environment twin alike (issue 16, "Configuration that overflows or makes no
sense"): `--keepalive-seconds inf`, `--max-request-bytes 99999999999` and
`--min-ping-interval-seconds 1e12` died with a traceback, `--health-interval
0` spun at 100% CPU and ignored SIGTERM, `--grace-seconds -5` was accepted
and `--watch-interval inf` started a poller that never looked. Each now stops
`spur-runs serve` with one line on stderr and exit code 2; values at the
edges of the ranges start a server that answers and stops on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from servers import free_port, wait_health
from spur_runs.config import ENV, RANGES, Config, ConfigError
from tools import ROOT

CLI = [sys.executable, "-m", "spur_runs", "serve", "--grpc-address", "127.0.0.1:0"]

# (setting, bad value as typed), the first.
BAD = [
    ("keepalive_seconds", "inf"),
    ("max_request_bytes", "99999999999"),
    ("min_ping_interval_seconds", "1e12"),
    ("health_interval", "0"),
    ("grace_seconds", "-5"),
    ("watch_interval", "inf"),
    ("watch_interval", "nan"),
    ("max_response_bytes", "2147483648"),  # one past a C int
    ("keepalive_seconds", "2147484"),  # one past a C int of milliseconds
    ("db_timeout_seconds", "1e300"),
    ("db_timeout_seconds", "-inf"),
    ("max_connection_age_seconds", "0.5"),  # 0 ms to grpc, not "never"
    ("max_connection_age_seconds", "-1"),
    ("max_workers", "0"),
    ("pool_size", "100000"),
    ("max_concurrent_rpcs", "-1"),
    ("workers", "100000"),
    ("max_watchers", "0"),
    ("grace_seconds", "1e9"),
    ("health_interval", "abc"),
    ("max_workers", "2.5"),
    # Numbers Python's int() and float() take, read as no operator means them.
    ("pool_size", "1_2"),  # 12
    ("grace_seconds", "\uff12"),  # a full-width 2
    ("max_workers", " 4"),
]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(bound: float) -> str:
    return str(int(bound)) if bound == int(bound) else str(bound)


def _check_one_line(result: subprocess.CompletedProcess[str], name: str, form: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    # Named as the operator gave it: the flag or the twin, with its value.
    given = f"{_flag(name)}=" if form == "flag" else f"{ENV[name]}="
    assert lines[0].startswith(f"spur-runs serve: {given}"), lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("name", "value"), BAD)
@pytest.mark.parametrize("form", ["flag", "env"])
def test_a_value_out_of_range_stops_with_one_line_and_exit_2(
    tmp_path: Path, name: str, value: str, form: str
) -> None:
    # --flag=value: argparse reads "-inf" after a space as another option.
    args = [f"{_flag(name)}={value}"] if form == "flag" else []
    env = {**os.environ, **({ENV[name]: value} if form == "env" else {})}
    result = subprocess.run(
        [*CLI, "--database-url", f"sqlite:///{tmp_path / 'runs.db'}", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    _check_one_line(result, name, form)


def test_every_numeric_setting_has_a_range_in_the_readme() -> None:
    """A setting added without a bound would start with inf or a negative."""
    readme = " ".join((ROOT / "docs" / "configuration.md").read_text().split())
    numeric = {
        name
        for name, default in vars(Config()).items()
        if isinstance(default, int | float) and not isinstance(default, bool)
    }
    assert numeric == set(RANGES)
    for name, (least, most, zero) in RANGES.items():
        shown = f"`{_flag(name)}` {'0 or ' if zero else ''}{_show(least)}–{_show(most)}"
        assert shown in readme, shown
        for bad in (float("inf"), float("nan"), -1e18, 1e18):
            with pytest.raises(ConfigError, match=re.escape(_flag(name))):
                Config(**{name: bad})  # type: ignore[arg-type]


# Edges of the ranges, all at once: the most generous bounds, then the
# tightest. Each starts, answers health and stops on SIGTERM with exit 0.
HIGH = {
    "max_request_bytes": "2147483647",
    "max_response_bytes": "2147483647",
    "keepalive_seconds": "2147483",
    "min_ping_interval_seconds": "2147483",
    "max_connection_age_seconds": "2147483",
    "db_timeout_seconds": "2147483",
    "grace_seconds": "3600",
    "watch_interval": "3600",
    "health_interval": "3600",
    "max_concurrent_rpcs": "100000",
    "max_watchers": "1000000",
    "pool_size": "1000",
}
LOW = {
    "max_request_bytes": "1024",
    "max_response_bytes": "1024",
    "keepalive_seconds": "1",
    "min_ping_interval_seconds": "0",
    "max_connection_age_seconds": "0",
    "db_timeout_seconds": "0.01",
    "grace_seconds": "0",
    "watch_interval": "0.01",
    "health_interval": "0.1",
    "max_concurrent_rpcs": "1",
    "max_watchers": "1",
    "pool_size": "1",
    "max_workers": "1",
}


@pytest.mark.slow
@pytest.mark.parametrize(("values", "form"), [(HIGH, "flag"), (LOW, "flag"), (LOW, "env")])
def test_values_at_the_edges_start(tmp_path: Path, values: dict[str, str], form: str) -> None:
    from spur_runs.store.migrate import migrate

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    migrate(url)
    port = free_port()
    args = [arg for name, value in values.items() for arg in (_flag(name), value)]
    # PYTHONFAULTHANDLER: a server that does not stop is sent SIGABRT below,
    # and its log then shows where each of its threads waits.
    base = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    env = {**base, **{ENV[name]: value for name, value in values.items()}}
    # stderr to a file, not a pipe: nobody reads a pipe while the server
    # runs, and a full one would block its logging (and its SIGTERM).
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "spur_runs", "serve", "--database-url", url,
             "--grpc-address", f"127.0.0.1:{port}", *(args if form == "flag" else [])],
            env=env if form == "env" else base,
            stdout=subprocess.DEVNULL, stderr=log, text=True,
        )  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            process.wait(timeout=10)
            code = None
        assert code == 0, log_path.read_text()[-20_000:]
    finally:
        if process.poll() is None:
            process.kill()
    process.wait()
    stderr = log_path.read_text()
    assert "Traceback" not in stderr, stderr


@pytest.mark.parametrize(
    "args",
    [
        ["seed", "--runs", "99999999999999999999"],  # grew memory without end
        ["seed", "--runs", "1_0"],
        ["demo", "--seconds", "nan"],
        ["demo", "--step-seconds", "inf"],
        ["demo", "--concurrent", "100000000"],
        ["serve", "--grpc-address", "127.0.0.1:\u00b2"],  # isdigit() but not int()
    ],
)
def test_command_flags_out_of_range_stop_with_one_line_and_exit_2(
    tmp_path: Path, args: list[str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spur_runs", *args, "--database-url",
         f"sqlite:///{tmp_path / 'runs.db'}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
