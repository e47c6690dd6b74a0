"""Requests that aiohttp cannot parse (a request line or header over its
8190-byte limit, a malformed request line, a broken chunked body) are
answered by aiohttp itself, before the gateway sees them: with text/plain
that echoes part of the request, and an ERROR traceback in the log, as if
the server had failed. They are the client's fault, so this server answers
them as the gateway answers bad input, a google.rpc.Status JSON body with
the same HTTP status (400; 414/431 where aiohttp says so), and logs one
line at INFO.

Each connection is also held to connections.py's bounds: a header timeout,
an idle timeout, a cap on open connections. Only public aiohttp API is
used: web.Server and web.RequestHandler are subclassed through their
documented constructors and asyncio's protocol methods, and the handler
keyword arguments are this class's own copy, not web.Server's private ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from google.rpc import code_pb2, status_pb2

from .connections import ConnectionCount, ConnectionLimits
from .render import status_json

log = logging.getLogger(__name__)


def _message(error: HttpProcessingError) -> str:
    # Not error.message: it quotes the client's bytes.
    if isinstance(error, LineTooLong):
        limit = error.args[1] if len(error.args) > 1 else "its limit"
        return f"malformed HTTP request: the request line or a header is longer than {limit} bytes"
    return f"malformed HTTP request ({type(error).__name__})"


class _Handler(web.RequestHandler):
    def __init__(self, manager: Server, count: ConnectionCount, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard_count = count
        self._guard_loop: asyncio.AbstractEventLoop = kwargs["loop"]
        self._guard_transport: asyncio.BaseTransport | None = None
        self._guard_refused = False
        self._guard_busy = False  # a request's handler is running
        self._guard_timer: asyncio.TimerHandle | None = None

    # --- the bounds (connections.py) ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard_count.admit(self):
            self._guard_refused = True  # aiohttp never sees this connection
            self._guard_count.refuse(transport, self._guard_loop)
            return
        self._guard_transport = transport
        super().connection_made(transport)
        self._guard_arm()

    def data_received(self, data: bytes) -> None:
        if self._guard_refused:
            return
        if data and not self._guard_busy and self._guard_timer is None:
            self._guard_arm()  # the first bytes of a request: its headers are due
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._guard_refused:
            return
        self._guard_disarm()
        self._guard_count.release(self)
        self._guard_transport = None
        super().connection_lost(exc)

    def guard_request_started(self) -> None:
        self._guard_busy = True
        self._guard_disarm()
        self._guard_count.busy(self)

    def guard_request_finished(self) -> None:
        # From here aiohttp's keepalive_timeout (the idle timeout) runs.
        self._guard_busy = False
        if self._guard_transport is not None:  # (still open)
            self._guard_count.idle(self)

    def _guard_arm(self) -> None:
        self._guard_timer = self._guard_loop.call_later(
            self._guard_count.limits.header_timeout, self._guard_headers_late
        )

    def _guard_disarm(self) -> None:
        if self._guard_timer is not None:
            self._guard_timer.cancel()
            self._guard_timer = None

    def _guard_headers_late(self) -> None:
        self._guard_timer = None
        if not self._guard_busy:
            log.debug("closed an HTTP connection that sent no complete request headers in time")
            self.guard_evict()

    def guard_evict(self) -> None:
        """Close at once: nothing is owed to a connection without a request."""
        if self._guard_transport is None:
            return
        if isinstance(self._guard_transport, asyncio.Transport):
            self._guard_transport.abort()
        else:
            self._guard_transport.close()

    # --- unparsable requests ---

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        self._guard_disarm()  # (the answer closes the connection)
        if not isinstance(exc, HttpProcessingError) or not 400 <= status < 500:
            return super().handle_error(request, status, exc, message)
        log.info("malformed HTTP request from %s: %s", request.remote, type(exc).__name__)
        if request.writer.output_size > 0:  # (as aiohttp: nothing more can be sent)
            raise ConnectionError("response already started")
        body = status_json(status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=_message(exc)))
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()  # the rest of the stream cannot be trusted
        return response


Handle = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Server(web.Server):
    """aiohttp's low-level server, with `_Handler` for its connections.
    `handler_kwargs` go to each web.RequestHandler (access_log, ...)."""

    def __init__(
        self,
        handler: Handle,
        limits: ConnectionLimits,
        *,
        handler_cancellation: bool = False,
        **handler_kwargs: Any,
    ) -> None:
        handler_kwargs["keepalive_timeout"] = limits.idle_timeout
        super().__init__(
            self._watched(handler), handler_cancellation=handler_cancellation, **handler_kwargs
        )
        self.connection_count = ConnectionCount(limits)
        self._guard_kwargs = handler_kwargs
        self._guard_event_loop = asyncio.get_running_loop()

    def __call__(self) -> web.RequestHandler:
        return _Handler(
            self, self.connection_count, loop=self._guard_event_loop, **self._guard_kwargs
        )

    @staticmethod
    def _watched(handler: Handle) -> Handle:
        """`handler`, telling the connection when a request (its headers
        read) starts and ends."""

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            protocol = request.protocol
            if isinstance(protocol, _Handler):
                protocol.guard_request_started()
            try:
                return await handler(request)
            finally:
                if isinstance(protocol, _Handler):
                    protocol.guard_request_finished()

        return handle
