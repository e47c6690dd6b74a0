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
from collections.abc import Sequence
from typing import Any

from .config import ENV, Config, ConfigError, env_defaults


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
    return Config(**values)


def _serve(config: Config) -> int:
    from .server import create_server

    server, _port = create_server(config)
    server.start()
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
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
