"""Service configuration: read once, from flags and their environment twins,
into a frozen object that is passed down. Nothing reads the environment at
import time.

`Config` is the one table of settings. Each field is declared once, with its
default and a `setting(...)` that carries the rest: its environment twin, its
help, its range or choices. Everything else is derived from it: `ENV` and
`RANGES` below, and in settings.py the command's flags, the reading of the
twins and docs/configuration.md's table (`python -m spur_runs.settings`).

What a field is made of (`setting`, `Setting`), the error a bad value
raises (`ConfigError`) and how a setting is named are config_fields.py's;
the syntax of database URLs and HOST:PORT addresses is addresses.py's.
Those of their names that other modules import from here are re-exported
(`import x as x`, which mypy strict takes for an export).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass

from .addresses import check_database_url
from .addresses import parse_address as parse_address
from .config_fields import ConfigError as ConfigError
from .config_fields import Setting, setting
from .config_fields import either as either
from .config_fields import flag as flag
from .config_fields import show_bound as show_bound
from .trust import parse_hosts, parse_origins, parse_proxies

# An HTTP path prefix: "/" and unreserved path characters, no trailing "/".
_PATH_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)+")

# grpc takes its durations and sizes as C ints of milliseconds and bytes, and
# PostgreSQL its statement_timeout as an int of milliseconds: a longer bound
# overflows (a traceback at start-up, not an error message).
_INT32_MAX = 2**31 - 1
_INT32_MS = _INT32_MAX // 1000  # seconds: 24.8 days


@dataclass(frozen=True)
class Config:
    database_url: str = setting(
        "sqlite:///spur-runs.db", "SPUR_RUNS_DATABASE_URL",
        "SQLAlchemy URL of PySpur's database (sqlite:///FILE, postgresql://USER@HOST/DB); "
        "the default is a file in the working folder",
        "PostgreSQL through psycopg 3; through PgBouncer in transaction mode add "
        "`?prepare_threshold=none` ([production.md](production.md)).",
        common=True, secret=True,
    )  # fmt: skip
    grpc_address: str = setting(
        "127.0.0.1:50051", "SPUR_RUNS_GRPC_ADDRESS", "HOST:PORT to listen on"
    )
    http_address: str | None = setting(
        None, "SPUR_RUNS_HTTP_ADDRESS", "HOST:PORT for HTTP/JSON (none: no HTTP)"
    )
    # Threads of the gRPC server. Python runs one of them at a time: more
    # threads overlap database waits but fight over the GIL, and that costs
    # CPU on every call. 4 keeps most of that gain and leaves room for a few
    # slow calls (a delete waiting for a lock); scale out with --workers.
    # bench/results/workers.md has the measurements behind it.
    max_workers: int = setting(
        4, "SPUR_RUNS_MAX_WORKERS", "threads serving RPCs (and as many for HTTP's)",
        "One Python thread runs at a time, so more threads overlap database waits but cost "
        "CPU on every call (GetRun's server CPU per call, measured side by side on 2 cores: "
        "1 thread 740 µs, 2: 853, 8: 1,142, 16: 1,500–2,000). `bench/workers.py` measured "
        "GetRun throughput against 4 threads: with the database at hand (SQLite, PostgreSQL "
        "over loopback) 2 threads served 0.90–1.01×, 8 0.80–0.98×; with PostgreSQL 3.3 ms "
        "away, 2 served 0.54× and 8 1.23×. 4 is the default: at hand it serves as much as "
        "any, and it leaves threads for the rest while a few calls are long (a large "
        "DeleteRun). Writes (DeleteRun) run on at most half of the threads at once; one "
        "more waits 0.2 s for a free one, then is refused with RESOURCE_EXHAUSTED (retry). "
        "With a database a few milliseconds away, try 8 (docs/production.md). "
        "Scale out with `--workers`.",
        bounds=(1, 1024),
    )  # fmt: skip
    pool_size: int = setting(
        16, "SPUR_RUNS_POOL_SIZE", "database connections",
        "One per RPC thread, plus WatchRun's poller and the health ping, with room to spare "
        "so that neither waits behind calls. Beside the pool, each RPC thread keeps one "
        "connection for single reads (`--max-workers` more, twice that with HTTP on).",
        bounds=(1, 1000),
    )  # fmt: skip
    log_level: str = setting(
        "INFO", "SPUR_RUNS_LOG_LEVEL",
        "DEBUG, INFO, WARNING or ERROR; DEBUG shows the traceback behind a one-line error",
        common=True,
    )  # fmt: skip
    # 0: cancel in-flight calls at once; more than an hour is a hung stop.
    grace_seconds: float = setting(
        10.0, "SPUR_RUNS_GRACE_SECONDS", "how long SIGTERM lets in-flight calls finish",
        bounds=(0, 3600),
    )  # fmt: skip
    # A ping per 0.1 s is already a busy loop of its own; 0 was one (100% CPU
    # and a stop that never came).
    health_interval: float = setting(
        2.0, "SPUR_RUNS_HEALTH_INTERVAL", "seconds between database health pings",
        "They drive gRPC health.", bounds=(0.1, 3600),
    )  # fmt: skip
    read_database_url: str | None = setting(
        None, "SPUR_RUNS_READ_DATABASE_URL",
        "PostgreSQL read replica for the read RPCs; DeleteRun uses --database-url",
        "See Scaling in [production.md](production.md).", secret=True,
    )  # fmt: skip
    tls_cert: str | None = setting(
        None, "SPUR_RUNS_TLS_CERT", "PEM certificate chain: serve over TLS",
        "TLS on the gRPC and HTTP ports.",
    )  # fmt: skip
    tls_key: str | None = setting(
        None, "SPUR_RUNS_TLS_KEY", "PEM private key of --tls-cert",
        "Not encrypted: grpc takes no passphrase.",
    )  # fmt: skip
    # Clients without a certificate the CA signed are refused at the handshake.
    tls_client_ca: str | None = setting(
        None, "SPUR_RUNS_TLS_CLIENT_CA",
        "PEM CA: refuse clients without a certificate it signed (mutual TLS)",
        "They are refused at the handshake.",
    )  # fmt: skip
    # Token files (rpc/auth.py); with neither, authentication is off.
    reader_tokens_file: str | None = setting(
        None, "SPUR_RUNS_READER_TOKENS_FILE",
        "bearer tokens (one a line) that may call the read RPCs", "`#` starts a comment.",
    )  # fmt: skip
    admin_tokens_file: str | None = setting(
        None, "SPUR_RUNS_ADMIN_TOKENS_FILE",
        "bearer tokens (one a line) that may call every RPC", "DeleteRun included.",
    )  # fmt: skip
    reflection: bool = setting(
        True, "SPUR_RUNS_REFLECTION", "serve gRPC server reflection", "What grpcurl uses."
    )
    # Requests are a run id and a page token: 1 MiB is generous. Responses
    # are pages of runs with their tasks' outputs, hence the larger bound
    # (RunService's: rpc/encode.py).
    # 1 KiB holds any request of this API; grpc's message sizes are C ints.
    max_request_bytes: int = setting(
        1024 * 1024, "SPUR_RUNS_MAX_REQUEST_BYTES", "largest request message accepted",
        "Larger requests get `RESOURCE_EXHAUSTED`.", bounds=(1024, _INT32_MAX),
    )  # fmt: skip
    max_response_bytes: int = setting(
        16 * 1024 * 1024, "SPUR_RUNS_MAX_RESPONSE_BYTES", "largest RunService answer sent",
        "Larger answers fail with `RESOURCE_EXHAUSTED` (ask for smaller pages); so does a read "
        "whose stored text is over 4 times this, before it is decoded. Reflection's and "
        "health's answers, fixed by the protos, are not held to it.",
        bounds=(1024, _INT32_MAX),
    )  # fmt: skip
    # Answers grpc holds for clients that do not read them (rpc/unread.py):
    # two of the largest per address, and sixteen addresses' worth in all.
    max_unread_bytes_per_address: int = setting(
        32 * 1024 * 1024, "SPUR_RUNS_MAX_UNREAD_BYTES_PER_ADDRESS",
        "bytes of RunService answers one client address may have sent and not yet read",
        "Over gRPC and HTTP together. A further answer to that address fails with "
        "`RESOURCE_EXHAUSTED` (HTTP 429) until the client reads (or its calls end): a gRPC "
        "client that grants no flow-control window made the server hold every answer for as "
        "long as its connections lived. An address holding nothing may always get one answer.",
        bounds=(1024, 1 << 50),
    )  # fmt: skip
    max_unread_bytes: int = setting(
        512 * 1024 * 1024, "SPUR_RUNS_MAX_UNREAD_BYTES",
        "bytes of RunService answers sent and not yet read, all clients together",
        "Beyond it, further answers fail with `RESOURCE_EXHAUSTED` until clients read.",
        bounds=(1024, 1 << 50),
    )  # fmt: skip
    # Rather than waiting in an unbounded queue.
    max_concurrent_rpcs: int = setting(
        64, "SPUR_RUNS_MAX_CONCURRENT_RPCS",
        "calls in flight beyond which new ones get RESOURCE_EXHAUSTED",
        "Per process, running or queued for a thread; beyond it new calls are refused at once.",
        bounds=(1, 100_000),
    )  # fmt: skip
    # The server pings a connection idle this long, to drop dead peers.
    keepalive_seconds: float = setting(
        60.0, "SPUR_RUNS_KEEPALIVE_SECONDS", "ping connections idle this long",
        "Those that do not answer within 20 s are closed.", bounds=(1, _INT32_MS),
    )  # fmt: skip
    min_ping_interval_seconds: float = setting(
        10.0, "SPUR_RUNS_MIN_PING_INTERVAL_SECONDS",
        "refuse (GOAWAY) clients that ping more often", "GOAWAY `too_many_pings`.",
        bounds=(0, _INT32_MS),
    )  # fmt: skip
    # 0 is "never"; otherwise at least a second (fewer milliseconds than one
    # would round to grpc's own 0).
    max_connection_age_seconds: float = setting(
        0.0, "SPUR_RUNS_MAX_CONNECTION_AGE_SECONDS",
        "close connections this old, gracefully; 0: never",
        "Behind a layer-4 load balancer, clients then reconnect now and then and so spread "
        "over new replicas.",
        bounds=(1, _INT32_MS), zero=True,
    )  # fmt: skip
    db_timeout_seconds: float = setting(
        10.0, "SPUR_RUNS_DB_TIMEOUT_SECONDS", "bound on one database statement",
        "PostgreSQL's `statement_timeout`; on SQLite a statement running longer is "
        "interrupted, and a write waits at most this long for a lock. A shorter client "
        "deadline lowers it; the call answers `DEADLINE_EXCEEDED`.",
        bounds=(0.01, _INT32_MS),
    )  # fmt: skip
    # libpq's keepalive and TCP_USER_TIMEOUT bounds (store/engine.dead_peer_args).
    db_dead_peer_seconds: float = setting(
        10.0, "SPUR_RUNS_DB_DEAD_PEER_SECONDS",
        "drop a PostgreSQL connection unanswered this long",
        "A connection that gets no answer this long (a network partition, a failover "
        "without reset) is dropped and its call answers `UNAVAILABLE` (libpq `keepalives` "
        "and `tcp_user_timeout`), instead of waiting about 15 minutes for the kernel; a "
        "long-running statement on a live connection is not cut by it "
        "(`--db-timeout-seconds` is).",
        bounds=(1, 3600),
    )  # fmt: skip
    health_address: str | None = setting(
        None, "SPUR_RUNS_HEALTH_ADDRESS",
        "HOST:PORT: plaintext gRPC health only, for Kubernetes' probes",
        "A second gRPC listener, always plaintext, serving `grpc.health.v1.Health/Check` "
        "and nothing else: Kubernetes' gRPC probes cannot speak TLS. It takes no token: "
        "let only the node reach it (`deploy/kubernetes/networkpolicy.yaml`).",
    )  # fmt: skip
    # Every command logs (migrate the revisions it ran), so every command
    # takes it: a migrate Job logs JSON beside the JSON-logging server.
    log_format: str = setting(
        "text", "SPUR_RUNS_LOG_FORMAT", "how log lines are written",
        "`json`: one object per line, one line per RPC.", choices=("text", "json"),
        common=True,
    )  # fmt: skip
    workers: int = setting(
        1, "SPUR_RUNS_WORKERS", "server processes sharing the gRPC port",
        "They share the ports (SO_REUSEPORT); one per core.", bounds=(1, 256),
    )  # fmt: skip
    # One batched query for all the watched runs, whoever wrote the change.
    # inf started a poller that never looked; an hour between looks is
    # already no watch at all.
    watch_interval: float = setting(
        0.5, "SPUR_RUNS_WATCH_INTERVAL",
        "seconds between two looks at the runs WatchRun streams watch",
        "How soon a change is seen.", bounds=(0.01, 3600),
    )  # fmt: skip
    # They hold no thread, only memory and a share of each poll.
    max_watchers: int = setting(
        1000, "SPUR_RUNS_MAX_WATCHERS",
        "open WatchRun streams beyond which new ones get RESOURCE_EXHAUSTED", "Per process.",
        bounds=(1, 1_000_000),
    )  # fmt: skip
    max_watchers_per_address: int = setting(
        100, "SPUR_RUNS_MAX_WATCHERS_PER_ADDRESS",
        "open WatchRun streams one client address may hold",
        "An HTTP watch counts for its HTTP client's address. Without it, one client could "
        "hold every watch of `--max-watchers` (with no token when tokens are off), and "
        "others could watch no more.",
        bounds=(1, 1_000_000),
    )  # fmt: skip
    http_path_prefix: str = setting(
        "", "SPUR_RUNS_HTTP_PATH_PREFIX",
        "serve every HTTP route, /openapi.json and /metrics under this path, e.g. /api",
        "`/api` is where PySpur's UI calls its Runs API.",
    )  # fmt: skip
    # A real client sends its headers in one packet; 10 s leaves room for a
    # slow mobile link's retransmits, as Go servers commonly set
    # ReadHeaderTimeout. Above an hour it is no slow-loris bound.
    http_header_timeout_seconds: float = setting(
        10.0, "SPUR_RUNS_HTTP_HEADER_TIMEOUT_SECONDS",
        "close an HTTP connection whose request headers are not complete this long after "
        "it opens or its request begins",
        bounds=(0.01, 3600),
    )  # fmt: skip
    # Longer than the 60 s idle timeout of the usual proxies in front (nginx's
    # upstream keepalive_timeout, AWS ALB), so that the proxy, not this
    # server, ends an idle pooled connection: else a request it sends as we
    # close is lost (a 502). nginx's own default for its clients is 75 s too.
    # A day of idle keep-alive is no bound.
    http_idle_timeout_seconds: float = setting(
        75.0, "SPUR_RUNS_HTTP_IDLE_TIMEOUT_SECONDS",
        "close a keep-alive HTTP connection idle this long",
        "Longer than the 60 s of the usual proxies in front, so that they end idle pooled "
        "connections, not this server. A connection whose answer has not moved this long (its "
        "client reads nothing) is aborted too.",
        bounds=(0.01, 86400),
    )  # fmt: skip
    http_max_connections: int = setting(
        1024, "SPUR_RUNS_HTTP_MAX_CONNECTIONS",
        "open HTTP connections beyond which new ones get 503; lowered to fit the file limit",
        "With a warning, to (file limit − 256) / 2, so that HTTP clients cannot take "
        "the descriptors gRPC and the database need (gateway/connections.py).",
        bounds=(1, 1_000_000),
    )  # fmt: skip
    http_allowed_hosts: str | None = setting(
        None, "SPUR_RUNS_HTTP_ALLOWED_HOSTS",
        "comma-separated Host names a tokenless server on loopback answers besides "
        "localhost, 127.0.0.1 and [::1]",
        "Any port; other names get 421, against DNS rebinding (gateway/hosts.py).",
    )  # fmt: skip
    http_cors_origins: str | None = setting(
        None, "SPUR_RUNS_HTTP_CORS_ORIGINS",
        "comma-separated origins whose browser pages may call the HTTP API (* for any)",
        "For a UI on another origin than this server (PySpur's dev server): preflights "
        "answered, `Link` and `X-Request-Id` exposed, no cookies (tokens go in "
        "`Authorization`). None: no CORS, as behind PySpur's own origin (gateway/cors.py).",
    )  # fmt: skip
    trusted_proxies: str | None = setting(
        None, "SPUR_RUNS_TRUSTED_PROXIES",
        "comma-separated addresses/CIDRs whose X-Forwarded-For the HTTP gateway believes",
        "From anyone else it is ignored, and the access log's `forwarded_for` is the "
        "client's own address.",
    )  # fmt: skip
    # No thread each either; a client channel with client-side health
    # checking holds one per server address. A million would be ~20 GB
    # (bench/health_storm.py: ~20 KB each).
    max_health_watchers: int = setting(
        1000, "SPUR_RUNS_MAX_HEALTH_WATCHERS",
        "open health Watch streams beyond which new ones get RESOURCE_EXHAUSTED",
        "`grpc.health.v1.Health/Watch` streams, per process.", bounds=(1, 1_000_000),
    )  # fmt: skip
    max_health_watchers_per_address: int = setting(
        100, "SPUR_RUNS_MAX_HEALTH_WATCHERS_PER_ADDRESS",
        "open health Watch streams one client address may hold",
        "Health takes no token: without this, one client could hold every watch of "
        "`--max-health-watchers`, and clients with gRPC's client-side health checking "
        "could watch no more. A client process holds one per channel.",
        bounds=(1, 1_000_000),
    )  # fmt: skip
    # As --http-max-connections: a client pool or two per caller's process,
    # far below what a file limit of a few thousand allows.
    grpc_max_connections: int = setting(
        1024, "SPUR_RUNS_GRPC_MAX_CONNECTIONS",
        "open gRPC connections beyond which new ones are closed; lowered to fit the file limit",
        "With a warning, to file limit / 2 − 256 (rpc/limits.py), so that gRPC clients "
        "cannot take the descriptors HTTP and the database need.",
        bounds=(1, 1_000_000),
    )  # fmt: skip
    # A real client sends its request message with its headers; 10 s, as
    # --http-header-timeout-seconds, leaves a slow link room for a large one.
    grpc_request_timeout_seconds: float = setting(
        10.0, "SPUR_RUNS_GRPC_REQUEST_TIMEOUT_SECONDS",
        "cancel a gRPC call whose request message has not arrived this long after its headers",
        "It holds an RPC thread while it waits, and at most half of them wait longer than "
        "0.5 s at once: the newest beyond are cancelled (rpc/arrival.py). A call is cancelled "
        "only after that 0.5 s, however low this is set.",
        bounds=(0.01, 3600),
    )  # fmt: skip
    # 100 is RFC 9113's recommended floor and what most servers advertise;
    # MAX_CONCURRENT_STREAMS is a 32-bit grpc argument.
    max_streams_per_connection: int = setting(
        100, "SPUR_RUNS_MAX_STREAMS_PER_CONNECTION",
        "streams one gRPC connection may have open at once",
        "HTTP/2 `MAX_CONCURRENT_STREAMS`; a client's further calls wait for one to end.",
        bounds=(1, _INT32_MAX),
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("database_url", "read_database_url"):
            url = getattr(self, name)
            if url is None:
                continue
            scheme = check_database_url(url, name)
            if name == "read_database_url" and scheme == "sqlite":
                # A replica of another file is no replica: it made a new,
                # empty file in the working folder and served from it.
                raise ConfigError(
                    "must be a PostgreSQL read replica (postgresql://); SQLite has none: "
                    "leave it unset",
                    name,
                )
        self._check_ranges()
        self._check_serving()
        self._check_http()
        # Two listeners on one HOST:PORT stopped start-up with "cannot listen
        # on ...: Address already in use", as if another process held it.
        listening: dict[tuple[str, int], str] = {}
        for name in ("grpc_address", "http_address", "health_address"):
            value = getattr(self, name)
            if value is None:
                continue
            address = parse_address(value, name)
            if address[1] and address in listening:
                raise ConfigError("are the same address: each needs a port of its own",
                                  listening[address], name)  # fmt: skip
            listening[address] = name

    def _check_ranges(self) -> None:
        for name, (least, most, zero) in RANGES.items():
            value = getattr(self, name)
            if zero and value == 0:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"must be a number, not {type(value).__name__}", name)
            if not (math.isfinite(value) and least <= value <= most):
                also = "0 or " if zero else ""
                low, high = show_bound(least), show_bound(most)
                raise ConfigError(f"must be {also}between {low} and {high}", name)

    def _check_http(self) -> None:
        """The HTTP port's trust lists (its numeric bounds are in RANGES)."""
        checks = (
            ("http_allowed_hosts", parse_hosts),
            ("http_cors_origins", parse_origins),
            ("trusted_proxies", parse_proxies),
        )
        for name, parse in checks:
            try:
                parse(getattr(self, name))
            except ValueError as error:
                raise ConfigError(str(error), name) from None

    def _check_serving(self) -> None:
        """The production-serving options; their files are read by tls.py
        and auth.py, which report unreadable ones the same way."""
        # The one given is named as given; the one missing, both ways.
        if bool(self.tls_cert) != bool(self.tls_key):
            given, missing = ("tls_cert", "tls_key") if self.tls_cert else ("tls_key", "tls_cert")
            raise ConfigError(f"needs {_named(missing)} too: give both or neither", given)
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError(
                f"needs {_named('tls_cert')} and {_named('tls_key')} too", "tls_client_ca"
            )
        if not isinstance(logging.getLevelName(self.log_level.upper()), int):
            raise ConfigError("must be DEBUG, INFO, WARNING or ERROR", "log_level")
        prefix = self.http_path_prefix
        if prefix and (
            not _PATH_PREFIX.fullmatch(prefix) or any(s in (".", "..") for s in prefix.split("/"))
        ):
            raise ConfigError(
                "must be a path such as /api: '/' then segments of letters, digits and "
                "-._~, with no '/' at the end",
                "http_path_prefix",
            )
        for name, meta in SETTINGS.items():
            if meta.choices and getattr(self, name) not in meta.choices:
                raise ConfigError(f"must be {either(meta.choices)}", name)
        if self.workers > 1:
            # Each worker binds the same port; port 0 would give each its own.
            for name in ("grpc_address", "http_address", "health_address"):
                value = getattr(self, name)
                if value is not None and parse_address(value, name)[1] == 0:
                    raise ConfigError(
                        "several workers need a fixed port, not 0 (each would get its own)",
                        "workers",
                        name,
                    )


def _named(name: str) -> str:
    """A setting the operator may not have given, both ways it can be given."""
    return f"{flag(name)} (env {ENV[name]})"


# The table, by field name, and what the checks above read from it.
SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in dataclasses.fields(Config)}
# Field name -> environment variable: every flag has its twin.
ENV: dict[str, str] = {name: meta.env for name, meta in SETTINGS.items()}
# The range of every numeric setting: (least, most, whether 0 is allowed
# besides as "off"). A value outside it, or not finite, stops start-up with
# one line.
RANGES: dict[str, tuple[float, float, bool]] = {
    name: (*meta.bounds, meta.zero) for name, meta in SETTINGS.items() if meta.bounds
}
