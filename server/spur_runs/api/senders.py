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

`NonReaders.start` checks every TICK_SECONDS, on a thread of its own (a
poll or a ping stuck in the database must not stop it), and cancels what
`doomed` names.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import grpc

from ..trust import Suspects, address_of

log = logging.getLogger(__name__)

W = TypeVar("W")
# A stream as the check sees it: its call, its grpc peer, since when its
# sender has been in a send (or None), and whether a message of it waits
# for a sender.
Stream = tuple[grpc.ServicerContext, str, float | None, bool]

TICK_SECONDS = 0.1
SLOW_SECONDS = 30.0
SATURATED_SECONDS = 1.0
SUSPECT_SECONDS = 60.0
SUSPECT_SEND_SECONDS = 0.2
MAX_SUSPECTS = 4096


class NonReaders:
    """One sender pool's check, and its record of suspects."""

    def __init__(self, senders: int, what: str = "streams") -> None:
        self.senders = senders
        self.what = what  # the streams, as the log names them
        self._suspects = Suspects(SUSPECT_SECONDS, MAX_SUSPECTS)

    def start(self, streams: Callable[[], list[Stream]], stop: threading.Event) -> None:
        """Check `streams()` every TICK_SECONDS until `stop` is set."""

        def check() -> None:
            while not stop.wait(TICK_SECONDS):
                try:
                    self.give_up(streams(), time.monotonic())
                except Exception:  # noqa: BLE001 - the check must outlive any one stream
                    log.exception("%s: the senders' check failed", self.what)

        threading.Thread(target=check, name=f"senders-check ({self.what})", daemon=True).start()

    def give_up(self, streams: list[Stream], now: float) -> None:
        """Cancel the calls `doomed` names of `streams`."""
        doomed = self.doomed(streams, now)
        if not doomed:
            return
        peers = {id(context): peer for context, peer, _, _ in streams}
        log.warning(
            "%s: %d stream(s) of clients that read nothing cancelled: %s",
            self.what,
            len(doomed),
            ", ".join(sorted({peers[id(context)] for context in doomed})[:10]),
        )
        for context in doomed:
            context.cancel()  # type: ignore[no-untyped-call]

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
            or (since < now - SUSPECT_SEND_SECONDS and self._suspects.holds(address_of(peer), now))
        ]
        doomed.update((id(s), s) for s, _ in jammed)
        connections = {peer for _, peer in jammed if not peer.startswith("unix:")}
        for peer in connections:
            self._suspects.mark(address_of(peer), now)
        doomed.update(
            (id(s), s)
            for s, peer, since, waiting in streams
            if peer in connections and (since is not None or waiting)
        )
        return list(doomed.values())
