"""A client-side bound on each PostgreSQL statement, for a database that
takes the bytes and never answers.

statement_timeout (--db-timeout-seconds, lowered to a call's deadline) is
enforced by the server, and the TCP bounds of dead_peer_args only by a peer
that stops acknowledging. A PostgreSQL server that hangs (its disk, a
SIGSTOP) or a proxy in front of it that stops forwarding does neither: the
kernel still acknowledges every packet, and libpq waits in poll() forever.
Each such statement held an RPC thread and a connection until the database
answered again, and with every thread held the server answered nothing,
not even health, and SIGTERM could not end it.

So every statement is armed here with its bound plus SLACK_SECONDS (the time
the server's own cancellation needs to come back): once that has passed with
no answer, a sweeper thread shuts the connection's socket down. libpq's wait
returns at once, psycopg raises OperationalError for the closed connection,
SQLAlchemy invalidates it (and the pool's older ones) and the call answers
UNAVAILABLE, as for any lost connection. A healthy statement is never cut:
the server cancels it first, at statement_timeout.

Armed by store/libpq.py for the hot reads, by WatchedCursor (psycopg's
documented cursor_factory) for every other statement, and by
WatchedConnection for COMMIT and ROLLBACK.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from .. import deadline

log = logging.getLogger(__name__)

# Past a statement's bound, how long the server's cancellation may take to
# arrive before the connection is deemed lost.
SLACK_SECONDS = 2.0
# How often the sweeper looks: a lost statement ends within its bound plus
# SLACK_SECONDS plus this.
SWEEP_SECONDS = 0.25


class StatementWatchdog:
    """Armed statements by connection: (until, the psycopg connection)."""

    def __init__(self) -> None:
        self._armed: dict[int, tuple[float, psycopg.Connection[Any]]] = {}
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        # A forked worker (--workers) starts its own sweeper when it arms.
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._armed = {}
        self._lock = threading.Lock()
        self._sweeper = None

    def arm(self, connection: psycopg.Connection[Any], bound: float | None) -> bool:
        """Bound the statement `connection` is about to send by `bound`
        seconds (--db-timeout-seconds; None: none) or the call's deadline,
        whichever ends first. False when neither bounds it (not armed)."""
        left = deadline.remaining()
        if left is not None and (bound is None or left < bound):
            bound = max(left, 0.0)
        if bound is None:
            return False
        with self._lock:
            self._armed[id(connection)] = (time.monotonic() + bound + SLACK_SECONDS, connection)
            if self._sweeper is None:
                self._sweeper = threading.Thread(
                    target=self._sweep, name="pg-statement-watchdog", daemon=True
                )
                self._sweeper.start()
        return True

    def disarm(self, connection: psycopg.Connection[Any]) -> bool:
        """False when the sweeper cut the connection first (its answer may
        have come in time, but the socket is shut down now)."""
        with self._lock:
            return self._armed.pop(id(connection), None) is not None

    def _sweep(self) -> None:
        while True:
            time.sleep(SWEEP_SECONDS)
            try:
                self._cut_expired()
            except Exception:  # noqa: BLE001 - the sweeper must outlive any one failure
                log.exception("the PostgreSQL statement watchdog failed a sweep")

    def cut_all(self) -> int:
        """Shut down the connection of every statement still armed (the
        server's grace period is over); how many were cut."""
        return self._cut(float("inf"))

    def _cut_expired(self) -> None:
        cut = self._cut(time.monotonic())
        if cut:
            log.warning(
                "%d PostgreSQL statement(s) got no answer within their bound and %.0f s more: "
                "their connections are closed (the database, or the network to it, hangs)",
                cut,
                SLACK_SECONDS,
            )

    def _cut(self, now: float) -> int:
        cut = 0
        with self._lock:
            expired = [key for key, (until, _) in self._armed.items() if until <= now]
            # Shut down under the lock: a statement that ends meanwhile
            # disarms (under it too) before its connection can be closed and
            # its descriptor reused.
            for key in expired:
                _, connection = self._armed.pop(key)
                cut += shut_down(connection)
        return cut


def shut_down(connection: psycopg.Connection[Any]) -> bool:
    """Shut `connection`'s socket down: whatever waits on it returns at once
    and psycopg raises OperationalError (a lost connection). False when it
    was closed already."""
    if connection.closed:
        return False
    try:
        # A duplicate of the descriptor: shutdown() acts on the socket both
        # share, and closing the duplicate leaves libpq's own open.
        with socket.socket(fileno=os.dup(connection.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, psycopg.Error):
        return False
    return True


WATCHDOG = StatementWatchdog()


class WatchedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose COMMIT and ROLLBACK WATCHDOG bounds too:
    they go without a cursor, and COMMIT is where a database whose disk
    hangs stops answering. Its statements' bound is its cursor class's
    (watched_cursor), which create_db_engine gives it."""

    def commit(self) -> None:
        with watching(self, bound_of(self)[1]):
            super().commit()

    def rollback(self) -> None:
        with watching(self, bound_of(self)[1]):
            super().rollback()


def watched_cursor(bound: float | None) -> type[psycopg.Cursor[Any]]:
    """A psycopg cursor class whose statements WATCHDOG bounds by `bound`
    seconds (or the call's deadline): psycopg.connect's cursor_factory."""

    class WatchedCursor(psycopg.Cursor[Any]):
        # Read by store/libpq.py, which sends the hot reads past any cursor.
        statement_bound = bound

        def execute(self, *args: Any, **kwargs: Any) -> Any:
            with watching(self.connection, bound):
                return super().execute(*args, **kwargs)

        def executemany(self, *args: Any, **kwargs: Any) -> Any:
            with watching(self.connection, bound):
                return super().executemany(*args, **kwargs)

    return WatchedCursor


@contextmanager
def watching(connection: psycopg.Connection[Any], bound: float | None) -> Iterator[None]:
    """WATCHDOG armed on `connection` for the block."""
    WATCHDOG.arm(connection, bound)
    try:
        yield
    finally:
        WATCHDOG.disarm(connection)


def bound_of(connection: psycopg.Connection[Any]) -> tuple[bool, float | None]:
    """Whether `connection`'s statements are watched, and their bound."""
    factory = connection.cursor_factory
    if not hasattr(factory, "statement_bound"):
        return False, None
    return True, factory.statement_bound
