"""The deadline of the RPC the current thread serves, for the database.

rpc.limits.DeadlineHook sets it from the client's deadline; db.Database
reads it to lower PostgreSQL's statement_timeout for that call, so that a
query whose caller has given up does not hold a connection (and its locks)
for the full --db-timeout-seconds.
"""

from __future__ import annotations

import contextvars
import time

# time.monotonic() value past which the caller no longer waits; None when
# the caller set no deadline (or outside an RPC).
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "spur_runs_deadline", default=None
)

# grpc reports "no deadline" as a remaining time of about 292 years.
_NO_DEADLINE = 10 * 365 * 24 * 3600.0


def set_remaining(seconds: float) -> None:
    _DEADLINE.set(time.monotonic() + seconds if seconds < _NO_DEADLINE else None)


def clear() -> None:
    _DEADLINE.set(None)


def remaining() -> float | None:
    """Seconds left for the current call (0 or less: already past), or None."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()
