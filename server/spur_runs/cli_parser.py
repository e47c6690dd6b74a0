"""How the `spur-runs` command line is read: its commands, their own flags
and help texts (settings.py adds the settings' flags), the exit codes, and
the answer to a line that does not parse: one line on stderr and exit 2, as
every start-up error, with a command's flag typed before the command put
where it goes (`misplaced_flag`). cli.py runs the command it names.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import shlex
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .settings import add_flags

# `spur-runs --help`'s first line (cli.py's docstring opens with it too).
_DESCRIPTION = "The `spur-runs` command: serve, migrate, seed, demo, backup."

# Exit codes, one meaning each (`spur-runs --help`).
EXIT_FAILED = 1  # the operation failed: database unreachable, disk full, ...
EXIT_USAGE = 2  # fix the command line or the set-up: bad flag, database not migrated


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (and exit 2), like every other start-up
    error, rather than argparse's usage block. It also records its options
    and commands, which argparse keeps in private attributes, for
    misplaced_flag."""

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
        description=_DESCRIPTION,
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


def misplaced_flag(parser: _Parser, argv: Sequence[str]) -> str | None:
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
