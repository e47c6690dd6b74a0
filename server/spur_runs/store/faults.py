"""Driver errors that are a stored value's fault, not the database's: the
same on every read of that value, so neither UNAVAILABLE (which clients
retry forever) nor a reason to stop reading other rows. rpc/status.py maps
them; api/watch.py ends only the watches of the run that holds one."""

from __future__ import annotations

import re

from sqlalchemy import exc as sa_exc

# sqlite3's error for stored text that is not UTF-8 (written by a tool other
# than PySpur): an OperationalError like a lost connection, but permanent.
_NOT_UTF8 = re.compile(r"Could not decode to UTF-8 column '([A-Za-z_][A-Za-z0-9_]{0,62})'")


def not_utf8_column(error: BaseException) -> str | None:
    """The column of a stored text that is not UTF-8 ("" when sqlite3 named
    no plain column), or None for any other error."""
    if not isinstance(error, sa_exc.OperationalError):
        return None
    text = str(error.orig)
    if not text.startswith("Could not decode to UTF-8"):
        return None
    named = _NOT_UTF8.match(text)
    return named.group(1) if named else ""
