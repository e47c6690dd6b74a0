"""Every error becomes a status: whatever a handler raises gets the status
that status.to_status gives it, so a new RPC gets the same treatment with no
code of its own. Innermost but for decode (chain.py puts the hooks in order).
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_status import rpc_status

from .chain import Call, Handler, Hook, behavior_of, is_non_blocking
from .status import to_status


def _abort(context: grpc.ServicerContext, error: Exception, method: str) -> None:
    context.abort_with_status(rpc_status.to_status(to_status(error, method)))


# The chain's last resort (chain.ChainInterceptor): an error raised by a
# hook outside ErrorHook (observe, auth, deadlines) gets its status here as
# any other does: INTERNAL with a generic message and a logged traceback for
# the unexpected, not grpc's UNKNOWN with the exception's own text.
last_resort = _abort


def end_with_error(context: grpc.ServicerContext, error: BaseException, method: str) -> None:
    """Put the status of `error` on the call without raising (what
    abort_with_status does, minus the exception, which only a handler's own
    thread could raise): the code, the message and the google.rpc.Status
    trailer. The stream ends with it when its close callback is called."""
    status = rpc_status.to_status(to_status(error, method))
    context.set_trailing_metadata(status.trailing_metadata)
    context.set_code(status.code)
    context.set_details(status.details)


class ErrorHook(Hook):
    """What a behavior raises aborts the call with the error's status. A
    non-blocking behavior may also pass an exception to its send callback, in
    place of a message: the stream then ends with that exception's status.
    Request-streaming methods in grpc's blocking form are left as grpc serves
    them."""

    def applies(self, handler: Handler) -> bool:
        return (
            handler.unary_unary is not None
            or handler.unary_stream is not None
            or is_non_blocking(behavior_of(handler))
        )

    def send(self, call: Call, state: Any, item: Any) -> Any:
        if isinstance(item, BaseException):
            end_with_error(call.context, item, call.method)
            return None
        return item

    def exit(self, call: Call, state: Any, error: BaseException | None) -> None:
        if isinstance(error, Exception):  # every error gets a status
            _abort(call.context, error, call.method)
