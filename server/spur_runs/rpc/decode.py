"""Requests that are not valid protobuf get INVALID_ARGUMENT.

grpc parses a request with the handler's `request_deserializer` before any
interceptor's behavior runs; when that raises, grpc itself answers INTERNAL
"Exception deserializing request!" and logs a traceback, as for a bug of
ours. The bytes are the caller's fault, so this interceptor, innermost,
wraps the deserializer: a parse failure yields an `Undecodable` in place of
the message, the outer behaviors (metrics, auth, deadline) pass it along
untouched, and the wrapped behavior raises InvalidArgument, which
ErrorInterceptor turns into a status with a google.rpc.BadRequest detail.
Request-streaming RPCs (reflection) are left as grpc serves them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ..errors import InvalidArgument
from .interceptors import (
    Handler,
    Interceptor,
    behavior_of,
    is_non_blocking,
    non_blocking_like,
    replace_behavior,
)


class Undecodable:
    """Stands for a request whose bytes did not parse."""

    def __init__(self, error: DecodeError) -> None:
        # protobuf's message names the type and the fault ("Wire format was
        # corrupt", "String field had bad UTF-8"), nothing of the server.
        self.reason = str(error) or "not a valid protobuf message"


def _safe(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return Undecodable(error)

    return deserialize


def _refuse(request: Undecodable) -> InvalidArgument:
    return InvalidArgument("request", f"is not a valid protobuf message: {request.reason}")


class DecodeInterceptor(Interceptor):
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        behavior: Any = behavior_of(handler)
        wrapped: Any
        if is_non_blocking(behavior):

            def wrapped(
                request: Any, context: grpc.ServicerContext, send_response_callback: Any
            ) -> Any:
                if isinstance(request, Undecodable):
                    raise _refuse(request)
                return behavior(request, context, send_response_callback=send_response_callback)

            non_blocking_like(behavior, wrapped)
        elif handler.response_streaming:

            def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, Undecodable):
                    raise _refuse(request)
                yield from behavior(request, context)

        else:

            def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, Undecodable):
                    raise _refuse(request)
                return behavior(request, context)

        return _with_deserializer(
            replace_behavior(handler, wrapped), _safe(handler.request_deserializer)
        )


def _with_deserializer(handler: Handler, deserializer: Callable[[bytes], Any]) -> Handler:
    """`handler` with another request deserializer (grpc's handlers are
    namedtuples)."""
    return handler._replace(request_deserializer=deserializer)  # type: ignore[attr-defined,no-any-return]
