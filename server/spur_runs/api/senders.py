"""Which streams a pool of sender threads gives up on: those of clients that
read nothing. Shared by WatchRun's senders (watch.py) and health Watch's
(runtime/health_service.py).

grpc's send blocks until the transport takes the message, and a client that
reads nothing (an HTTP/2 flow-control window of 0) never lets it. A few
senders serve every stream of the process in turn, so such clients held up
everyone else's messages: 500 non-reading WatchRun streams on 5 connections
delayed an honest watcher's first message by 23 s, and a minute once they
were re-opened as fast as they were cancelled (a review, 2026-12-04). So:

- a send blocked SLOW_SECONDS is given up (its call cancelled), alone;
- while every sender is blocked in a send (a jam), a send blocked
  SATURATED_SECONDS is given up, and with it every stream of its
  connection that is busy too (blocked in a send, or waiting for a sender
  with a message): a window of 0 is set for a whole connection, and those
  streams would each take a sender in turn. A stream of that connection
  that reads (nothing of it waits) is left alone: an L7 proxy carries many
  clients' streams on one connection. The gateway's socket (`unix:`, every
  HTTP watch) is never given up whole;
- the address of such a connection is a suspect for SUSPECT_SECONDS: in a
  jam, a send of it blocked SUSPECT_SEND_SECONDS is given up the same way.

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

    def doomed(self, streams: Iterable[tuple[W, str, float | None, bool]], now: float) -> list[W]:
        """Of `streams` (each: the stream, its grpc peer, since when its
        sender has been in a send or None, and whether a message of it
        waits for a sender), those to cancel."""
        streams = list(streams)
        held = [(s, peer, since) for s, peer, since, _ in streams if since is not None]
        doomed = {id(s): s for s, _, since in held if since < now - SLOW_SECONDS}
        if len(held) < self.senders:  # no jam: a slow client loses its own stream only
            return list(doomed.values())
        jammed = [
            (s, peer)
            for s, peer, since in held
            if since < now - SATURATED_SECONDS
            or (
                since < now - SUSPECT_SEND_SECONDS
                and self._suspects.get(address_of(peer), 0.0) > now
            )
        ]
        doomed.update((id(s), s) for s, _ in jammed)
        connections = {peer for _, peer in jammed if not peer.startswith("unix:")}
        for peer in connections:
            address = address_of(peer)
            self._suspects.pop(address, None)  # (re-inserted last: the newest)
            self._suspects[address] = now + SUSPECT_SECONDS
        while len(self._suspects) > MAX_SUSPECTS:
            del self._suspects[next(iter(self._suspects))]
        doomed.update(
            (id(s), s)
            for s, peer, since, waiting in streams
            if peer in connections and (since is not None or waiting)
        )
        return list(doomed.values())
