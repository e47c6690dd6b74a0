"""Answers the gateway writes, and the connections of those that stop moving.

aiohttp writes an answer into the transport, then waits (drain) until the
transport's buffer is below its low-water mark, with no time limit. A
client that reads nothing held its connection, and the part of the answer
the kernel's send buffer could not take, for as long as it kept the
connection open: the idle timeout starts only once the answer is written.

So the answers being written are watched, as nginx's `send_timeout` does:
one whose transport's buffer has not shrunk for the idle timeout
(--http-idle-timeout-seconds) has its connection aborted; its drain then
fails, and what it held is freed (its charge in rpc/unread.py with it). A
slow reader keeps its connection as long as its answer moves at all.

Per answer this costs a dictionary entry set and removed; the check runs
once a second, over the answers being written.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

log = logging.getLogger(__name__)

# Seconds between two checks (at most, a stalled answer is cut this late).
CHECK_SECONDS = 1.0


class Writes:
    def __init__(self, stall_seconds: float) -> None:
        self.stall_seconds = stall_seconds
        # transport -> (its buffer's size at the last check, when it last moved)
        self._writing: dict[asyncio.Transport, tuple[int, float]] = {}
        self.aborted = 0  # connections cut so far (for tests and logs)

    async def write(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """Write `response` whole (aiohttp then sends nothing more of it)."""
        transport = request.transport
        if transport is None:  # (the connection is gone already)
            raise ConnectionResetError("the client went away")
        self._writing[transport] = (-1, time.monotonic())
        try:
            await response.prepare(request)
            await response.write_eof()
        finally:
            self._writing.pop(transport, None)

    def check(self, now: float) -> int:
        """Abort the connections whose answer has not moved for
        stall_seconds; how many."""
        stalled = []
        for transport, (size, moved) in list(self._writing.items()):
            left = transport.get_write_buffer_size()
            if left != size:
                self._writing[transport] = (left, now)
            elif now - moved >= self.stall_seconds:
                stalled.append(transport)
        for transport in stalled:
            self._writing.pop(transport, None)
            transport.abort()
        if stalled:
            self.aborted += len(stalled)
            log.warning(
                "closed %d HTTP connection(s) whose answer did not move for %.0f s "
                "(the client reads nothing)",
                len(stalled),
                self.stall_seconds,
            )
        return len(stalled)

    async def check_forever(self) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            self.check(time.monotonic())
