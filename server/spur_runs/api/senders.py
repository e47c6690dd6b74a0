"""Which streams a pool of sender threads gives up on: those of clients that
read nothing. Shared by WatchRun's senders (watch.py) and health Watch's
(runtime/health_service.py).

grpc's send blocks until the transport takes the message, and a client that
reads nothing (an HTTP/2 flow-control window of 0) never lets it. A few
senders serve every stream of the process in turn, so such clients held up
everyone else's messages: 500 non-reading WatchRun streams on 5 connections
delayed an honest watcher's first message by 23 s, and a minute once they
were re-opened as fast as they were cancelled (a review, 2026-12-04). So:

- a send blocked SLOW_SECONDS is given up (its call cancelled): a client
  that reads one stream of a connection and not another loses that one;
- a send blocked SATURATED_SECONDS while every sender is in a send is given
  up with every stream of its connection: a window of 0 is set for a whole
  connection, and its other streams would each take a sender in turn (not
  the gateway's socket, `unix:`, which carries every HTTP watch); and its
  address is a suspect for SUSPECT_SECONDS: a send of its blocked
  SUSPECT_SEND_SECONDS is given up the same way.

The owner calls `doomed` every TICK_SECONDS, and cancels what it returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from ..trust import address_of

W = TypeVar("W")

TICK_SECONDS = 0.1
SLOW_SECONDS = 30.0
SATURATED_SECONDS = 1.0
SUSPECT_SECONDS = 60.0
SUSPECT_SEND_SECONDS = 0.2
MAX_SUSPECTS = 4096


class NonReaders:
    """One sender pool's record of suspects; not thread-safe (one caller)."""

    def __init__(self, senders: int) -> None:
        self.senders = senders
        self._suspects: dict[str, float] = {}  # address -> until when

    def doomed(self, streams: Iterable[tuple[W, str, float | None]], now: float) -> list[W]:
        """Of `streams` (each: the stream, its grpc peer, since when its
        sender has been in a send, or None), those to cancel."""
        streams = list(streams)
        held = [(s, peer, since) for s, peer, since in streams if since is not None]
        saturated = len(held) >= self.senders
        slow = [(s, peer) for s, peer, since in held if since < now - SLOW_SECONDS]
        # What only an attack or a jam makes: every sender blocked, or a
        # suspect's send blocked at all. Then the whole connection goes.
        jammed = [
            (s, peer)
            for s, peer, since in held
            if (saturated and since < now - SATURATED_SECONDS)
            or (
                since < now - SUSPECT_SEND_SECONDS
                and self._suspects.get(address_of(peer), 0.0) > now
            )
        ]
        if not slow and not jammed:
            return []
        # The gateway's socket is no client: only its blocked streams go.
        connections = {peer for _, peer in jammed if not peer.startswith("unix:")}
        for peer in connections:
            address = address_of(peer)
            self._suspects.pop(address, None)  # (re-inserted last: the newest)
            self._suspects[address] = now + SUSPECT_SECONDS
        while len(self._suspects) > MAX_SUSPECTS:
            del self._suspects[next(iter(self._suspects))]
        doomed = {id(s): s for s, _ in slow + jammed}
        doomed.update((id(s), s) for s, peer, _ in streams if peer in connections)
        return list(doomed.values())
