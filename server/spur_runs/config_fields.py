"""What a row of config.py's table is made of, and how a setting is named.

A `Config` field is declared with `setting(...)`, which puts its `Setting`
(environment twin, help, range, choices) in the field's metadata. When a
value is wrong, `ConfigError` stops start-up naming the setting by its flag
(`flag`); `show_bound` and `either` word a range and a list of choices, in
those messages and in settings.py's --help and docs rows. Nothing here
knows any particular setting: the table itself is config.py's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar


class ConfigError(ValueError):
    """A configuration value that stops start-up (one clear line, exit 2).

    `settings` names the Config fields whose values are at fault; `problem`
    then says what is wrong without naming them, so that the command can
    name each as the operator gave it, `--grpc-address=bad` or
    `SPUR_RUNS_GRPC_ADDRESS=bad` (settings.explain). Without settings the
    problem stands alone (a database that is not migrated)."""

    def __init__(self, problem: str, *settings: str) -> None:
        self.problem = problem
        self.settings = settings
        named = ", ".join(flag(name) for name in settings)
        super().__init__(f"{named}: {problem}" if settings else problem)


@dataclass(frozen=True)
class Setting:
    """What a Config field carries besides its name, type and default."""

    env: str  # the environment twin; the flag is the field's name, --dashed
    help: str  # the flag's --help line, and the start of its docs row
    doc: str = ""  # more for the docs row (Markdown), after the help
    # A number's range, both ends inclusive, and whether 0 is allowed besides
    # as "off". The bounds are where a value stops making sense or stops
    # fitting what it is given to, not tuning advice.
    bounds: tuple[float, float] | None = None
    zero: bool = False
    choices: tuple[str, ...] = ()
    common: bool = False  # a flag of every command, not of `serve` only
    # Its value may hold a secret (a database URL's password): an error
    # names the setting, never echoes the value.
    secret: bool = False


_T = TypeVar("_T")


def setting(
    default: _T,
    env: str,
    help: str,
    doc: str = "",
    *,
    bounds: tuple[float, float] | None = None,
    zero: bool = False,
    choices: tuple[str, ...] = (),
    common: bool = False,
    secret: bool = False,
) -> _T:
    """A Config field: its default, and its Setting as the field's metadata."""
    meta = Setting(env, help, doc, bounds, zero, choices, common, secret)
    return dataclasses.field(default=default, metadata={"setting": meta})


def flag(name: str) -> str:
    """A field's flag: --its-name."""
    return "--" + name.replace("_", "-")


def show_bound(bound: float) -> str:
    """1.0 -> "1", 0.01 -> "0.01"."""
    return str(int(bound)) if bound == int(bound) else str(bound)


def either(choices: tuple[str, ...]) -> str:
    """("a", "b", "c") -> "a, b or c"."""
    return " or ".join(filter(None, [", ".join(choices[:-1]), choices[-1]]))
