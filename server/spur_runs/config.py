"""Service configuration: read once, from flags and their environment twins,
into a frozen object that is passed down. Nothing reads the environment at
import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_DATABASE_URL = "sqlite:///spur-runs.db"
DEFAULT_GRPC_ADDRESS = "127.0.0.1:50051"

# Flag name -> environment variable. Every flag has its twin here; cli.py
# builds its parser from this table so that the two cannot drift apart.
ENV = {
    "database_url": "SPUR_RUNS_DATABASE_URL",
    "grpc_address": "SPUR_RUNS_GRPC_ADDRESS",
    "http_address": "SPUR_RUNS_HTTP_ADDRESS",
    "max_workers": "SPUR_RUNS_MAX_WORKERS",
    "pool_size": "SPUR_RUNS_POOL_SIZE",
    "log_level": "SPUR_RUNS_LOG_LEVEL",
    "grace_seconds": "SPUR_RUNS_GRACE_SECONDS",
    "health_interval": "SPUR_RUNS_HEALTH_INTERVAL",
}


class ConfigError(ValueError):
    """A configuration value that stops start-up (one clear line, exit 2)."""


@dataclass(frozen=True)
class Config:
    database_url: str = DEFAULT_DATABASE_URL
    grpc_address: str = DEFAULT_GRPC_ADDRESS
    http_address: str | None = None
    # Threads serving RPCs; the database pool is sized to match.
    max_workers: int = 16
    pool_size: int = 16
    log_level: str = "INFO"
    # How long SIGTERM waits for in-flight calls before it cancels them.
    grace_seconds: float = 10.0
    # Seconds between the database pings that drive gRPC health.
    health_interval: float = 2.0

    def __post_init__(self) -> None:
        scheme = self.database_url.split(":", 1)[0].split("+", 1)[0]
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ConfigError(
                f"database URL scheme {scheme!r} is not supported (use sqlite:// or postgresql://)"
            )
        for name in ("grpc_address", "http_address"):
            value = getattr(self, name)
            if value is not None:
                parse_address(value, name)
        if self.max_workers < 1 or self.pool_size < 1:
            raise ConfigError("max-workers and pool-size must be at least 1")


def parse_address(address: str, name: str = "address") -> tuple[str, int]:
    """Split HOST:PORT ([v6]:PORT too); ConfigError if it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def env_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment twins that are set, by flag name."""
    environ = os.environ if environ is None else environ
    return {flag: environ[var] for flag, var in ENV.items() if environ.get(var)}
