"""Where the service connects and where it listens, as settings give them:
database URLs, checked at start-up (config.py) for what no command could
open, with the one query parameter of ours in them (`prepare_threshold`,
read again by store/engine.py); and HOST:PORT, parsed for config.py's
checks and for the listeners that bind it (runtime, gateway).
"""

from __future__ import annotations

from .config_fields import ConfigError

# A PostgreSQL URL's query parameter that spur-runs takes for psycopg's
# `prepare_threshold` (psycopg.connect's keyword, which SQLAlchemy would
# pass on as text; libpq knows no such key): `none` turns named prepared
# statements off, as PgBouncer in transaction mode before 1.21 needs
# (docs/production.md), for psycopg's cursor and for store/libpq.py's reads.
PREPARE_THRESHOLD = "prepare_threshold"


def prepare_threshold(value: object) -> int | None:
    """A URL's `prepare_threshold` as psycopg takes it: `none` (any case) is
    None, a whole number 0 or more is itself. ValueError for anything else
    (given twice, a word, a negative number)."""
    if isinstance(value, str):
        if value.lower() == "none":
            return None
        if value.isdigit():
            return int(value)
    raise ValueError(f"{PREPARE_THRESHOLD} must be none or a whole number 0 or more")


def check_database_url(url: str, name: str) -> str:
    """The URL's scheme (sqlite, postgresql or postgres), or ConfigError
    naming `name` (a Config field) for a URL no command could open, found at
    start as every bad setting is: another scheme, a port that is no number,
    one SQLAlchemy cannot parse, a SQLite driver other than Python's sqlite3
    (PostgreSQL's driver is always psycopg 3: store/engine.py sets it). They
    were each command's exit 1, in SQLAlchemy's words ("invalid literal for
    int() with base 10", "Can't load plugin:
    sqlalchemy.dialects:sqlite.aiosqlite"). The message never quotes the
    URL: it may hold a password."""
    scheme, _, driver = url.split(":", 1)[0].partition("+")
    if scheme not in ("sqlite", "postgresql", "postgres"):
        raise ConfigError(
            f"scheme {scheme!r} is not supported (use sqlite:// or postgresql://)", name
        )
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if scheme == "sqlite" and driver not in ("", "pysqlite"):
        raise ConfigError(
            f"SQLite is read through Python's sqlite3: sqlite:///FILE, not sqlite+{driver}", name
        )
    try:
        port = make_url(url).port  # parsed when asked for, which may fail
    except ArgumentError:
        raise ConfigError(
            "is not one SQLAlchemy can read (sqlite:///FILE, postgresql://USER@HOST/DB)", name
        ) from None
    except ValueError:
        port = -1
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError("its port is not a number from 0 to 65535", name)
    query = make_url(url).query
    if scheme != "sqlite" and PREPARE_THRESHOLD in query:
        try:
            prepare_threshold(query[PREPARE_THRESHOLD])
        except ValueError as error:
            raise ConfigError(str(error), name) from None
    return scheme


def parse_address(address: str, setting: str | None = None) -> tuple[str, int]:
    """Split HOST:PORT ([v6]:PORT too); ConfigError, naming `setting` (a
    Config field) if given, when it is not one."""
    host, sep, port = address.rpartition(":")
    # isascii: isdigit() also takes "²", which int() refuses.
    if not sep or not host or not (port.isascii() and port.isdigit()) or not int(port) <= 65535:
        if setting is None:
            raise ConfigError(f"{address!r} must be HOST:PORT (a port of 0-65535)")
        raise ConfigError("must be HOST:PORT (a port of 0-65535)", setting)
    return host.strip("[]"), int(port)
