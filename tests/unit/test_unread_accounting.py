"""rpc/unread.py's accounting of answers sent and not yet read."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import grpc

from spur_runs.rpc.unread import UnreadAnswers

ADDRESS = "ipv4:10.0.0.7"  # (address_of the calls' peer)


class _Call:
    """What UnreadAnswers reads of a grpc.ServicerContext: the peer, and the
    callbacks grpc runs when the call ends."""

    def __init__(self, peer: str = "ipv4:10.0.0.7:40000") -> None:
        self._peer = peer
        self.callbacks: list[Callable[[], None]] = []

    def peer(self) -> str:
        return self._peer

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self.callbacks.append(callback)
        return True

    def end(self) -> None:
        for callback in self.callbacks:
            callback()


def _context(call: _Call) -> grpc.ServicerContext:
    return cast(grpc.ServicerContext, call)


def test_empty_answers_in_flight_together_are_released_without_error() -> None:
    """DeleteRun answers google.protobuf.Empty, 0 bytes. Two in flight from
    one address, then ending, raised KeyError in grpc's callback (a traceback
    in the log, "Exception calling callback!") under concurrent deletes: the
    first release removed the address's entry the second needed (a red team,
    2026-12-04)."""
    unread = UnreadAnswers(per_address=1000, total=10_000)
    first, second = _Call(), _Call()
    assert unread.charge(_context(first), 0) is None
    assert unread.charge(_context(second), 0) is None
    first.end()
    second.end()
    assert unread.held(ADDRESS) == 0 and unread.total == 0


def test_an_empty_answer_leaves_what_the_address_holds_as_it_was() -> None:
    unread = UnreadAnswers(per_address=1000, total=10_000)
    big, empty = _Call(), _Call()
    assert unread.charge(_context(big), 800) is None
    assert unread.charge(_context(empty), 0) is None
    empty.end()
    assert unread.held(ADDRESS) == 800
    big.end()
    assert unread.held(ADDRESS) == 0 and unread.total == 0
