"""Service configuration: read once, from flags and their environment twins,
into a frozen object that is passed down. Nothing reads the environment at
import time.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .trust import parse_hosts, parse_proxies

DEFAULT_DATABASE_URL = "sqlite:///spur-runs.db"
# An HTTP path prefix: "/" and unreserved path characters, no trailing "/".
_PATH_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)+")
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
    # Production serving (auth.py, tls.py, limits.py, observe.py, workers.py).
    "read_database_url": "SPUR_RUNS_READ_DATABASE_URL",
    "tls_cert": "SPUR_RUNS_TLS_CERT",
    "tls_key": "SPUR_RUNS_TLS_KEY",
    "tls_client_ca": "SPUR_RUNS_TLS_CLIENT_CA",
    "reader_tokens_file": "SPUR_RUNS_READER_TOKENS_FILE",
    "admin_tokens_file": "SPUR_RUNS_ADMIN_TOKENS_FILE",
    "reflection": "SPUR_RUNS_REFLECTION",
    "max_request_bytes": "SPUR_RUNS_MAX_REQUEST_BYTES",
    "max_response_bytes": "SPUR_RUNS_MAX_RESPONSE_BYTES",
    "max_concurrent_rpcs": "SPUR_RUNS_MAX_CONCURRENT_RPCS",
    "keepalive_seconds": "SPUR_RUNS_KEEPALIVE_SECONDS",
    "min_ping_interval_seconds": "SPUR_RUNS_MIN_PING_INTERVAL_SECONDS",
    "max_connection_age_seconds": "SPUR_RUNS_MAX_CONNECTION_AGE_SECONDS",
    "db_timeout_seconds": "SPUR_RUNS_DB_TIMEOUT_SECONDS",
    "db_dead_peer_seconds": "SPUR_RUNS_DB_DEAD_PEER_SECONDS",
    "health_address": "SPUR_RUNS_HEALTH_ADDRESS",
    "log_format": "SPUR_RUNS_LOG_FORMAT",
    "workers": "SPUR_RUNS_WORKERS",
    # WatchRun (watch.py).
    "watch_interval": "SPUR_RUNS_WATCH_INTERVAL",
    "max_watchers": "SPUR_RUNS_MAX_WATCHERS",
    # The HTTP gateway (gateway/).
    "http_path_prefix": "SPUR_RUNS_HTTP_PATH_PREFIX",
    # The HTTP port's bounds and trust (gateway/connections.py, hosts.py, metadata.py).
    "http_header_timeout_seconds": "SPUR_RUNS_HTTP_HEADER_TIMEOUT_SECONDS",
    "http_idle_timeout_seconds": "SPUR_RUNS_HTTP_IDLE_TIMEOUT_SECONDS",
    "http_max_connections": "SPUR_RUNS_HTTP_MAX_CONNECTIONS",
    "http_allowed_hosts": "SPUR_RUNS_HTTP_ALLOWED_HOSTS",
    "trusted_proxies": "SPUR_RUNS_TRUSTED_PROXIES",
    # Streams (health_service.py, limits.py).
    "max_health_watchers": "SPUR_RUNS_MAX_HEALTH_WATCHERS",
    "max_streams_per_connection": "SPUR_RUNS_MAX_STREAMS_PER_CONNECTION",
}


class ConfigError(ValueError):
    """A configuration value that stops start-up (one clear line, exit 2)."""


# grpc takes its durations and sizes as C ints of milliseconds and bytes, and
# PostgreSQL its statement_timeout as an int of milliseconds: a longer bound
# overflows (a traceback at start-up, not an error message).
_INT32_MAX = 2**31 - 1
_INT32_MS = _INT32_MAX // 1000  # seconds: 24.8 days

# The range of every numeric setting: (least, most), both inclusive, and
# whether 0 is allowed besides as "off". A value outside it, or not finite,
# stops start-up with one line. The bounds are where a value stops making
# sense or stops fitting what it is given to, not tuning advice.
RANGES: dict[str, tuple[float, float, bool]] = {
    "max_workers": (1, 1024, False),
    "pool_size": (1, 1000, False),
    # 0: cancel in-flight calls at once; more than an hour is a hung stop.
    "grace_seconds": (0, 3600, False),
    # A ping per 0.1 s is already a busy loop of its own; 0 was one (100% CPU
    # and a stop that never came).
    "health_interval": (0.1, 3600, False),
    # 1 KiB holds any request of this API; grpc's message sizes are C ints.
    "max_request_bytes": (1024, _INT32_MAX, False),
    "max_response_bytes": (1024, _INT32_MAX, False),
    "max_concurrent_rpcs": (1, 100_000, False),
    "keepalive_seconds": (1, _INT32_MS, False),
    "min_ping_interval_seconds": (0, _INT32_MS, False),
    # 0 is "never"; otherwise at least a second (fewer milliseconds than one
    # would round to grpc's own 0).
    "max_connection_age_seconds": (1, _INT32_MS, True),
    "db_timeout_seconds": (0.01, _INT32_MS, False),
    # libpq's keepalive and TCP_USER_TIMEOUT bounds (db.dead_peer_args).
    "db_dead_peer_seconds": (1, 3600, False),
    "workers": (1, 256, False),
    # inf started a poller that never looked; an hour between looks is
    # already no watch at all.
    "watch_interval": (0.01, 3600, False),
    "max_watchers": (1, 1_000_000, False),
    # The HTTP port (gateway/connections.py): a header timeout above an hour
    # is no slow-loris bound; a day of idle keep-alive is no bound either.
    "http_header_timeout_seconds": (0.01, 3600, False),
    "http_idle_timeout_seconds": (0.01, 86400, False),
    "http_max_connections": (1, 1_000_000, False),
    # A million open health watches would be ~20 GB (bench/health_storm.py:
    # ~20 KB each); MAX_CONCURRENT_STREAMS is a 32-bit grpc argument.
    "max_health_watchers": (1, 1_000_000, False),
    "max_streams_per_connection": (1, _INT32_MAX, False),
}


@dataclass(frozen=True)
class Config:
    database_url: str = DEFAULT_DATABASE_URL
    grpc_address: str = DEFAULT_GRPC_ADDRESS
    http_address: str | None = None
    # Threads of the gRPC server. Python runs one of them at a time: more
    # threads overlap database waits but fight over the GIL, and that costs
    # CPU on every call. GetRun's server CPU per call, measured side by side
    # (2 cores, SQLite): 1 thread 740 us, 2: 853, 8: 1,142, 16: ~1,500-2,000.
    # 4 keeps most of that gain and leaves room for a few slow calls (a
    # delete waiting for a lock); scale out with --workers processes.
    max_workers: int = 4
    # Database connections: one per RPC thread, plus WatchRun's poller and
    # the health ping, with room to spare so neither waits behind calls.
    pool_size: int = 16
    log_level: str = "INFO"
    # How long SIGTERM waits for in-flight calls before it cancels them.
    grace_seconds: float = 10.0
    # Seconds between the database pings that drive gRPC health.
    health_interval: float = 2.0
    # A PostgreSQL read replica for the read RPCs; DeleteRun stays on the primary.
    read_database_url: str | None = None
    # PEM files. A client CA turns on mutual TLS: clients without a
    # certificate it signed are refused at the handshake.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # Token files (auth.py); with neither, authentication is off.
    reader_tokens_file: str | None = None
    admin_tokens_file: str | None = None
    reflection: bool = True
    # Requests are a run id and a page token: 1 MiB is generous. Responses
    # are pages of runs with their tasks' outputs, hence the larger bound.
    max_request_bytes: int = 1024 * 1024
    max_response_bytes: int = 16 * 1024 * 1024
    # Calls in flight (running or queued for a thread) beyond which new ones
    # get RESOURCE_EXHAUSTED at once instead of waiting in an unbounded queue.
    max_concurrent_rpcs: int = 64
    # The server pings a connection idle this long, to drop dead peers.
    keepalive_seconds: float = 60.0
    # Clients pinging more often than this get GOAWAY (too_many_pings).
    min_ping_interval_seconds: float = 10.0
    # 0 = unlimited. Behind a layer-4 load balancer, a bound makes clients
    # reconnect now and then and so spread over new replicas.
    max_connection_age_seconds: float = 0.0
    # Bound on one database statement (PostgreSQL statement_timeout, SQLite
    # busy_timeout); a shorter client deadline lowers it for that call.
    db_timeout_seconds: float = 10.0
    # How long a PostgreSQL connection may go unanswered (a partition, a
    # failover without reset) before it is dropped and its call answers
    # UNAVAILABLE: libpq keepalives and tcp_user_timeout (db.dead_peer_args).
    db_dead_peer_seconds: float = 10.0
    # A plaintext listener serving gRPC health only, for Kubernetes' gRPC
    # probes, which cannot speak TLS (server.py, deploy/kubernetes).
    health_address: str | None = None
    log_format: str = "text"
    # Server processes sharing the gRPC port (workers.py).
    workers: int = 1
    # Seconds between two looks at the watched runs (one batched query for
    # all of them, whoever wrote the change): the latency of a WatchRun.
    watch_interval: float = 0.5
    # Open WatchRun streams per process beyond which new ones get
    # RESOURCE_EXHAUSTED. They hold no thread, only memory and a share of
    # each poll.
    max_watchers: int = 1000
    # Every HTTP route, /openapi.json and /metrics under this path (e.g.
    # "/api", where PySpur's UI looks for its Runs API); "" for none.
    http_path_prefix: str = ""
    # An HTTP connection must send a request's complete headers within this
    # long (of opening, or of its request's first byte), else it is closed.
    # A real client sends them in one packet; 10 s leaves room for a slow
    # mobile link's retransmits, as Go servers commonly set ReadHeaderTimeout.
    http_header_timeout_seconds: float = 10.0
    # A keep-alive HTTP connection idle this long is closed. Longer than the
    # 60 s idle timeout of the usual proxies in front (nginx's upstream
    # keepalive_timeout, AWS ALB), so that the proxy, not this server, ends an
    # idle pooled connection: else a request it sends as we close is lost
    # (a 502). nginx's own default for its clients is 75 s too.
    http_idle_timeout_seconds: float = 75.0
    # Open HTTP connections beyond which new ones get 503 at once (lowered
    # to what the file limit allows: gateway/connections.py).
    http_max_connections: int = 1024
    # Comma-separated Host names a tokenless server on loopback answers
    # besides localhost, 127.0.0.1 and [::1] (gateway/hosts.py).
    http_allowed_hosts: str | None = None
    # Comma-separated addresses or CIDRs of proxies whose X-Forwarded-For the
    # HTTP gateway believes (for the access log's forwarded_for).
    trusted_proxies: str | None = None
    # Open grpc.health.v1.Health/Watch streams per process beyond which new
    # ones get RESOURCE_EXHAUSTED. No thread each either; a client channel
    # with client-side health checking holds one per server address.
    max_health_watchers: int = 1000
    # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: streams one connection may have
    # open at once; a client's further calls wait for one to end. 100 is
    # RFC 9113's recommended floor and what most servers advertise.
    max_streams_per_connection: int = 100

    def __post_init__(self) -> None:
        for name in ("database_url", "read_database_url"):
            url = getattr(self, name)
            if url is None:
                continue
            scheme = url.split(":", 1)[0].split("+", 1)[0]
            if scheme not in ("sqlite", "postgresql", "postgres"):
                raise ConfigError(
                    f"database URL scheme {scheme!r} is not supported (use sqlite:// or postgresql://)"
                )
        self._check_ranges()
        self._check_serving()
        self._check_http()
        for name in ("grpc_address", "http_address", "health_address"):
            value = getattr(self, name)
            if value is not None:
                parse_address(value, name)

    def _check_ranges(self) -> None:
        for name, (least, most, zero) in RANGES.items():
            value = getattr(self, name)
            if zero and value == 0:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{_named(name)} must be a number, got {value!r}")
            if not (math.isfinite(value) and least <= value <= most):
                also = "0 or " if zero else ""
                raise ConfigError(
                    f"{_named(name)} must be {also}between {_show(least)} and {_show(most)}, "
                    f"got {value}"
                )

    def _check_http(self) -> None:
        """The HTTP port's trust lists (its numeric bounds are in RANGES)."""
        try:
            parse_hosts(self.http_allowed_hosts)
            parse_proxies(self.trusted_proxies)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def _check_serving(self) -> None:
        """The production-serving options; their files are read by tls.py
        and auth.py, which report unreadable ones the same way."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        if not isinstance(logging.getLevelName(self.log_level.upper()), int):
            raise ConfigError(
                f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}"
            )
        prefix = self.http_path_prefix
        if prefix and (
            not _PATH_PREFIX.fullmatch(prefix) or any(s in (".", "..") for s in prefix.split("/"))
        ):
            raise ConfigError(
                "--http-path-prefix must be a path such as /api: '/' then segments of "
                f"letters, digits and -._~, with no '/' at the end, got {prefix!r}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"--log-format must be text or json, got {self.log_format!r}")
        if self.workers > 1:
            # Each worker binds the same port; port 0 would give each its own.
            for name in ("grpc_address", "http_address", "health_address"):
                value = getattr(self, name)
                if value is not None and parse_address(value, name)[1] == 0:
                    raise ConfigError(f"--workers above 1 needs a fixed {_flag(name)} port, not 0")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(bound: float) -> str:
    return str(int(bound)) if bound == int(bound) else str(bound)


def _named(name: str) -> str:
    """A setting as the operator may have given it: flag or environment twin."""
    return f"{_flag(name)} (env {ENV[name]})"


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
