"""The gateway's HTTP answers that are not a message (grpc-gateway's
runtime/errors.go): a google.rpc.Status as JSON with the HTTP status of its
code, and the call's metadata as response headers."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import grpc
import grpc.aio
from aiohttp import web
from google.rpc import code_pb2, status_pb2

from ..rpc.status import HTTP_STATUS, grpc_code
from .render import status_json

log = logging.getLogger(__name__)

JSON = "application/json"
# The reply of a gRPC error that came with no google.rpc.Status, i.e. from
# the channel rather than the service, by code: its own text may name the
# private socket.
_TRANSPORT_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "the service is unavailable; retry later",
    grpc.StatusCode.INTERNAL: "internal error",
    grpc.StatusCode.UNKNOWN: "internal error",
}
_DETAILS_KEY = "grpc-status-details-bin"
_REQUEST_ID = "x-request-id"


class StatusReply(web.Response):
    """An answer whose body is a google.rpc.Status, which knows its code
    (for the access line of an answer the gateway gives itself: access.py)."""

    def __init__(self, code: grpc.StatusCode, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.code = code


def error(
    status: status_pb2.Status, http_status: int | None = None, headers: dict[str, str] | None = None
) -> StatusReply:
    code = grpc_code(status)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        # HTTP's 401 must name a scheme to use; the tokens are bearer tokens.
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="spur-runs"'}
    return StatusReply(
        code,
        status=http_status or HTTP_STATUS.get(code, 500),
        body=status_json(status),
        content_type=JSON,
        headers=headers,
    )


def failed(call_error: grpc.aio.AioRpcError) -> web.Response:
    """The answer to a failed call: its Status, with its metadata."""
    return error(
        status_of(call_error),
        headers=response_headers(call_error.initial_metadata(), call_error.trailing_metadata()),
    )


def not_allowed(path: str, allowed: list[str], *, head: bool = True) -> web.Response:
    """405 for `path`, which takes the verbs `allowed`: with GET comes HEAD
    (served as GET without the body: mux.py), unless `head` is False."""
    if head and "GET" in allowed and "HEAD" not in allowed:
        at = allowed.index("GET") + 1
        allowed = [*allowed[:at], "HEAD", *allowed[at:]]
    status = status_pb2.Status(
        code=code_pb2.UNIMPLEMENTED,
        message=f"method not allowed for {path[:200]}; use {', '.join(allowed)}",
    )
    # grpc-gateway answers 501 here; 405 with Allow is what HTTP means.
    return error(status, 405, {"Allow": ", ".join(allowed)})


def status_of(call_error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status a failed call carried (the server's interceptor
    always sends one), else one made of its code."""
    code = call_error.code()
    trailers: Any = call_error.trailing_metadata() or ()  # (key, value) pairs
    for key, value in trailers:
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            if status.code == code.value[0]:
                return status
    message = _TRANSPORT_MESSAGES.get(code)
    if message is None:
        message = call_error.details() or code.name
    else:
        log.warning("gateway call failed: %s %s", code.name, call_error.details())
    return status_pb2.Status(code=code.value[0], message=message)


def response_headers(
    metadata: Iterable[Any] | None, trailers: Iterable[Any] | None = None
) -> dict[str, str] | None:
    """The call's metadata as grpc-gateway shows it (initial metadata as
    Grpc-Metadata-*, trailing as Grpc-Trailer-*), plus the request id under
    its usual HTTP name (unary calls send it in their trailers)."""
    headers: dict[str, str] = {}
    for prefix, pairs in (("Grpc-Metadata-", metadata), ("Grpc-Trailer-", trailers)):
        for key, value in pairs or ():
            if isinstance(value, str) and not key.startswith("grpc-"):
                headers[prefix + key] = value
                if key == _REQUEST_ID:
                    headers["X-Request-Id"] = value
    return headers or None
