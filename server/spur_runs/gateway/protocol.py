"""Requests that aiohttp cannot parse (a request line or header over its
8190-byte limit, a malformed request line, a broken chunked body) are
answered by aiohttp itself, before the gateway sees them: with text/plain
that echoes part of the request, and an ERROR traceback in the log, as if
the server had failed. They are the client's fault, so this server answers
them as the gateway answers bad input, a google.rpc.Status JSON body with
the same HTTP status (400; 414/431 where aiohttp says so), and logs one
line at INFO.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from google.rpc import code_pb2, status_pb2

from .render import status_json

log = logging.getLogger(__name__)


def _message(error: HttpProcessingError) -> str:
    # Not error.message: it quotes the client's bytes.
    if isinstance(error, LineTooLong):
        limit = error.args[1] if len(error.args) > 1 else "its limit"
        return f"malformed HTTP request: the request line or a header is longer than {limit} bytes"
    return f"malformed HTTP request ({type(error).__name__})"


class _Handler(web_protocol.RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or not 400 <= status < 500:
            return super().handle_error(request, status, exc, message)
        log.info("malformed HTTP request from %s: %s", request.remote, type(exc).__name__)
        if request.writer.output_size > 0:  # (as aiohttp: nothing more can be sent)
            raise ConnectionError("response already started")
        body = status_json(status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=_message(exc)))
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()  # the rest of the stream cannot be trusted
        return response


class Server(web.Server):
    """aiohttp's low-level server, with `_Handler` for its connections."""

    def __call__(self) -> web_protocol.RequestHandler:
        kwargs: dict[str, Any] | None = getattr(self, "_kwargs", None)
        if kwargs is None:  # another aiohttp layout: its own handler
            return super().__call__()
        return _Handler(self, loop=self._loop, **kwargs)
