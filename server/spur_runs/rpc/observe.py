"""What every RPC leaves behind: its metrics, one access-log line, and a
request id.

The request id is the caller's `x-request-id` metadata when it sends a
sensible one, else a new one; it goes back in the initial metadata and is
attached to every log record of the call (logs.REQUEST_ID). The access line
holds method, code, duration, peer and request id, never metadata values
(tokens) nor messages (payloads).

This hook is the outermost one, so that it sees the final code of
calls refused by authentication too.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from ..telemetry.logs import REQUEST_ID
from ..telemetry.metrics import MethodMetrics, Metrics
from ..trust import gateway_forwarded_for
from .chain import Call, Hook, Shape

access_log = logging.getLogger("spur_runs.access")

REQUEST_ID_KEY = "x-request-id"
# What an incoming id may look like; anything else (too long, odd
# characters that could forge log lines) is replaced by a new id.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


class _RequestIds:
    """New request ids: 32 hex digits (a uuid4's length), a random prefix
    per process and a counter. uuid4() read 16 bytes from os.urandom on
    every call, and os.urandom lets go of the interpreter lock for its
    getrandom() system call: under load another thread then takes the lock
    and the call waits to get it back, two context switches per RPC for a
    log-correlation id (measured: Health/Check's server CPU, bench/frame.py).
    The ids need only be unique, not secret (a caller may send its own)."""

    def __init__(self) -> None:
        self._reset()
        # A forked worker (--workers) draws a prefix of its own.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count(1)

    def new(self) -> str:
        # next() on itertools.count is atomic under the interpreter lock.
        return f"{self._prefix}{next(self._count):016x}"


_new_request_id = _RequestIds().new


def _metadata_value(metadata: Iterable[tuple[str, Any]] | None, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key and isinstance(value, str):
            return value
    return None


class _Call:
    """The bookkeeping of one call, from start to its final code."""

    def __init__(
        self,
        method: str,
        metrics: MethodMetrics | None,
        request_id: str,
        forwarded_for: str | None,
        peer: str | None,
    ) -> None:
        self.method = method
        self.metrics = metrics
        self.request_id = request_id
        self.forwarded_for = forwarded_for
        self.start = time.perf_counter()
        # Read as the call begins, for the access line: grpc's peer() says
        # "" once the call is dead (its deadline passed, its client gone).
        self.peer = peer
        self.finished = False
        # A unary call's answer, counted when the call is (one lock fewer).
        self.sent = 0
        # For a non-blocking call, which may end on any thread (ObserveHook).
        self.once: threading.Lock | None = None
        REQUEST_ID.set(request_id)

    def finish(self, context: grpc.ServicerContext, raised: bool, pools: Metrics | None) -> None:
        if self.finished:
            return
        self.finished = True
        code = _final_code(context, raised)
        seconds = time.perf_counter() - self.start
        if self.metrics is not None:
            self.metrics.handled(code, seconds, self.sent)
        if pools is not None:
            pools.after_call()
        if access_log.isEnabledFor(logging.INFO):
            # The line's fields (context.peer() above all) cost a few percent
            # of a GetRun: build them only for a log that takes them.
            log_access(
                self.method,
                code.name,
                seconds,
                self.peer if self.peer is not None else context.peer(),
                self.request_id,
                # An HTTP caller, through the gateway: an HTTP watch's peer is
                # the gateway's own socket (unix:...), which names no client.
                self.forwarded_for,
            )
        REQUEST_ID.set(None)


def log_access(
    method: str,
    code: str,
    seconds: float,
    peer: str,
    request_id: str,
    forwarded_for: str | None = None,
    **more: str | int,
) -> None:
    """The access line of one call, or of one HTTP answer the gateway gave
    without a call (gateway/access.py: `more` then holds its http_status):
    one format for both, in text and as JSON fields."""
    fields: dict[str, Any] = {
        "method": method,
        "code": code,
        "duration_ms": round(seconds * 1000, 3),
        "peer": peer,
        "request_id": request_id,
    }
    line = "%s %s %.1fms peer=%s request_id=%s"
    values: list[Any] = [method, code, seconds * 1000, peer, request_id]
    if forwarded_for:
        fields["forwarded_for"] = forwarded_for
        line += " forwarded_for=%s"
        values.append(forwarded_for)
    for name, value in more.items():
        fields[name] = value
        line += f" {name}=%s"
        values.append(value)
    access_log.info(line, *values, extra=fields)


def request_id_for(incoming: str | None) -> str:
    """The request id of a call whose caller sent `incoming` (None: none)."""
    return (
        incoming if incoming is not None and _REQUEST_ID.fullmatch(incoming) else _new_request_id()
    )


def _final_code(context: grpc.ServicerContext, raised: bool) -> grpc.StatusCode:
    # Set by abort() or set_code(); grpc has code() since 1.38, its stubs not.
    code: grpc.StatusCode | None = context.code()  # type: ignore[attr-defined]
    if code is not None:
        return code
    if not context.is_active():  # the client went away before the answer
        if context.time_remaining() <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    # An error with no status yet gets one from the chain's last resort
    # (errors.last_resort), INTERNAL for the unexpected ones that reach it.
    return grpc.StatusCode.INTERNAL if raised else grpc.StatusCode.OK


class ObserveHook(Hook):
    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics

    def enter(self, call: Call) -> _Call:
        context = call.context
        # The same metadata grpc gives the interceptors (HandlerCallDetails).
        metadata = context.invocation_metadata()
        request_id = request_id_for(_metadata_value(metadata, REQUEST_ID_KEY))
        # Only the gateway's (trust.py): a gRPC caller's own would be its say.
        forwarded_for = gateway_forwarded_for(metadata)
        pools = self._metrics
        method_metrics = (
            None
            if pools is None
            else pools.method(call.method, call.request_streaming, call.response_streaming)
        )
        # The peer only for an access log that takes it (its one use): the
        # call costs grpc two hand-overs of the interpreter lock.
        peer = context.peer() if access_log.isEnabledFor(logging.INFO) else None
        record = _Call(call.method, method_metrics, request_id, forwarded_for, peer)
        # A unary call's request id goes back in its trailing metadata (exit),
        # which grpc sends with the answer and the status in one batch:
        # response headers of their own would cost a batch (and ~12% of
        # GetRun's CPU), and would commit the call for the client's retry
        # policy before the answer exists (README, Scaling).
        if call.shape is not Shape.UNARY:
            _send_request_id(context, record.request_id)
        if method_metrics is not None:
            # A unary request has arrived with the call; a stream's are
            # counted as the behavior reads them.
            method_metrics.start(received=not call.request_streaming)
            if call.request_streaming:
                call.request = _counted(call.request, method_metrics.receive)
        if call.shape is Shape.NON_BLOCKING:
            # A non-blocking call (health's Watch, WatchRun) ends when its
            # behavior sends None (its close callback, from whatever thread),
            # or when grpc ends it without one (the client cancelled, the
            # deadline passed): the termination callback then records it,
            # with the code that _final_code finds. Whichever comes first
            # counts, once.
            record.once = threading.Lock()
            context.add_callback(lambda: self._finish_once(record, context, False))
        return record

    def sent(self, call: Call, state: _Call, response: Any) -> None:
        if call.shape is Shape.UNARY:
            state.sent += 1  # counted with the call's end (finish)
        elif state.metrics is not None:
            state.metrics.send()

    def send(self, call: Call, state: _Call, item: Any) -> Any:
        if item is None:
            self._finish_once(state, call.context, False)
        elif state.metrics is not None:
            state.metrics.send()
        return item

    def exit(self, call: Call, state: _Call, error: BaseException | None) -> None:
        if call.shape is Shape.NON_BLOCKING:
            try:
                if error is not None:
                    self._finish_once(state, call.context, True)
            finally:
                REQUEST_ID.set(None)  # this thread goes back to the pool now
            return
        state.finish(call.context, error is not None, self._metrics)
        if call.shape is Shape.UNARY:
            _add_trailing(call.context, state.request_id)

    def _finish_once(self, record: _Call, context: grpc.ServicerContext, raised: bool) -> None:
        assert record.once is not None
        with record.once:
            record.finish(context, raised, self._metrics)


def _send_request_id(context: grpc.ServicerContext, request_id: str) -> None:
    try:
        context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
    except grpc.RpcError:
        pass  # the client has gone already; the call ends CANCELLED
    except ValueError:
        pass  # the handler sent initial metadata of its own already


def _add_trailing(context: grpc.ServicerContext, request_id: str) -> None:
    """Add the request id to the call's trailing metadata, keeping what is
    there already (an error's google.rpc.Status details, set by abort)."""
    present = tuple(context.trailing_metadata() or ())  # type: ignore[attr-defined]
    context.set_trailing_metadata(present + ((REQUEST_ID_KEY, request_id),))


def _counted(requests: Iterator[Any], count: Callable[[], None]) -> Iterator[Any]:
    for request in requests:
        count()
        yield request
