"""Server interceptors: what applies to every RPC, in one place.

ErrorInterceptor turns whatever a handler raises into a proper status
(status.to_status): a new RPC gets the same treatment with no code of its own.
The others live next to what they enforce (auth.AuthInterceptor,
observe.ObserveInterceptor, limits.DeadlineInterceptor) and use the helpers
below; server.py puts them in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from grpc_status import rpc_status

from .status import to_status

Behavior = Callable[[Any, grpc.ServicerContext], Any]


def _abort(context: grpc.ServicerContext, error: Exception, method: str) -> None:
    context.abort_with_status(rpc_status.to_status(to_status(error, method)))


def _wrap_unary(behavior: Behavior, method: str) -> Behavior:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as error:  # noqa: BLE001 - every error gets a status
            _abort(context, error, method)

    return handle


def _wrap_stream(behavior: Behavior, method: str) -> Behavior:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except Exception as error:  # noqa: BLE001
            _abort(context, error, method)

    return handle


def end_with_error(context: grpc.ServicerContext, error: BaseException, method: str) -> None:
    """Put the status of `error` on the call without raising (what
    abort_with_status does, minus the exception, which only a handler's own
    thread could raise): the code, the message and the google.rpc.Status
    trailer. The stream ends with it when its close callback is called."""
    status = rpc_status.to_status(to_status(error, method))
    context.set_trailing_metadata(status.trailing_metadata)
    context.set_code(status.code)
    context.set_details(status.details)


def _wrap_non_blocking(behavior: Any, method: str) -> Any:
    """A non-blocking streaming behavior (it returns at once and sends later,
    from any thread, through a callback), with errors mapped as for every
    other RPC: what it raises before returning aborts the call with the
    error's status; an exception it passes to the callback, instead of a
    message, ends the stream with that exception's status."""

    def handle(request: Any, context: grpc.ServicerContext, send_response_callback: Any) -> Any:
        def send(item: Any) -> None:
            if isinstance(item, BaseException):
                end_with_error(context, item, method)
                item = None
            send_response_callback(item)

        try:
            return behavior(request, context, send_response_callback=send)
        except Exception as error:  # noqa: BLE001 - every error gets a status
            _abort(context, error, method)

    return non_blocking_like(behavior, handle)


if TYPE_CHECKING:  # grpc-stubs makes these generic; grpc itself does not
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.ServerInterceptor
# The base class for the interceptors of other modules (auth, observe, limits).
Interceptor = _Interceptor

# (request_streaming, response_streaming) -> the factory of such a handler.
_FACTORIES: dict[tuple[bool, bool], Callable[..., Any]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def behavior_of(handler: Handler) -> Behavior:
    found = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    assert found is not None
    return found


def non_blocking_like(behavior: Any, wrapper: Any) -> Any:
    """Mark `wrapper`, which wraps the non-blocking `behavior`, as grpc's
    non-blocking form too (and on the same thread pool, if it names one)."""
    wrapper.experimental_non_blocking = True
    wrapper.experimental_thread_pool = getattr(behavior, "experimental_thread_pool", None)
    return wrapper


def is_non_blocking(behavior: Behavior) -> bool:
    """A streaming behavior that returns at once and sends its messages later
    through a callback (grpc's experimental_non_blocking, which the health
    servicer's Watch and our WatchRun use). Wrapped like any other, it would
    hold one of the server's threads for as long as each stream stays open:
    each interceptor wraps it in a non-blocking behavior of its own instead,
    which passes a send callback of its own inward."""
    return bool(getattr(behavior, "experimental_non_blocking", False))


def replace_behavior(handler: Handler, behavior: Behavior) -> Handler:
    """A handler of the same kind and codecs as `handler` that runs `behavior`."""
    factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(  # type: ignore[no-any-return]
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class ErrorInterceptor(_Interceptor):
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if is_non_blocking(behavior_of(handler)):
            return replace_behavior(handler, _wrap_non_blocking(behavior_of(handler), method))
        codecs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method), **codecs
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method), **codecs
            )
        return handler
