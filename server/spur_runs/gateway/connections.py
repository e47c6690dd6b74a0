"""Bounds on the HTTP port's connections, so that clients that connect and
send nothing, or a header a byte at a time, cannot hold the process's file
descriptors (which the gRPC port and the database share) for ever:

- a connection must deliver a request's complete headers (with TLS, after
  its handshake) within the header timeout of opening, or of the first byte
  of its next request, else it is closed (aborted: nothing useful can be
  sent to such a client);
- a keep-alive connection idle for the idle timeout is closed (aiohttp's
  own keepalive_timeout);
- at most `max_connections` are open: one more evicts the oldest that has
  no request running (ConnectionCount), or if all have one, is answered
  503 at once and closed, before a byte of its request is read;
- accept() failing for want of descriptors is logged once per interval, not
  once per attempt (asyncio logs each one, about 128 a second).

protocol.py applies them to each connection; this module holds the numbers
and the counts.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, Protocol

from google.rpc import code_pb2, status_pb2

from ..config import Config
from .render import status_json

log = logging.getLogger(__name__)

# asyncio accepts up to this many connections in one turn of the loop, each
# holding a descriptor until it is refused: the listen backlog of the site.
BACKLOG = 128
# Seconds between two log lines about refused connections or failed accepts.
LOG_EVERY = 10.0
# A refused connection is closed gracefully (its 503 sent), then aborted if
# it is not closed within this long.
_REFUSED_LINGER = 1.0
# An idle keep-alive connection is evicted only once it has been idle this
# long: one whose request has just ended may still be writing its answer.
EVICT_AFTER = 1.0
_ACCEPT_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


def _refusal() -> bytes:
    body = status_json(
        status_pb2.Status(
            code=code_pb2.UNAVAILABLE,
            message="too many open HTTP connections; retry later",
        )
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def descriptor_budget(configured: int, soft_limit: int | None = None) -> int:
    """`configured`, lowered to what the file limit allows. Connections over
    the cap hold a descriptor until refused: asyncio accepts up to BACKLOG
    per turn of its loop, and a refusal takes a few turns (2,000 connections
    opened as fast as one client could, cap 64: at most 241 descriptors
    beyond the idle server's 18). So two backlogs are set aside for them, and
    the cap is half of the rest: the other half stays for gRPC's
    connections, the database pool and files."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, (soft_limit - 2 * BACKLOG) // 2))


class Throttled:
    """A WARNING at most once per `every` seconds; the others are counted
    and their number is given in the next line."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self._every = every
        self._last = -every
        self._suppressed = 0

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self._every:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (and %d more in the last %.0f s)"
            args = (*args, self._suppressed, now - self._last)
        self._last, self._suppressed = now, 0
        log.warning(message, *args)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    idle_timeout: float
    max_connections: int

    @classmethod
    def from_config(cls, config: Config) -> ConnectionLimits:
        cap = descriptor_budget(config.http_max_connections)
        if cap < config.http_max_connections:
            log.warning(
                "at most %d open HTTP connections, not --http-max-connections %d: "
                "the process may open only %d files (ulimit -n)",
                cap,
                config.http_max_connections,
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            )
        return cls(config.http_header_timeout_seconds, config.http_idle_timeout_seconds, cap)


class Evictable(Protocol):
    def guard_evict(self) -> None: ...


class ConnectionCount:
    """The open connections of one gateway (its event loop's thread only),
    and those without a request running, oldest first: new ones (no
    request yet) and idle keep-alive ones.

    At the cap, a new connection evicts the oldest new one, else the oldest
    idle one, rather than being refused: else clients that open connections
    and send nothing would keep everyone else out for as long as they kept
    opening them. A real client's new connection sends its request at once
    and is then no longer evictable. Only when every open connection has a
    request running (or ended one less than EVICT_AFTER ago) is the new one
    refused (503)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self.refused = 0
        self.evicted = 0
        # (Ordered: the oldest first. Idle ones with the time they became so.)
        self._new: dict[Evictable, None] = {}
        self._idle: dict[Evictable, float] = {}
        self._refusal = _refusal()
        self._log = Throttled()

    def admit(self, connection: Evictable) -> bool:
        if self.open >= self.limits.max_connections and not self._evict():
            self.refused += 1
            self._log.warning(
                "refused an HTTP connection: %d are open (--http-max-connections), "
                "each with a request running",
                self.open,
            )
            return False
        self.open += 1
        self._new[connection] = None
        return True

    def _evict(self) -> bool:
        victim = next(iter(self._new), None)
        if victim is not None:
            del self._new[victim]
        else:
            oldest = next(iter(self._idle.items()), None)
            if oldest is None or time.monotonic() - oldest[1] < EVICT_AFTER:
                return False
            victim = oldest[0]
            del self._idle[victim]
        self.evicted += 1
        victim.guard_evict()
        return True

    def close_new(self) -> None:
        """Close the connections that have sent no request yet (shutdown:
        aiohttp closes the others once idle, but knows nothing of those
        still in their TLS handshake)."""
        for connection in list(self._new):
            connection.guard_evict()

    def busy(self, connection: Evictable) -> None:
        self._new.pop(connection, None)
        self._idle.pop(connection, None)

    def idle(self, connection: Evictable) -> None:
        self._idle[connection] = time.monotonic()

    def release(self, connection: Evictable) -> None:
        self.busy(connection)
        self.open -= 1

    def refuse(
        self, transport: asyncio.BaseTransport, loop: asyncio.AbstractEventLoop, plain: bool
    ) -> None:
        """Answer 503 and close, without reading the request (a TLS client,
        before its handshake, can only be dropped)."""
        if not plain and isinstance(transport, asyncio.Transport):
            transport.abort()
            return
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(self._refusal)
        transport.close()
        if isinstance(transport, asyncio.Transport):
            loop.call_later(_REFUSED_LINGER, transport.abort)  # (a no-op once closed)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log accept() failing for want of descriptors (or memory) once per
    LOG_EVERY seconds. asyncio logs each failed attempt, with a traceback,
    and retries a second later: with the file limit reached, that is a flood
    that hides everything else. Other loop errors are logged as before."""
    throttled = Throttled()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if "socket" in context and isinstance(error, OSError) and error.errno in _ACCEPT_ERRORS:
            throttled.warning(
                "cannot accept HTTP connections: %s; retrying every second",
                error.strerror or error,
            )
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
