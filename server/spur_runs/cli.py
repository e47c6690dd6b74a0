"""The `spur-runs` command: serve, migrate, seed, demo, backup.

Every setting has an environment twin (config.py's table; settings.py makes
its flags and reads its twins); a flag given on the command line wins over
its twin. A command reads the twins of its own flags only. Errors are one
line on stderr, without a traceback unless --log-level DEBUG: exit code 2 for
usage and set-up (a bad flag, a database without PySpur's tables), 1 for an
operation that failed (a database that cannot be reached, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import math
import os
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from .config import Config, ConfigError
from .settings import add_flags, explain, load_config

# Exit codes, one meaning each (`spur-runs --help`).
EXIT_FAILED = 1  # the operation failed: database unreachable, disk full, ...
EXIT_USAGE = 2  # fix the command line or the set-up: bad flag, database not migrated


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (and exit 2), like every other start-up
    error, rather than argparse's usage block. It also records its options
    and commands, which argparse keeps in private attributes, for
    _misplaced."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before argparse's own __init__, which adds -h through
        # add_argument. Option -> whether a value follows it.
        self.options: dict[str, bool] = {}
        self.commands: dict[str, _Parser] = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        for option in action.option_strings:
            self.options[option] = action.nargs is None
        return action

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _ranged(convert: Callable[[str], Any], most: float, *, zero: bool) -> Callable[[str], Any]:
    """An argparse type: `text` as an int or a finite float, above 0 (or 0
    too, with `zero`) and at most `most`; ASCII only, no "_" (int() and
    float() also take "1_0" and "٣")."""

    def check(text: str) -> Any:
        if not text.isascii() or "_" in text:
            raise ValueError(text)
        value = convert(text)
        if not math.isfinite(value) or value > most or value < 0 or (value == 0 and not zero):
            raise ValueError(text)
        return value

    kind = "integer" if convert is int else "number"
    check.__name__ = f"{'non-negative' if zero else 'positive'} {kind} (at most {int(most):,})"
    return check


def _non_negative(convert: Callable[[str], Any], most: float) -> Callable[[str], Any]:
    return _ranged(convert, most, zero=True)


def _positive(convert: Callable[[str], Any], most: float) -> Callable[[str], Any]:
    return _ranged(convert, most, zero=False)


def _command(commands: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # see build_parser
    )
    add_flags(parser, common=True)
    return parser


_EPILOG = """\
Every setting has an environment twin, shown with its default in each
command's --help; a flag given on the command line wins over its twin. The
flags that only shape one command's work (seed --runs, demo's) have none.
Flags go after the command: spur-runs serve --log-level DEBUG. A command
reads the twins of its own flags only: SPUR_RUNS_GRPC_ADDRESS, a setting of
serve, is neither used nor checked by migrate.

exit codes: 0 done; 1 the operation failed (database unreachable, ...);
2 usage or set-up to fix (bad flag, database not migrated); 128 + N
migrate, seed or backup stopped by signal N (SIGINT 130, SIGTERM 143,
SIGHUP 129): what it was writing rolled back, done by running it again.
"""

_MIGRATE = """\
Bring the database to this service's newest schema revision, each revision
recorded as it completes (interrupted, it goes on from there when run again):
on SQLite each revision in one transaction; on PostgreSQL its indexes built
CONCURRENTLY (outside a transaction: PySpur keeps writing meanwhile). On an
empty database it creates PySpur's tables (workflows,
workflow_versions, runs, tasks, as PySpur 0.1.18 declares them); on any
database it adds the indexes this service's queries need (ix_spur_runs_*),
and records its revision in its own table, spur_runs_alembic_version. It
changes no PySpur table: no column, constraint or row of theirs, and it drops
nothing; on a database PySpur made, those indexes and that table are all it
adds. Running it again does nothing; so does running an older build's on a
database a newer one migrated (with a warning: it never downgrades). --sql
prints the SQL instead of running it.
"""

_SEED = """\
Add the three demo workflows (unless there) and --runs demo runs of them, in
bulk. Every seed starts with the same showcase; on a fresh database its ids
are always these (printed at the end):
  batch run R1 (children R2..R4), running run R5, paused run R6,
  failed run R7, canceled run R8, completed run R9.
With --runs below 9, those that fit, in that order.
Without --runs (README's first command): 20 runs on a database that never
had one; on one that has, the showcase put back at R1..R9 as a fresh seed
has it (re-created or reset: statuses, tasks, children, start times from
now) and nothing added, in one transaction, so that README's walkthrough
works again. Nothing is written where R1..R9 hold other workflows' runs
(unless the demo has no runs yet: then 20 runs at the next ids).
"""

_DEMO = """\
Play PySpur's engine on the demo workflows, so that WatchRun shows changes:
its own process, writing with plain SQL, one change per transaction every
--step-seconds. It first moves the demo's unfinished runs (on a fresh seed:
R5), then starts new runs (the next free ids) so that --concurrent runs are
always moving. Each run goes PENDING -> RUNNING; each task, in node order,
PENDING -> RUNNING -> COMPLETED; then the run -> COMPLETED. It prints a line
when a run starts or completes, and stops on SIGINT or SIGTERM, after
--seconds, or once --runs runs have completed (exit 0). It writes demo data:
point it at a demo database, not at PySpur's production one.
"""


def build_parser() -> _Parser:
    parser = _Parser(
        prog="spur-runs",
        description=__doc__.splitlines()[0],
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # argparse took any unique prefix of a flag: `--max-conn 300`, meant
        # as a connection bound, set --max-connection-age-seconds, and a
        # script's prefix broke (ambiguous) once a flag sharing it came.
        # Twins are exact; so are flags.
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"spur-runs {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _command(
        commands,
        "serve",
        "serve RunService over gRPC (and HTTP/JSON with --http-address)",
        "Serve RunService over gRPC, and over HTTP/JSON with --http-address, until SIGTERM,\n"
        "SIGINT or SIGHUP (then drain). The database must have PySpur's tables\n"
        "(`spur-runs migrate`).",
    )
    add_flags(serve, common=False)

    migrate = _command(
        commands,
        "migrate",
        "create PySpur's tables on an empty database; add this service's indexes",
        _MIGRATE,
    )
    migrate.add_argument(
        "--sql",
        action="store_true",
        help="print the SQL it would run (from the database's current revision on), run nothing",
    )

    seed = _command(
        commands, "seed", "add demo workflows and runs (fixed ids), or put the demo's back", _SEED
    )
    seed.add_argument(
        "--runs",
        type=_non_negative(int, 10_000_000),
        default=None,
        help="how many runs to add [default: none: the showcase put back, or 20 runs]",
    )

    demo = _command(commands, "demo", "move demo runs through their tasks, for WatchRun", _DEMO)
    demo.add_argument(
        "--step-seconds",
        type=_positive(float, 3600),
        default=1.0,
        help="seconds between two changes of a run [default: 1.0]",
    )
    demo.add_argument(
        "--seconds",
        type=_non_negative(float, 10**7),
        default=0.0,
        help="stop after this long (0: until SIGINT/SIGTERM) [default: 0]",
    )
    demo.add_argument(
        "--runs",
        type=_non_negative(int, 10**9),
        default=0,
        help="stop once this many runs have completed (0: no bound) [default: 0]",
    )
    demo.add_argument(
        "--concurrent",
        type=_positive(int, 1000),
        default=1,
        help="runs moving at a time [default: 1]",
    )

    backup = _command(
        commands,
        "backup",
        "copy the SQLite database consistently, also while serving",
        "Copy the SQLite database to DEST with SQLite's online backup API: one consistent\n"
        "snapshot (the WAL included), safe while the server serves and PySpur writes. DEST\n"
        "must not exist. For PostgreSQL, use pg_dump.",
    )
    backup.add_argument("dest", metavar="DEST", help="the new file to write")
    named = {"serve": serve, "migrate": migrate, "seed": seed, "demo": demo, "backup": backup}
    for name, command in named.items():
        assert isinstance(command, _Parser)  # add_parser makes its parent's class
        parser.commands[name] = command
    return parser


def _misplaced(parser: _Parser, argv: Sequence[str]) -> str | None:
    """The line for a command's flag typed before the command, as docker and
    git take their global flags (`spur-runs --log-level DEBUG serve`): where
    it goes, with the command fixed. argparse alone read the flag's value as
    the command ("invalid choice: 'DEBUG'"). Flags stay after the command
    only: a flag in two places would need a rule for which wins, and the
    top-level --help would list every setting again. None when no such flag
    comes before the command: argparse judges the line."""
    commands = parser.commands
    # Every command's flags, with whether each takes a value after it.
    takes_value = {
        option: value
        for command in commands.values()
        for option, value in command.options.items()
        if option not in parser.options  # -h, --help: the top's own
    }
    found: str | None = None
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in commands or not token.startswith("-"):
            break
        option, equals, _value = token.partition("=")
        if option in takes_value:
            found = found or option
            i += 1 if equals or not takes_value[option] else 2
        else:
            i += 1
    if found is None:
        return None
    prog = parser.prog
    if i < len(argv) and argv[i] in commands:
        fixed = shlex.join([prog, argv[i], *argv[:i], *argv[i + 1 :]])
        return f"{prog}: {found} goes after the command: {fixed}"
    # No command, or a word that is none: argparse would take the flag's
    # value for the command.
    fixed = shlex.join(argv[:i])
    return (
        f"{prog}: {found} goes after the command: {prog} COMMAND {fixed} "
        f"(COMMAND: {', '.join(commands)})"
    )


def _version() -> str:
    try:
        return importlib.metadata.version("spur-runs")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "(not installed)"


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
    misplaced = _misplaced(parser, sys.argv[1:] if argv is None else argv)
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
