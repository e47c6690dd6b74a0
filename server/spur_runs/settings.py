"""What config.py's table of settings becomes outside the process: the
command's flags, the reading of their environment twins, and the table in
docs/configuration.md. Nothing here names a setting: add one to `Config`
and it has its flag, its twin, its check and its docs row.

    python -m spur_runs.settings --markdown          # print the docs block
    python -m spur_runs.settings --write docs/configuration.md
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import ENV, SETTINGS, Config, ConfigError, either, flag, show_bound


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def _plain(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """`convert` (int or float) of ASCII text without "_" or spaces around
    it: int() and float() also take "1_2" (12: a typo read as a number),
    " 4" and full-width or other scripts' digits (a review, 2026-12-03)."""

    def parse(text: str) -> Any:
        if not text.isascii() or "_" in text or text != text.strip():
            raise ValueError(text)
        return convert(text)

    return parse


_INT, _FLOAT = _plain(int), _plain(float)


def _conversion(kind: object) -> Callable[[str], Any]:
    """A field's type -> how its flag's or twin's text is read. Strings
    (`str`, `str | None`) stay as given."""
    conversions: dict[object, Callable[[str], Any]] = {bool: parse_bool, int: _INT, float: _FLOAT}
    return conversions.get(kind, str)


# Values are converted in load_config, not by argparse, so that a bad value
# from the flag or from its environment twin gives the same single line.
_CONVERSIONS = {name: _conversion(kind) for name, kind in typing.get_type_hints(Config).items()}
_KINDS = {_INT: "an integer", _FLOAT: "a number", parse_bool: "true or false"}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}


def shown_default(name: str) -> str:
    """A default as --help and the docs show it."""
    value = _DEFAULTS[name]
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def shown_range(name: str, dash: str = "..") -> str:
    """A number's range, or a string's choices; "" for neither."""
    meta = SETTINGS[name]
    if meta.choices:
        return either(meta.choices)
    if meta.bounds is None:
        return ""
    least, most = meta.bounds
    return f"{'0 or ' if meta.zero else ''}{show_bound(least)}{dash}{show_bound(most)}"


def add_flags(parser: argparse.ArgumentParser, *, common: bool) -> None:
    """The settings' flags: those of every command (common), or the rest
    (serve's). Each help ends with its default and twin."""
    for name, meta in SETTINGS.items():
        if meta.common != common:
            continue
        limits = shown_range(name)
        text = f"{meta.help}{f' ({limits})' if limits else ''}"
        text += f" [default: {shown_default(name)}; env {meta.env}]"
        if _CONVERSIONS[name] is parse_bool:  # --reflection / --no-reflection
            action: Any = argparse.BooleanOptionalAction
            parser.add_argument(flag(name), dest=name, action=action, help=text)
        else:
            parser.add_argument(flag(name), dest=name, help=text)


def env_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment twins that are set, by field name."""
    environ = os.environ if environ is None else environ
    return {name: environ[var] for name, var in ENV.items() if environ.get(var)}


def load_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """Flags over environment twins over defaults. Only the command's own
    settings (those it has flags for, in `args`) are read: `migrate`, run
    with the server's environment (a Job beside the Deployment), neither
    uses nor checks SPUR_RUNS_GRPC_ADDRESS, as it takes no --grpc-address;
    the rest keep their defaults."""
    values: dict[str, Any] = {
        name: text for name, text in env_defaults(environ).items() if hasattr(args, name)
    }
    for name in ENV:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    for name, value in values.items():
        if not isinstance(value, str):
            continue
        convert = _CONVERSIONS[name]
        try:
            values[name] = convert(value)
        except ValueError:
            raise ConfigError(f"must be {_KINDS.get(convert, 'valid')}", name) from None
    return Config(**values)


def given_as(name: str, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str:
    """A setting as the operator gave it, for an error about it:
    `--grpc-address=bad` for a flag (which wins over its twin),
    `SPUR_RUNS_GRPC_ADDRESS=bad` for a twin, the bare flag for a default.
    The value as typed, quoted as a shell would need it (a path in full);
    one too long or not printable (a certificate pasted where its path
    goes) is cut and escaped, so that the error stays one line. Never the
    value of a setting that may hold a secret."""
    environ = os.environ if environ is None else environ
    meta = SETTINGS[name]
    value = getattr(args, name, None)
    if isinstance(value, bool):
        return flag(name) if value else f"--no-{flag(name)[2:]}"
    if value is not None:
        where = flag(name)
    elif environ.get(meta.env):
        where, value = meta.env, environ[meta.env]
    else:
        return flag(name)
    if meta.secret:
        return where
    text = str(value)
    if len(text) > 256 or not text.isprintable():
        cut = shlex.quote(text[:60].encode("unicode_escape").decode("ascii"))
        return f"{where}={cut}{f'... ({len(text)} characters)' if len(text) > 60 else ''}"
    return f"{where}={shlex.quote(text)}"


def explain(
    error: ConfigError, args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> str:
    """The line for a ConfigError: its settings named as the operator gave
    them (given_as), then the problem. The flag and its twin used to be
    named three ways ("--workers (env SPUR_RUNS_WORKERS)", "--log-level",
    "grpc_address"), whichever of them was set."""
    if not error.settings:
        return error.problem
    named = ", ".join(given_as(name, args, environ) for name in error.settings)
    return f"{named}: {error.problem}"


# docs/configuration.md's table lies between these lines.
BEGIN = (
    "<!-- settings table: generated from server/spur_runs/config.py by "
    "`python -m spur_runs.settings --write docs/configuration.md`; edit there -->"
)
END = "<!-- end of settings table -->"
HEADER = ("flag and range", "environment", "default", "meaning")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def docs_rows() -> dict[str, tuple[str, str, str, str]]:
    """The docs table's rows by flag: (flag and range, environment, default,
    meaning), as Markdown."""
    rows = {}
    for name, meta in SETTINGS.items():
        limits = shown_range(name, dash="–")
        first = f"`{flag(name)}`"
        env = f"`{meta.env}`"
        if _CONVERSIONS[name] is parse_bool:
            first += f" / `--no-{flag(name)[2:]}`"
            env += " (`true`/`false`)"
        default = shown_default(name)
        default = default if default in ("none", "on", "off") else f"`{default}`"
        meaning = meta.help + (f". {meta.doc}" if meta.doc else "")
        rows[flag(name)] = (
            _cell(f"{first} {limits}" if limits else first),
            _cell(env),
            _cell(default),
            _cell(meaning),
        )
    return rows


def markdown() -> str:
    """The generated block of docs/configuration.md, markers included."""
    lines = [BEGIN, "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in docs_rows().values()]
    return "\n".join([*lines, "", END])


def replace_block(text: str) -> str:
    """`text` with its generated block replaced by today's; ValueError when
    it has no block."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no block between {BEGIN!r} and {END!r}")
    return text[:start] + markdown() + text[end + len(END) :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spur_runs.settings", description=__doc__.splitlines()[0]
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the docs block")
    group.add_argument("--write", type=Path, metavar="FILE", help="rewrite FILE's docs block")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown())
        return 0
    try:
        args.write.write_text(replace_block(args.write.read_text()))
    except (OSError, ValueError) as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
