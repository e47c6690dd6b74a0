"""The in-process road of transport.py: the gateway runs a unary method's
handler, wrapped by the gRPC server's own interceptor (rpc/chain.py), on the
gRPC server's own thread pool, instead of calling the server through a socket.

Why: a second gRPC hop (a grpc.aio client call, the server's transport,
serializing the request and the response twice) cost more than the call
itself once the server ran GetRun in ~1 ms (bench/http_vs_grpc.py).

What still applies, in the same place as for gRPC callers:
- the interceptor's hooks (observe: metrics, access log, request id; auth;
  deadlines; error mapping; `--max-response-bytes`), the same instances, in
  the same order;
- the thread limit (`--max-workers`): the same executor;
- `--max-concurrent-rpcs`, counted here for HTTP calls (grpc counts only
  the calls of its own transport).
Server-streaming methods (WatchRun) still go through the gRPC socket
(transport.ChannelTransport).

A failed call raises grpc.aio.AioRpcError, as the channel's road does, so the
gateway turns both into HTTP answers the same way. LocalContext stands in
for grpc's ServicerContext; tests/integration/test_transport_conformance.py
runs every RPC both ways and compares answers, codes, details and trailers,
so that it cannot drift from grpc's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import grpc.aio

from ..rpc.chain import Handler, Interceptor
from .transport import CONCURRENCY_REFUSAL, Metadata, Reply

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # grpc-stubs makes it generic; grpc itself does not
    Generic = grpc.GenericRpcHandler[Any, Any]
else:
    Generic = grpc.GenericRpcHandler


class _Aborted(Exception):
    """Raised by LocalContext.abort, as grpc's own context raises."""


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str, invocation_metadata: Metadata) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata


class LocalContext(grpc.ServicerContext):
    """What a handler may ask of its call, for a call that came over HTTP."""

    def __init__(self, metadata: Metadata, timeout: float | None, peer: str) -> None:
        self._metadata = metadata
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._peer = peer
        self._active = True
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self.status_code: grpc.StatusCode | None = None
        self.status_details: str | None = None
        self.initial: Metadata = ()
        self.trailing: Metadata = ()

    # the call
    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> dict[str, Any]:
        return {}

    def time_remaining(self) -> float:
        if self._deadline is None:
            return float("inf")  # grpc answers a huge number too
        return max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        return self._active

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if not self._active:
                return False
            self._callbacks.append(callback)
        return True

    def cancel(self) -> None:
        self.terminate()

    def terminate(self) -> None:
        """The call is over (answered, failed, or its HTTP client left): run
        the callbacks once, as grpc runs them when an RPC terminates."""
        with self._lock:
            if not self._active:
                return
            self._active = False
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    # the answer
    def send_initial_metadata(self, initial_metadata: Any) -> None:
        self.initial = tuple(initial_metadata)

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self.trailing = tuple(trailing_metadata)

    def trailing_metadata(self) -> Metadata:
        return self.trailing

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self.status_code = code
        self.status_details = details
        raise _Aborted(details)

    def abort_with_status(self, status: Any) -> NoReturn:
        self.trailing = tuple(status.trailing_metadata)
        self.abort(status.code, status.details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.status_code = code

    def set_details(self, details: str) -> None:
        self.status_details = details

    def code(self) -> grpc.StatusCode | None:
        return self.status_code

    def details(self) -> str | None:
        return self.status_details

    def set_compression(self, compression: Any) -> None:
        pass  # no transport compression to choose in process

    def disable_next_message_compression(self) -> None:
        pass


class _Recorder:
    """Stands in for a grpc.Server to the generated add_*Servicer_to_server
    functions: keeps the generic handlers they register."""

    def __init__(self) -> None:
        self.handlers: list[Generic] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[Generic]) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        pass  # the same handlers, also given to add_generic_rpc_handlers


def recorded_handlers(register: Callable[[Any], None]) -> list[Generic]:
    """The handlers that `register(server)` adds to a server, e.g.
    `recorded_handlers(lambda s: add_RunServiceServicer_to_server(servicer, s))`."""
    recorder = _Recorder()
    register(recorder)
    return recorder.handlers


class InProcessTransport:
    """transport.Transport: runs unary methods as the gRPC server would,
    without its transport."""

    def __init__(
        self,
        handlers: Sequence[Generic],
        interceptors: Sequence[Interceptor],
        executor: Executor,
        max_concurrent: int | None,
    ) -> None:
        self._handlers = list(handlers)
        self._interceptors = list(interceptors)
        self._executor = executor
        self._max_concurrent = max_concurrent
        self._active = 0  # touched by the event loop's thread only

    def _handler(self, details: grpc.HandlerCallDetails, index: int = 0) -> Handler | None:
        """grpc's interceptor pipeline: each interceptor gets the next as its
        continuation; the last continuation finds the method's handler."""
        if index < len(self._interceptors):
            return self._interceptors[index].intercept_service(
                lambda d: self._handler(d, index + 1), details
            )
        for generic in self._handlers:
            found = generic.service(details)
            if found is not None:
                return found  # type: ignore[no-any-return]
        return None

    async def unary(
        self,
        method: str,
        request: Any,
        *,
        timeout: float | None,
        metadata: Metadata,
        peer: str,
    ) -> Reply:
        """Raises grpc.aio.AioRpcError when the call fails."""
        if self._max_concurrent is not None and self._active >= self._max_concurrent:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details=CONCURRENCY_REFUSAL,  # grpc's own words
                debug_error_string=None,
            )
        context = LocalContext(metadata, timeout, peer)
        self._active += 1
        try:
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(
                self._executor, self._run, method, request, metadata, context
            )
        except BaseException:
            context.terminate()  # also when this task is cancelled: the client left
            raise
        finally:
            self._active -= 1
        # Answered: the call ends once its HTTP answer is written (Reply.done).
        return reply._replace(done=context.terminate)

    def _run(self, method: str, request: Any, metadata: Metadata, context: LocalContext) -> Reply:
        """On one of the server's threads."""
        if not context.is_active():  # the client left while the call was queued
            raise _failure(grpc.StatusCode.CANCELLED, "the client went away", context)
        handler = self._handler(_Details(method, metadata))
        if handler is None or handler.unary_unary is None:
            raise _failure(grpc.StatusCode.UNIMPLEMENTED, "Method not found!", context)
        try:
            response = handler.unary_unary(request, context)
        except _Aborted:
            raise _failure(
                context.status_code or grpc.StatusCode.UNKNOWN, context.status_details, context
            ) from None
        except Exception:  # noqa: BLE001 - what grpc does with an escaped exception
            log.exception("Exception calling application: %s", method)
            raise _failure(
                grpc.StatusCode.UNKNOWN, "Exception calling application", context
            ) from None
        if context.status_code not in (None, grpc.StatusCode.OK):
            raise _failure(context.status_code, context.status_details, context)
        return Reply(response, context.initial, context.trailing)


def _failure(code: grpc.StatusCode, details: str | None, context: LocalContext) -> Exception:
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(*context.initial),
        grpc.aio.Metadata(*context.trailing),
        details=details or "",
        debug_error_string=None,
    )
