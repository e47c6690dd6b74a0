"""Requests that aiohttp cannot parse (a request line or header over its
8190-byte limit, a malformed request line, a broken chunked body) are
answered by aiohttp itself, before the gateway sees them: with text/plain
that echoes part of the request, and an ERROR traceback in the log, as if
the server had failed. They are the client's fault, so this server answers
them as the gateway answers bad input, a google.rpc.Status JSON body with
the same HTTP status (400; 414/431 where aiohttp says so), and logs its
access line (access.py).

Each connection is also held to connections.py's bounds: a header timeout,
an idle timeout, a cap on open connections. Only public aiohttp API is
used: web.Server and web.RequestHandler are subclassed through their
documented constructors and asyncio's protocol methods, and the handler
keyword arguments are this class's own copy, not web.Server's private ones.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from google.rpc import code_pb2, status_pb2

from .access import malformed, refused_head
from .connections import ConnectionCount, ConnectionLimits
from .render import status_json
from .replies import error

log = logging.getLogger(__name__)


def _message(error: HttpProcessingError) -> str:
    # Not error.message: it quotes the client's bytes.
    if isinstance(error, LineTooLong):
        limit = error.args[1] if len(error.args) > 1 else "its limit"
        return f"malformed HTTP request: the request line or a header is longer than {limit} bytes"
    return f"malformed HTTP request ({type(error).__name__})"


class _Handler(web.RequestHandler):
    def __init__(
        self,
        manager: Server,
        count: ConnectionCount,
        tls: ssl.SSLContext | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._guard_count = count
        self._guard_tls = tls
        self._guard_loop: asyncio.AbstractEventLoop = kwargs["loop"]
        self._guard_transport: asyncio.BaseTransport | None = None
        self._guard_refused = False
        self._guard_http = False  # aiohttp has the connection (after any handshake)
        self._guard_released = False
        self._guard_busy = False  # a request's handler is running
        self._guard_timer: asyncio.TimerHandle | None = None
        self._guard_handshake: asyncio.Task[None] | None = None
        # Request bytes that arrive between the end of the handshake and
        # start_tls returning (the same turn of the loop).
        self._guard_early: list[bytes] = []
        # The request head being received (MAX_HEAD_BYTES): its size, its
        # bytes so far (to read its Content-Length at its end), its last 3
        # (to see a CRLFCRLF split between reads); then the bytes of the
        # body it announced, which are not counted.
        self._guard_head = 0
        self._guard_text = bytearray()
        self._guard_tail = b""
        self._guard_skip = 0
        self._guard_head_refused = False

    # --- the bounds (connections.py) ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard_count.admit(self):
            self._guard_refused = True  # aiohttp never sees this connection
            self._guard_count.refuse(transport, self._guard_loop, plain=self._guard_tls is None)
            return
        self._guard_transport = transport
        self._guard_arm()  # the handshake and the headers are due within the timeout
        if self._guard_tls is None:
            self._guard_http = True
            super().connection_made(transport)
        else:
            self._guard_handshake = self._guard_loop.create_task(self._guard_start_tls(transport))

    async def _guard_start_tls(self, transport: asyncio.BaseTransport) -> None:
        """TLS here rather than in the listening site, so that a client that
        never finishes its handshake is closed at the header timeout (the
        site would allow asyncio's 60 s) and counts against the cap."""
        assert self._guard_tls is not None and isinstance(transport, asyncio.Transport)
        try:
            secure = await self._guard_loop.start_tls(
                transport,
                self,
                self._guard_tls,
                server_side=True,
                ssl_handshake_timeout=self._guard_count.limits.header_timeout,
            )
        except Exception as error:  # noqa: BLE001 - any failed handshake: the client's end
            log.debug("TLS handshake failed on the HTTP port: %s", error)
            secure = None
        if secure is None or self._guard_released:  # (closed during the handshake)
            self._guard_release()
            transport.abort()
            return
        self._guard_transport = secure
        self._guard_http = True
        super().connection_made(secure)
        early, self._guard_early = b"".join(self._guard_early), []
        if early:
            self.data_received(early)

    def data_received(self, data: bytes) -> None:
        if not self._guard_http:
            if not self._guard_refused:
                self._guard_early.append(data)
            return
        if self._guard_head_refused:  # (its head was too large: nothing more is read)
            return
        if data and not self._guard_busy and self._guard_timer is None:
            self._guard_arm()  # the first bytes of a request: its headers are due
        if self._guard_head_over(data):
            self._guard_refuse_head()
            return
        super().data_received(data)

    def _guard_head_over(self, data: bytes) -> bool:
        """Counts `data` into the request heads being received: True once
        one is over MAX_HEAD_BYTES. A head's Content-Length body is passed
        over uncounted, whether a route reads it or aiohttp discards it;
        the bytes after it are the next request's head (pipelined: aiohttp
        parses and queues up to 32 requests while one is running). A chunked
        body (no route takes one) is counted as head, so over MAX_HEAD_BYTES
        it is refused too. A GET's head is one read of a few hundred bytes:
        one find(), and one lower() at its end."""
        pos = 0
        size = len(data)
        while pos < size:
            if self._guard_skip:
                taken = min(self._guard_skip, size - pos)
                self._guard_skip -= taken
                pos += taken
                continue
            tail = self._guard_tail
            joint = (tail + data[pos : pos + 3]).find(_HEAD_END) if tail else -1
            if joint >= 0:
                stop = pos + joint + len(_HEAD_END) - len(tail)
            else:
                found = data.find(_HEAD_END, pos)
                stop = found + len(_HEAD_END) if found >= 0 else -1
            piece = data[pos:] if stop < 0 else data[pos:stop]
            self._guard_head += len(piece)
            if self._guard_head > MAX_HEAD_BYTES:
                return True
            self._guard_text += piece
            if stop < 0:
                self._guard_tail = (tail + piece)[-3:]
                return False
            self._guard_skip = _body_length(self._guard_text)
            self._guard_head = 0
            self._guard_tail = b""
            self._guard_text.clear()
            pos = stop
        return False

    def _guard_refuse_head(self) -> None:
        """431 and close, without handing aiohttp the head (it would hold all
        of it); nothing more is read. While a request of the connection is
        running (a watch stream), its answer is being written: an answer
        written now would land inside it, so the connection is dropped."""
        self._guard_disarm()
        self._guard_head_refused = True  # (data_received drops the rest)
        transport = self._guard_transport
        if transport is None:
            return
        if self._guard_busy or not isinstance(transport, asyncio.WriteTransport):
            self.guard_evict()
            return
        status = status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT,
            message="malformed HTTP request: its request line and headers hold more "
            f"than {MAX_HEAD_BYTES} bytes in all",
        )
        request_id = refused_head(transport, error(status, 431))  # (its access line)
        body = status_json(status)
        head = (
            "HTTP/1.1 431 Request Header Fields Too Large\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Request-Id: {request_id}\r\n"
            "Connection: close\r\n\r\n"
        )
        transport.write(head.encode("ascii") + body)
        transport.close()
        if isinstance(transport, asyncio.Transport):
            self._guard_loop.call_later(_REFUSED_LINGER, transport.abort)  # (no-op once closed)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._guard_refused:
            return
        self._guard_release()
        if self._guard_http:
            super().connection_lost(exc)

    def _guard_release(self) -> None:
        if not self._guard_released:
            self._guard_released = True
            self._guard_disarm()
            self._guard_count.release(self)
            self._guard_transport = None

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
        if request.writer.output_size > 0:  # (as aiohttp: nothing more can be sent)
            raise ConnectionError("response already started")
        return _malformed(request, status, exc)


def _malformed(request: web.BaseRequest, status: int, exc: HttpProcessingError) -> web.Response:
    response = error(
        status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=_message(exc)), status
    )
    response.force_close()  # the rest of the stream cannot be trusted
    malformed(request, response, type(exc).__name__)  # (its access line)
    return response


Handle = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

# A request line or one header: at most this many bytes; at most this many
# headers (aiohttp answers 414/431/400 beyond them, through handle_error).
MAX_HEADERS = 128
# A request's head (its request line and headers) in all, as nginx's default
# buffers (4 x 8 KiB) allow. Within the two limits above, 128 headers of 8
# KiB each made a 1 MiB head, which aiohttp held twice over (as read, then
# parsed) until the head ended: 500 connections sending such heads took the
# server from 0.1 to 1 GB, kept after they were gone.
MAX_HEAD_BYTES = 32768
_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"\r\ncontent-length:"


def _body_length(head: bytearray) -> int:
    """The body length a request head announces: its one Content-Length
    of digits, else 0. (Two, or one that is not a number, aiohttp refuses
    with 400 and closes; Transfer-Encoding's body is counted as head.)"""
    lowered = head.lower()
    at = lowered.find(_CONTENT_LENGTH)
    if at < 0 or lowered.find(_CONTENT_LENGTH, at + 1) >= 0:
        return 0
    start = at + len(_CONTENT_LENGTH)
    value = lowered[start : lowered.find(b"\r\n", start)].strip()
    return int(value) if value.isdigit() and len(value) <= 18 else 0


# A refused connection is closed gracefully (its 431 sent), then aborted if
# it is not closed within this long (connections.py's refusal does the same).
_REFUSED_LINGER = 1.0
_PARSER_LIMITS = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": MAX_HEADERS}


class Server(web.Server):
    """aiohttp's low-level server, with `_Handler` for its connections.
    `tls` is the port's TLS (the site's socket stays plain: _Handler does
    the handshake); `handler_kwargs` go to each web.RequestHandler."""

    def __init__(
        self,
        handler: Handle,
        limits: ConnectionLimits,
        *,
        tls: ssl.SSLContext | None = None,
        handler_cancellation: bool = False,
        **handler_kwargs: Any,
    ) -> None:
        handler_kwargs["keepalive_timeout"] = limits.idle_timeout
        # The parser's limits, named here rather than left to aiohttp's
        # defaults, which differ within the versions pyproject admits (3.12:
        # 32,768 headers; 3.14: 128). 3.12 does not apply max_headers at
        # all: _watched does, with the answer later releases give.
        handler_kwargs.update(_PARSER_LIMITS)
        super().__init__(
            self._watched(handler), handler_cancellation=handler_cancellation, **handler_kwargs
        )
        self.connection_count = ConnectionCount(limits)
        self._guard_kwargs = handler_kwargs
        self._guard_tls = tls
        self._guard_event_loop = asyncio.get_running_loop()

    def pre_shutdown(self) -> None:
        self.connection_count.close_new()
        super().pre_shutdown()

    def __call__(self) -> web.RequestHandler:
        return _Handler(
            self,
            self.connection_count,
            self._guard_tls,
            loop=self._guard_event_loop,
            **self._guard_kwargs,
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
                if len(request.raw_headers) > MAX_HEADERS:  # (aiohttp 3.12 lets them in)
                    return _malformed(request, 400, BadHttpMessage("Too many headers received"))
                return await handler(request)
            finally:
                if isinstance(protocol, _Handler):
                    protocol.guard_request_finished()

        return handle
