"""Calls that never send their request: a bound on how long, and how many,
may hold an RPC thread waiting for it.

grpc's sync server gives a call one of its --max-workers threads as soon as
the call's headers arrive, and for a method with one request message
(every unary RPC, WatchRun, health) that thread then waits for the message
with no time limit. Four clients that sent headers and nothing more held
every thread, HTTP's in-process calls included, with no token, for as long
as they kept their connections open (a red-team pass, 2026-12-03).

grpc has no public way to wait for a request message without a thread, nor
to bound that wait (grpc.aio has: an async transport is the whole fix, and a
change of server model, docs/production.md). What this module does instead:
such methods are served in their request-streaming form, whose behavior
runs before the message is read, and reads the one message itself while
`RequestWaits`' sweeper thread watches how long it waits. It cancels
(grpc's public `RpcContext.cancel`):
- a call whose message has not come --grpc-request-timeout-seconds after
  its headers (a slow link's large request, or a client holding the thread);
- beyond the oldest `stalled_max` calls that have waited more than
  STALL_SECONDS, the others: a real client sends its message with its
  headers, so its thread waits microseconds; a client that holds streams
  open holds at most half the threads, for a bounded time, and the rest
  keep serving.
A stall is counted in the sweeper's ticks, at most SWEEP_SECONDS a tick. A
process paused as a whole (a VM paused, a long garbage collection) wakes to
calls that seem to have waited all along, their messages read meanwhile and
not yet handed over; a pause counts one tick, not its length. (CI once saw
a test's health watch cancelled after a wait over 0.2 s, the bound then;
what delayed it is not known, and a pause is one cause this rules out.)
An address one of whose calls was cancelled so is a suspect for
SUSPECT_SECONDS: its calls wait at most SUSPECT_STALL_SECONDS and none is
kept. Without this, one connection of 70 headers-only calls every 5 s held
every thread (2 freed each 0.5 s) and the queue behind them, HTTP's calls
included (a review, 2026-12-04). A suspect's real calls lose nothing: their
messages come with their headers.
A call that ends its stream without a message gets what grpc's unary form
answers: UNIMPLEMENTED, "requires exactly one request message".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from ..trust import Suspects, address_of
from .chain import (
    Handler,
    HandlerCache,
    Interceptor,
    behavior_of,
    is_non_blocking,
    non_blocking_like,
)

log = logging.getLogger(__name__)

# How often the sweeper looks, and how long a call may wait for its message
# before it counts as stalled (a real client's message comes with its
# headers, in the same read). Waits of up to 90 ms were seen with 16 busy
# processes on this machine's 2 cores; 0.5 s leaves room for a worse one.
SWEEP_SECONDS = 0.1
STALL_SECONDS = 0.5
# A suspect address's calls (module docstring): cancelled at the second
# sweep that sees them waiting, for a minute after its last cancelled call;
# at most MAX_SUSPECTS addresses are remembered, the oldest forgotten first.
SUSPECT_STALL_SECONDS = SWEEP_SECONDS
SUSPECT_SECONDS = 60.0
MAX_SUSPECTS = 4096


class RequestWaits:
    """The calls waiting for their request message, and the sweeper thread
    that cancels those that wait too long or too many."""

    def __init__(self, timeout_seconds: float, stalled_max: int) -> None:
        self.timeout_seconds = timeout_seconds
        self.stalled_max = stalled_max
        # context -> when it began to wait. Set and popped by RPC threads,
        # copied by the sweeper (dict.copy: one step under the GIL).
        self._waiting: dict[grpc.ServicerContext, float] = {}
        # The sweeper's own: how long each waiting call has stalled, in
        # ticks (module docstring), and when it last looked.
        self._stalled_for: dict[grpc.ServicerContext, float] = {}
        self._last_sweep = time.monotonic()
        # Addresses suspected for SUSPECT_SECONDS (module docstring).
        self._suspects = Suspects(SUSPECT_SECONDS, MAX_SUSPECTS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cancelled = 0  # calls cancelled so far (for tests and logs)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._sweep, name="request-waits", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def first(self, requests: Iterator[Any], context: grpc.ServicerContext, method: str) -> Any:
        """The call's one request message, read from `requests`; aborts the
        call when none comes (cancelled, or its stream ended without one)."""
        self._waiting[context] = time.monotonic()
        try:
            return next(requests)
        except StopIteration:
            if context.is_active():  # the client ended its stream with no message
                context.abort(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f'"{method}" requires exactly one request message.',
                )
        except grpc.RpcError:  # cancelled: by the client, or by the sweeper
            pass
        finally:
            self._waiting.pop(context, None)
        # Cancelled: nobody hears this status; abort ends the behavior as
        # grpc expects (an exception would be logged as the application's).
        context.abort(grpc.StatusCode.CANCELLED, "the request message did not arrive")

    def sweep_once(self, now: float) -> int:
        """Cancel what waited too long or too many; how many were cancelled."""
        tick = min(now - self._last_sweep, SWEEP_SECONDS)  # a pause counts one tick
        self._last_sweep = now
        waiting = sorted(self._waiting.copy().items(), key=lambda item: item[1])
        self._stalled_for = stalled_for = {
            c: self._stalled_for.get(c, 0.0) + min(tick, max(0.0, now - began))
            for c, began in waiting
        }
        suspected = {
            c
            for c, _ in waiting
            if self._suspects  # (no peer asked for while there is none)
            and stalled_for[c] > SUSPECT_STALL_SECONDS
            and self._suspects.holds(address_of(c.peer()), now)
        }
        stalled = [
            (c, began)
            for c, began in waiting
            if stalled_for[c] > STALL_SECONDS and c not in suspected
        ]
        doomed = [c for c, _ in waiting if c in suspected]
        doomed += [c for c, began in stalled if now - began > self.timeout_seconds]
        kept = [c for c, began in stalled if now - began <= self.timeout_seconds]
        doomed += kept[self.stalled_max :]  # the newest beyond the oldest few
        peers = sorted({context.peer() for context in doomed})
        self.cancelled += len(doomed)  # counted first: a cancel is seen at once
        for context in doomed:
            self._waiting.pop(context, None)
            context.cancel()  # type: ignore[no-untyped-call] # (untyped in grpc-stubs)
        for peer in peers:
            self._suspects.mark(address_of(peer), now)
        if doomed:
            log.warning(
                "cancelled %d call(s) that sent no request message (%d stalled, at most %d "
                "kept for %.1f s): %s",
                len(doomed),
                len(stalled),
                self.stalled_max,
                self.timeout_seconds,
                ", ".join(peers),
            )
        return len(doomed)

    def _sweep(self) -> None:
        while not self._stop.wait(SWEEP_SECONDS):
            try:
                self.sweep_once(time.monotonic())
            except Exception:  # noqa: BLE001 - the sweeper must outlive any one call
                log.exception("request-waits sweeper")


def _streaming_form(handler: Handler, method: str, waits: RequestWaits, refusing: bool) -> Handler:
    """`handler` (one request message) as a request-streaming handler that
    reads the message through `waits`; or, `refusing` (it refuses the call
    whatever the request), that answers without waiting for it."""
    behavior = behavior_of(handler)
    wrapper: Callable[..., Any]
    if refusing:

        def refuse(_requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return behavior(None, context)

        wrapper = refuse
    elif is_non_blocking(behavior):

        def non_blocking(
            requests: Iterator[Any], context: grpc.ServicerContext, send_response_callback: Any
        ) -> Any:
            request = waits.first(requests, context, method)
            return behavior(request, context, send_response_callback=send_response_callback)

        wrapper = non_blocking_like(behavior, non_blocking)
    else:

        def blocking(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return behavior(waits.first(requests, context, method), context)

        wrapper = blocking
    factory = (
        grpc.stream_stream_rpc_method_handler
        if handler.response_streaming
        else grpc.stream_unary_rpc_method_handler
    )
    return factory(  # type: ignore[no-any-return]
        wrapper,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class ArrivalInterceptor(Interceptor):
    """The gRPC server's outermost interceptor: methods with one request
    message in their request-streaming form (above). The gateway's
    in-process calls do not pass here: aiohttp has read their whole body."""

    def __init__(self, waits: RequestWaits, refuses: Callable[[Handler], bool]) -> None:
        self.waits = waits
        # Whether the chain gave this handler to refuse the call (a caller
        # without a token): answered at once, its thread never waits.
        self._refuses = refuses
        # By the handler the chain gave: one per method and refusal.
        self._cache = HandlerCache()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        method = handler_call_details.method
        return self._cache.get(
            handler,
            lambda: _streaming_form(handler, method, self.waits, self._refuses(handler)),
        )
