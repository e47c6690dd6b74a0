"""Which file a SQLite database's path names, to notice it replaced.

SQLite connections hold the file they opened, not its path. A database
restored by moving a backup over the live path (`mv backup.db runs.db`), or
deleted, went unnoticed while serving: the pooled and kept connections read
the old file, new connections opened the new one, so a read could come from
one file and a write go to the other, with health SERVING throughout. Nor
can the new file be opened safely in its place while serving: the old
file's -wal beside it would be read as the new one's. So the health ping
(Database.ping) asks here first: a replaced or missing file is an outage
(health NOT_SERVING, every call UNAVAILABLE, saying why) until the server
restarts (docs/production.md: restore a backup with the server stopped).
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import Engine

from ..errors import Unavailable


class FileIdentity:
    """The (device, inode) of the file at `path` when first checked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None

    @classmethod
    def of(cls, engine: Engine) -> FileIdentity | None:
        """For a SQLite engine on a file; None for memory or PostgreSQL."""
        url = engine.url
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        return cls(Path(url.database).resolve())

    def check(self) -> None:
        """Unavailable when the path names no file, or another file than
        the first time it was checked (for good: only a restart reopens)."""
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            if self._seen is None:
                return  # not there yet (a volume mounted later): the ping says
            raise Unavailable(f"the database file {self.path} is gone") from None
        now = (found.st_dev, found.st_ino)
        if self._seen is None:
            self._seen = now
        elif now != self._seen:
            raise Unavailable(
                f"the database file {self.path} was replaced while serving; restart "
                "spur-runs to serve the new one"
            )
