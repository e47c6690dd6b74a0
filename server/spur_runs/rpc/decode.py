"""Requests that are not valid protobuf get INVALID_ARGUMENT.

grpc parses a request with the handler's `request_deserializer` before any
hook runs; when that raises, grpc itself answers INTERNAL
"Exception deserializing request!" and logs a traceback, as for a bug of
ours. The bytes are the caller's fault, so this hook, innermost,
wraps the deserializer: a parse failure yields an `Undecodable` in place of
the message, the outer hooks (metrics, deadline) pass it along
untouched, and this hook's `enter` raises InvalidArgument, which
errors.ErrorHook turns into a status with a google.rpc.BadRequest detail.
Request-streaming RPCs (reflection) are left as grpc serves them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from ..errors import InvalidArgument
from .chain import Call, Deserializer, Handler, Hook


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


class DecodeHook(Hook):
    def applies(self, handler: Handler) -> bool:
        return not handler.request_streaming and handler.request_deserializer is not None

    def deserializer(self, handler: Handler, deserializer: Deserializer) -> Deserializer:
        return _safe(deserializer) if self.applies(handler) else deserializer

    def enter(self, call: Call) -> None:
        if isinstance(call.request, Undecodable):
            raise _refuse(call.request)
