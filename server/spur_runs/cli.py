"""The `spur-runs` command: serve, migrate, seed, demo, backup.

Every setting has an environment twin (config.py's table; settings.py makes
its flags and reads its twins); a flag given on the command line wins over
its twin. A command reads the twins of its own flags only. Errors are one
line on stderr, without a traceback unless --log-level DEBUG: exit code 2 for
usage and set-up (a bad flag, a database without PySpur's tables), 1 for an
operation that failed (a database that cannot be reached, ...).

The command line itself (commands, flags, help, usage errors) is
cli_parser.py's; here, what each command does, and how its failure or a
signal that stops it becomes one line and an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .cli_parser import EXIT_FAILED, EXIT_USAGE, misplaced_flag
from .cli_parser import build_parser as build_parser
from .config import Config, ConfigError
from .settings import explain, load_config


def _serve(args: argparse.Namespace, config: Config) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from .runtime.files import raise_file_limit
    from .runtime.workers import preflight
    from .store.migrate import warn_unknown_revisions
    from .store.schema_check import require_tables

    try:
        # Files and ports first (what a start-up fails on without the
        # database), then the database's tables, then its revisions (once,
        # before any worker starts).
        raise_file_limit(config)
        preflight(config)
        require_tables(config.database_url)
        if config.read_database_url is not None:
            # A replica URL naming another database (a typo, another
            # application's) was served: health SERVING, every read INTERNAL.
            require_tables(config.read_database_url, replica=True)
        warn_unknown_revisions(config.database_url)
    except ConfigError as error:
        print(f"spur-runs serve: {explain(error, args)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        print(f"spur-runs serve: {error}", file=sys.stderr)
        return EXIT_USAGE
    except SQLAlchemyError as error:
        # Unreachable now, maybe not later: serve, health says NOT_SERVING
        # until the database answers.
        logging.getLogger(__name__).warning(
            "could not check the database's tables: %s", _one_line(error)
        )
    if config.workers > 1:
        from .runtime.workers import serve_workers

        return serve_workers(config)
    from .runtime.serve import serve

    return serve(config)


def _one_line(error: BaseException) -> str:
    """The gist of an error in one line: a driver error's own first line
    (not SQLAlchemy's statement and parameters), else the message."""
    from sqlalchemy.exc import DBAPIError

    cause: BaseException = error
    if isinstance(error, DBAPIError) and error.orig is not None:
        cause = error.orig
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__


def _busy(error: BaseException) -> str:
    """What to add to a failed command's line when SQLite's write lock was
    held past the busy timeout: "database is locked" alone reads as broken."""
    cause = getattr(error, "orig", None) or error
    if str(getattr(cause, "sqlite_errorname", "")).startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return (
            ": another process is writing to it (PySpur, a seed, a migrate): run this again later"
        )
    return ""


def _migrate(args: argparse.Namespace, config: Config) -> int:
    from .store.migrate import migrate, migrate_sql
    from .store.schema_check import usable_url

    # As serve and seed do: a memory database is exit 2, not SQLAlchemy's
    # words and exit 1 (a folder, a file that is no database: _set_up).
    usable_url(config.database_url)
    if args.sql:
        migrate_sql(config.database_url, sys.stdout)
    else:
        migrate(config.database_url)
    return 0


def _set_up(error: Exception, config: Config) -> ConfigError | None:
    """The set-up to fix behind a command's failure, when SQLite says it
    can never open or write the file (a folder, not a database, read-only):
    exit 2 and which it is, where it read as an operation that failed."""
    from .store.schema_check import never_opens, usable_url

    try:
        return never_opens(error, usable_url(config.database_url))
    except ConfigError as unusable:
        return unusable


def _seed(args: argparse.Namespace, config: Config) -> int:
    from .seed import seed
    from .store.schema_check import require_tables

    require_tables(config.database_url)
    print(seed(config.database_url, runs=args.runs))
    return 0


def _demo(args: argparse.Namespace, config: Config) -> int:
    from .seed.demo import run_demo
    from .store.schema_check import require_tables

    require_tables(config.database_url)
    stopping = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stopping.set()  # the change being written is finished first

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def say(line: str) -> None:
        print(line, flush=True)

    run_demo(
        config.database_url,
        step_seconds=args.step_seconds,
        seconds=args.seconds,
        runs=args.runs,
        concurrent=args.concurrent,
        stopping=stopping,
        say=say,
    )
    return 0


def _backup(args: argparse.Namespace, config: Config) -> int:
    from .store.backup import backup

    print(backup(config.database_url, args.dest))
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "serve": _serve,
    "migrate": _migrate,
    "seed": _seed,
    "demo": _demo,
    "backup": _backup,
}


# The commands that write and end on their own. serve and demo stop on
# signals in their own way (a drain; the change being written finished).
_ONE_SHOT = ("migrate", "seed", "backup")


@contextlib.contextmanager
def _stop_on_signals(command: str) -> Iterator[list[int]]:
    """SIGINT, SIGTERM and SIGHUP (a closing terminal or SSH session) stop
    migrate, seed and backup alike: as KeyboardInterrupt, so that the work
    unwinds (its transaction rolled back, backup's partial copy removed:
    SIGTERM's default, dying at once, left a partial copy as large as the
    database beside DEST), then one line and 128 + the signal. The signals
    received are recorded: inside a SQLite statement the KeyboardInterrupt
    is raised in the connection's progress handler (store/engine.py), which
    sqlite3 turns into an OperationalError ("interrupted") that says nothing
    of the signal. Only the first raises, and only while the command runs;
    one more (`timeout` signals the process and its group) must not cut the
    clean-up short. A signal ignored at start (a job started with `&` by a
    script ignores SIGINT) stays ignored; the handlers before are put back."""
    received: list[int] = []
    if command not in _ONE_SHOT:
        yield received
        return
    armed = True

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        if armed and len(received) == 1:
            raise KeyboardInterrupt

    before = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        handler = signal.getsignal(signum)
        if handler in (signal.SIG_DFL, signal.default_int_handler):
            before[signum] = handler
            signal.signal(signum, on_signal)
    try:
        yield received
    finally:
        armed = False
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _interrupted(prefix: str, received: list[int]) -> int:
    signum = received[0] if received else signal.SIGINT
    by = f" by {signal.Signals(signum).name}" if signum != signal.SIGINT else ""
    print(f"{prefix}: interrupted{by}", file=sys.stderr)
    return 128 + signum


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    misplaced = misplaced_flag(parser, sys.argv[1:] if argv is None else argv)
    if misplaced is not None:
        print(misplaced, file=sys.stderr)
        return EXIT_USAGE
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the command's to name, and its --help to point at, not the top's
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    prefix = f"spur-runs {args.command}"
    try:
        config = load_config(args)
    except ConfigError as error:
        print(f"{prefix}: {explain(error, args)}", file=sys.stderr)
        return EXIT_USAGE
    except TypeError as error:
        print(f"{prefix}: {error}", file=sys.stderr)
        return EXIT_USAGE
    from .telemetry import logs

    logs.setup(config)
    with _stop_on_signals(args.command) as received:
        return _run(args, config, prefix, received)


def _run(args: argparse.Namespace, config: Config, prefix: str, received: list[int]) -> int:
    debug = config.log_level.upper() == "DEBUG"
    try:
        return _COMMANDS[args.command](args, config)
    except KeyboardInterrupt:
        return _interrupted(prefix, received)
    except BrokenPipeError:
        # stdout's reader left (`spur-runs migrate --sql | head`): nothing to
        # say, and nothing more to write at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as error:  # noqa: BLE001 - every failure: one line, a code
        if debug:
            traceback.print_exc()
        if received:  # the signal, not the error it became
            return _interrupted(prefix, received)
        if not isinstance(error, ConfigError):
            error = _set_up(error, config) or error
        if isinstance(error, ConfigError):
            print(f"{prefix}: {explain(error, args)}", file=sys.stderr)
            return EXIT_USAGE
        hint = "" if debug else " (--log-level DEBUG for the traceback)"
        print(f"{prefix}: {_one_line(error)}{_busy(error)}{hint}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
