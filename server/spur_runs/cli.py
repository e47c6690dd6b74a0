"""The `spur-runs` command: serve, migrate, seed.

Every flag has an environment twin (config.ENV); a flag given on the command
line wins over its twin. A bad value stops with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .config import ENV, Config, ConfigError, env_defaults

if TYPE_CHECKING:  # (imported lazily: `spur-runs migrate` needs no gRPC)
    from .metrics import Metrics


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false")


# The production-serving flags (README's table): name -> (conversion, help).
# They are converted in load_config, not by argparse, so that a bad value
# from the flag or from its environment twin gives the same single line.
SERVING_FLAGS: dict[str, tuple[Callable[[str], Any], str]] = {
    "read_database_url": (
        str,
        "PostgreSQL read replica for the read RPCs; DeleteRun uses --database-url",
    ),
    "tls_cert": (str, "PEM certificate chain: serve over TLS"),
    "tls_key": (str, "PEM private key of --tls-cert"),
    "tls_client_ca": (str, "PEM CA: refuse clients without a certificate it signed (mutual TLS)"),
    "reader_tokens_file": (str, "bearer tokens (one a line) that may call the read RPCs"),
    "admin_tokens_file": (str, "bearer tokens (one a line) that may call every RPC"),
    "reflection": (parse_bool, "serve gRPC server reflection (default on)"),
    "max_request_bytes": (int, "largest request message accepted"),
    "max_response_bytes": (int, "largest response message sent"),
    "max_concurrent_rpcs": (int, "calls in flight beyond which new ones get RESOURCE_EXHAUSTED"),
    "keepalive_seconds": (float, "ping connections idle this long"),
    "min_ping_interval_seconds": (float, "refuse (GOAWAY) clients that ping more often"),
    "max_connection_age_seconds": (float, "close connections this old, gracefully (0: never)"),
    "db_timeout_seconds": (float, "bound on one database statement"),
    "log_format": (str, "text or json"),
    "workers": (int, "server processes sharing the gRPC port"),
    "watch_interval": (float, "seconds between two looks at the runs WatchRun streams watch"),
    "max_watchers": (int, "open WatchRun streams beyond which new ones get RESOURCE_EXHAUSTED"),
    "http_header_timeout_seconds": (
        float,
        "close an HTTP connection whose request headers are not complete this long after "
        "it opens or its request begins (0 < s <= 3600)",
    ),
    "http_idle_timeout_seconds": (
        float,
        "close a keep-alive HTTP connection idle this long (0 < s <= 86400)",
    ),
    "http_max_connections": (
        int,
        "open HTTP connections beyond which new ones get 503 (1..1000000; lowered to fit "
        "the file limit)",
    ),
    "http_allowed_hosts": (
        str,
        "comma-separated Host names a tokenless server on loopback answers besides "
        "localhost, 127.0.0.1 and [::1]",
    ),
    "trusted_proxies": (
        str,
        "comma-separated addresses/CIDRs whose X-Forwarded-For the HTTP gateway believes",
    ),
}


def _add_database(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help=f"SQLAlchemy URL of PySpur's database (env {ENV['database_url']}); "
        "default: sqlite:///spur-runs.db in the working folder",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spur-runs", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve RunService over gRPC")
    _add_database(serve)
    serve.add_argument("--grpc-address", help=f"HOST:PORT (env {ENV['grpc_address']})")
    serve.add_argument(
        "--http-address", help=f"HOST:PORT for HTTP/JSON (env {ENV['http_address']})"
    )
    serve.add_argument(
        "--max-workers", type=int, help=f"threads serving RPCs (env {ENV['max_workers']})"
    )
    serve.add_argument(
        "--pool-size", type=int, help=f"database connections (env {ENV['pool_size']})"
    )
    serve.add_argument(
        "--grace-seconds",
        type=float,
        help=f"how long SIGTERM lets in-flight calls finish (env {ENV['grace_seconds']})",
    )
    serve.add_argument(
        "--health-interval",
        type=float,
        help=f"seconds between database health pings (env {ENV['health_interval']})",
    )
    serve.add_argument("--log-level", help=f"DEBUG, INFO, ... (env {ENV['log_level']})")
    for name, (convert, text) in SERVING_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        if convert is parse_bool:  # --reflection / --no-reflection
            serve.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                help=f"{text} (env {ENV[name]})",
            )
        else:
            serve.add_argument(flag, dest=name, help=f"{text} (env {ENV[name]})")

    migrate = commands.add_parser(
        "migrate", help="create the schema, or add missing indexes to PySpur's database"
    )
    _add_database(migrate)

    seed = commands.add_parser("seed", help="add demo workflows and runs")
    _add_database(seed)
    seed.add_argument("--runs", type=int, default=20, help="how many runs to add (default 20)")
    return parser


def load_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """Flags over environment twins over defaults."""
    values: dict[str, Any] = env_defaults(environ)
    for name in ENV:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    try:
        for name in ("max_workers", "pool_size"):
            if name in values:
                values[name] = int(values[name])
        for name in ("grace_seconds", "health_interval"):
            if name in values:
                values[name] = float(values[name])
    except ValueError as error:
        raise ConfigError(str(error)) from None
    for name, (convert, _text) in SERVING_FLAGS.items():
        if isinstance(values.get(name), str):
            try:
                values[name] = convert(values[name])
            except ValueError:
                kind = {int: "an integer", float: "a number", parse_bool: "true or false"}
                raise ConfigError(
                    f"--{name.replace('_', '-')} (env {ENV[name]}) must be "
                    f"{kind.get(convert, 'valid')}, got {values[name]!r}"
                ) from None
    return Config(**values)


def _serve(config: Config) -> int:
    if config.workers > 1:
        from .workers import serve_workers

        return serve_workers(config)
    return serve(config)


def serve(
    config: Config, metrics: Metrics | None = None, stopping: threading.Event | None = None
) -> int:
    """Serve until SIGTERM or SIGINT (or `stopping` is set), then drain; one
    process, or one worker of several."""
    from .server import create_server

    try:
        if config.workers == 1:  # (a worker's siblings hold the port on purpose)
            from .workers import check_port_free

            check_port_free(config.grpc_address, "grpc_address")
        server, _port = create_server(config, metrics=metrics)
    except (ConfigError, OSError) as error:  # unreadable file, port taken
        print(f"spur-runs: {error}", file=sys.stderr)
        return 2
    server.start()
    if stopping is None:
        stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger(__name__).info(
            "%s: draining (up to %ss)", signal.Signals(signum).name, config.grace_seconds
        )
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args)
    except (ConfigError, TypeError) as error:
        print(f"spur-runs: {error}", file=sys.stderr)
        return 2
    from . import logs

    logs.setup(config)
    if args.command == "serve":
        return _serve(config)
    if args.command == "migrate":
        from .migrate import migrate

        migrate(config.database_url)
        return 0
    if args.command == "seed":
        from .seed import seed

        summary = seed(config.database_url, runs=args.runs)
        print(summary)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
