"""Server-streaming calls (WatchRun) over HTTP (grpc-gateway's
ForwardResponseStream): newline-delimited JSON, or server-sent events when
the client asks for text/event-stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc.aio
from aiohttp import web
from google.rpc import status_pb2

from ..errors import DataLoss
from ..rpc.status import NESTED_TOO_DEEPLY, to_status
from .access import not_called
from .render import status_json
from .replies import error, failed, response_headers, status_of
from .transport import UNDECODABLE, refused_unseen

NDJSON = "application/x-ndjson"
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # (grpc-stubs lack it)
EVENT_STREAM = "text/event-stream"


def accepts_event_stream(accept: str) -> bool:
    """Whether an Accept header names text/event-stream (parameters aside)."""
    return any(part.split(";", 1)[0].strip().lower() == EVENT_STREAM for part in accept.split(","))


def _frame(body: bytes, events: bool, error: bool = False) -> bytes:
    """One message of the stream. Newline-delimited JSON in grpc-gateway's
    shape: a line `{"result": <message>}`, or `{"error": <google.rpc.Status>}`
    last. Server-sent events: `data: <message>`, or an `error` event whose
    data is the Status. (The JSON holds no raw newline: orjson escapes them.)"""
    if events:
        return (b"event: error\ndata: " if error else b"data: ") + body + b"\n\n"
    return (b'{"error":' if error else b'{"result":') + body + b"}\n"


async def stream(
    request: web.BaseRequest,
    render: Callable[[Any], bytes],
    call: Any,
    extra: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Answer a server-streaming call message by message. An error before the
    first message is an ordinary error reply (404 for an unknown run, 400 for
    a bad id...); once the 200 is sent, an error is the stream's last frame.
    The client going away cancels this task, and with it the call."""
    events = accepts_event_stream(request.headers.get("Accept", ""))
    try:
        try:
            message = await call.read()
        except grpc.aio.AioRpcError as call_error:
            if refused_unseen(call_error):
                not_called()  # no call line stands for it: the gateway's own
            return failed(call_error)
        if message is UNDECODABLE:
            not_called()  # the call's line says OK; this answer's says DATA_LOSS
            return error(_undecodable())
        response = web.StreamResponse(
            headers={
                **(response_headers(await call.initial_metadata()) or {}),
                "Content-Type": EVENT_STREAM if events else NDJSON,
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # proxies (nginx): pass each message on at once
                **(extra or {}),
            }
        )
        await response.prepare(request)
        try:
            while message is not _EOF:
                if message is UNDECODABLE:
                    await response.write(_frame(status_json(_undecodable()), events, error=True))
                    break
                await response.write(_frame(render(message), events))
                message = await call.read()
        except grpc.aio.AioRpcError as call_error:
            await response.write(_frame(status_json(status_of(call_error)), events, error=True))
        await response.write_eof()
        return response
    finally:
        call.cancel()  # (a no-op once the call has ended)


def _undecodable() -> status_pb2.Status:
    return to_status(DataLoss(NESTED_TOO_DEEPLY))
