"""Answers grpc holds for clients that do not read them: a bound per client
address and in all.

A unary call's thread is free once its answer is handed to grpc's core
(and the call leaves `--max-concurrent-rpcs` then), but the core keeps the
serialized answer until the client's HTTP/2 flow-control window lets it
out. A client that grants no window (SETTINGS_INITIAL_WINDOW_SIZE 0) and
never sends WINDOW_UPDATE, while it answers pings, makes the core keep it
for as long as the connection lives: with no deadline and no
--max-connection-age-seconds, for ever. 100 streams a connection, 1,024
connections, answers of up to --max-response-bytes each: a review measured
4 connections of 100 GetRun calls of a 1 MB run take the server's RSS from
190 MB to 908 MB in 2 s, held until they closed (2026-12-04).

So each answer's size is charged to its client's address when it is made
(encode.py measures it there anyway) and released when the call ends:
grpc runs a call's `add_callback` callbacks when the RPC terminates, which
for a unary call is once its answer is delivered, or the call cancelled
(by the client, its deadline, or its connection closing). An answer that
would take its address past `per_address`, or all addresses past `total`,
is not sent: the call fails with RESOURCE_EXHAUSTED, saying why, and its
memory is freed at once. An address that holds nothing may always have one
answer (an answer larger than the bound is still one answer), so
`per_address` is a bound on the bytes a non-reading client can hold, give
or take one answer; a reader's answers are released as it reads them.
An address refused so is `full` until one of its answers is released: its
calls are refused as they begin (encode.py's `enter`), before the database
is read for an answer that would be thrown away. Such a client re-sent its
refused calls as fast as they ended, each one a read of its whole answer.

The gateway's in-process calls are charged too, to their HTTP client's
address: the gateway ends such a call (its context's callbacks) only once
aiohttp has handed its JSON answer to the socket (gateway/app.py), so an
HTTP client that reads nothing holds its share the same way. One share for
both ports: it is the same client.

Per call this costs grpc's `peer()`, the address parsed, a lock taken
twice and one callback: about 2 µs, against hundreds for a GetRun.
"""

from __future__ import annotations

import threading

import grpc

from ..errors import ResourceExhausted
from ..trust import AddressCounts, address_of


class UnreadAnswers:
    """The bytes of answers handed to grpc and not yet delivered, by client
    address; thread-safe (charged on RPC threads, released on grpc's)."""

    def __init__(self, per_address: int, total: int) -> None:
        self.per_address = per_address
        self.total_limit = total
        self.total = 0
        self._by_address = AddressCounts(per_address)
        self._lock = threading.Lock()
        self.refused = 0  # answers refused so far (for tests and logs)
        # Addresses refused for their share, until one of their answers is
        # released: at most one per connection holding an answer.
        self.full: set[str] = set()

    def held(self, address: str) -> int:
        with self._lock:
            return self._by_address.held(address)

    def charge(self, context: grpc.ServicerContext, size: int) -> ResourceExhausted | None:
        """Charge `size` bytes to the call's client until the call ends; the
        error to answer instead when that would pass a bound."""
        address = address_of(context.peer())
        with self._lock:
            over_total = self.total > 0 and self.total + size > self.total_limit
            if over_total or not self._by_address.take(address, size):
                self.refused += 1
                if not over_total:
                    self.full.add(address)
                held = self._by_address.held(address)
                total = self.total
                return ResourceExhausted(_refusal(over_total, held, total, self))
            self.total += size

        def release() -> None:
            with self._lock:
                self.total -= size
                self._by_address.release(address, size)
                self.full.discard(address)

        if not context.add_callback(release):  # the call has ended already
            release()
        return None

    def refusal_before(self, context: grpc.ServicerContext) -> ResourceExhausted | None:
        """The error of a call beginning from a `full` address (call only
        while `full` is not empty: the common case asks nothing more)."""
        address = address_of(context.peer())
        with self._lock:
            if address not in self.full:
                return None
            self.refused += 1
            return ResourceExhausted(_refusal(False, self._by_address.held(address), 0, self))


def _refusal(over_total: bool, held: int, total: int, unread: UnreadAnswers) -> str:
    if over_total:
        return (
            f"the server holds {total} bytes of answers its clients have not read "
            f"(at most {unread.total_limit}); retry later"
        )
    return (
        f"your earlier calls' answers, {held} bytes, are not read yet (at most "
        f"{unread.per_address} per client address): read them, or cancel those calls, first"
    )
