"""The one handler-wrapping helper: what applies to every RPC, as hooks
composed into one grpc.ServerInterceptor.

Each concern (observe.py: metrics, access log, request id; auth.py: who may
call what; limits.py: the deadline of database work; errors.py: every error
becomes a status; decode.py: unparsable bytes) is a Hook: a few small
functions the chain calls around a call. The chain alone knows grpc's handler shapes:

- UNARY: a behavior that returns its answer (unary-unary, stream-unary);
- STREAM: a behavior that returns an iterator of answers (unary-stream,
  stream-stream), wrapped by a generator;
- NON_BLOCKING: grpc's `experimental_non_blocking` form (health's Watch,
  WatchRun, reflection): the behavior returns at once and sends later, from
  any thread, through a callback; its wrapper is non-blocking too, so that
  no thread is held while the stream stays open.

A call pays one wrapper, whatever the number of hooks, and the wrapped
handler of a method is built once and kept (`ChainInterceptor`): grpc asks
the interceptors for a handler on every call.

For one call the chain calls, hooks in order (outermost first):
`enter` before the behavior (it may replace `call.request`; when it raises,
the call fails with that error and only the hooks entered before see it);
`sent` after each answer (UNARY, STREAM) or `send` on each item a
non-blocking behavior passes to its callback (inner hooks first, like nested
wrappers); `exit` when the behavior has returned or raised, in reverse
order, with the error (or None); an `exit` that raises replaces the error
for the hooks outside it. `refusal` runs when the handler is looked up: a
hook that refuses the call replaces the behavior, with the hooks inside it,
by one that aborts with the refusal's code. An error that leaves the last
exit with no status set on the call (a hook outside errors.py's failed) is
given to the chain's `last_resort`, which sets one: grpc itself answered
UNKNOWN with the exception's own text.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

if TYPE_CHECKING:  # grpc-stubs makes these generic; grpc itself does not
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.ServerInterceptor
Interceptor = _Interceptor

Behavior = Callable[..., Any]
Deserializer = Callable[[bytes], Any]
Serializer = Callable[[Any], bytes]

# How many wrapped handlers a chain keeps: one per method and refusal is a
# few dozen; a continuation that made a new handler object on every call
# would otherwise grow the cache without end (beyond it, handlers are built
# per call, as correct, only slower).
MAX_CACHED_HANDLERS = 512


class Shape(enum.Enum):
    UNARY = "unary"
    STREAM = "stream"
    NON_BLOCKING = "non_blocking"


# (request_streaming, response_streaming) -> grpc's public factory of such a handler.
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


def is_non_blocking(behavior: Behavior) -> bool:
    """Whether grpc serves `behavior` in its non-blocking form."""
    return bool(getattr(behavior, "experimental_non_blocking", False))


def non_blocking_like(behavior: Behavior, wrapper: Behavior) -> Behavior:
    """Mark `wrapper`, which wraps the non-blocking `behavior`, as grpc's
    non-blocking form too (and on the same thread pool, if it names one).

    grpc has no public way to ask for this form: its server reads these two
    attributes of the behavior function (grpc/_server.py, as the health
    servicer grpc ships sets them). This is the one place that sets them on
    a wrapper; tests/integration/test_chain.py pins that grpc still honours them.
    """
    wrapper.experimental_non_blocking = True  # type: ignore[attr-defined]
    wrapper.experimental_thread_pool = getattr(  # type: ignore[attr-defined]
        behavior, "experimental_thread_pool", None
    )
    return wrapper


def shape_of(handler: Handler) -> Shape:
    if is_non_blocking(behavior_of(handler)):
        return Shape.NON_BLOCKING
    return Shape.STREAM if handler.response_streaming else Shape.UNARY


def rebuild(
    handler: Handler,
    behavior: Behavior,
    request_deserializer: Deserializer | None,
    response_serializer: Serializer | None = None,
) -> Handler:
    """A handler of the same kind as `handler` that runs `behavior`, with
    these codecs (by default its response serializer), built with grpc's
    public factories."""
    factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(  # type: ignore[no-any-return]
        behavior,
        request_deserializer=request_deserializer,
        response_serializer=response_serializer or handler.response_serializer,
    )


@dataclass(frozen=True)
class Refusal:
    """A call refused before its behavior runs: it ends with this status."""

    code: grpc.StatusCode
    message: str


class Call:
    """One call, as the hooks see it."""

    __slots__ = ("method", "shape", "request_streaming", "response_streaming", "request", "context")

    def __init__(
        self,
        method: str,
        shape: Shape,
        streaming: tuple[bool, bool],
        request: Any,
        context: grpc.ServicerContext,
    ) -> None:
        self.method = method
        self.shape = shape
        self.request_streaming, self.response_streaming = streaming
        self.request = request
        self.context = context


class Hook:
    """One concern of every call; every method is optional (a hook that does
    not override `sent`, `send` or `exit` costs nothing there)."""

    def applies(self, handler: Handler) -> bool:
        """Whether this hook wraps calls of `handler` (asked once per method)."""
        return True

    def deserializer(self, handler: Handler, deserializer: Deserializer) -> Deserializer:
        """The request deserializer to use in place of `deserializer`."""
        return deserializer

    def serializer(self, handler: Handler, serializer: Serializer) -> Serializer:
        """The response serializer to use in place of `serializer`."""
        return serializer

    def refusal(self, details: grpc.HandlerCallDetails) -> Refusal | None:
        """On every call, when its handler is looked up: None lets it through."""
        return None

    def enter(self, call: Call) -> Any:
        """Before the behavior; what it returns is this hook's state for the call."""
        return None

    def sent(self, call: Call, state: Any, response: Any) -> None:
        """After each answer of a UNARY or STREAM behavior."""

    def send(self, call: Call, state: Any, item: Any) -> Any:
        """On each item a NON_BLOCKING behavior sends (None closes the stream);
        returns the item to pass on."""
        return item

    def exit(self, call: Call, state: Any, error: BaseException | None) -> None:
        """After the behavior (for NON_BLOCKING: once it has returned); may
        raise an error in place of `error`."""


def _overrides(hook: Hook, name: str) -> bool:
    return getattr(type(hook), name) is not getattr(Hook, name)


def _wraps(hook: Hook) -> bool:
    """Whether `hook` does anything around a call (not only `refusal`)."""
    return any(_overrides(hook, name) for name in ("enter", "sent", "send", "exit"))


# What the chain does with an error that no hook gave a status (its
# context, the error, the method): abort the call with a status.
LastResort = Callable[[grpc.ServicerContext, Exception, str], None]


class _Plan:
    """The hooks of one wrapped handler, split by what each of them does."""

    def __init__(self, hooks: Sequence[Hook], last_resort: LastResort | None = None) -> None:
        self.hooks = tuple(hooks)
        self.last_resort = last_resort
        self.senders = tuple((i, h) for i, h in enumerate(self.hooks) if _overrides(h, "sent"))
        # Inner hooks first: the innermost wrapper sees an item first.
        self.send_chain = tuple(
            (i, h) for i, h in reversed(list(enumerate(self.hooks))) if _overrides(h, "send")
        )


def _leave(plan: _Plan, call: Call, states: list[Any], error: BaseException | None) -> None:
    """Run the exits of the hooks entered, innermost first; raise the error
    the outermost one is left with."""
    hooks = plan.hooks
    for index in range(len(states) - 1, -1, -1):
        try:
            hooks[index].exit(call, states[index], error)
        except BaseException as replaced:  # noqa: BLE001 - it becomes the call's error
            error = replaced
    if error is not None:
        last_resort = plan.last_resort
        # (Not GeneratorExit, a stream's client gone; nor an error that an
        # abort already put a status on.)
        if last_resort is not None and isinstance(error, Exception):
            if call.context.code() is None:  # type: ignore[attr-defined]
                last_resort(call.context, error, call.method)  # aborts: raises
        try:
            raise error
        finally:
            # The traceback holds this frame: drop the reference, no cycle.
            error = None


def _enter(plan: _Plan, call: Call, states: list[Any]) -> None:
    for hook in plan.hooks:
        states.append(hook.enter(call))


def _unary(method: str, streaming: tuple[bool, bool], plan: _Plan, behavior: Behavior) -> Behavior:
    senders = plan.senders

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        call = Call(method, Shape.UNARY, streaming, request, context)
        states: list[Any] = []
        try:
            _enter(plan, call, states)
            response = behavior(call.request, context)
            for index, hook in senders:
                hook.sent(call, states[index], response)
        except BaseException as error:  # noqa: BLE001 - the hooks see every end
            _leave(plan, call, states, error)
            raise  # not reached: _leave raises
        _leave(plan, call, states, None)
        return response

    return unary


def _stream(method: str, streaming: tuple[bool, bool], plan: _Plan, behavior: Behavior) -> Behavior:
    senders = plan.senders

    def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        call = Call(method, Shape.STREAM, streaming, request, context)
        states: list[Any] = []
        try:
            _enter(plan, call, states)
            for response in behavior(call.request, context):
                for index, hook in senders:
                    hook.sent(call, states[index], response)
                yield response
        except BaseException as error:  # noqa: BLE001 - GeneratorExit included
            _leave(plan, call, states, error)
            raise
        _leave(plan, call, states, None)

    return stream


def _non_blocking(
    method: str, streaming: tuple[bool, bool], plan: _Plan, behavior: Behavior
) -> Behavior:
    send_chain = plan.send_chain

    def non_blocking(
        request: Any, context: grpc.ServicerContext, send_response_callback: Any = None
    ) -> Any:
        call = Call(method, Shape.NON_BLOCKING, streaming, request, context)
        states: list[Any] = []

        def send(item: Any) -> None:
            for index, hook in send_chain:
                item = hook.send(call, states[index], item)
            send_response_callback(item)

        try:
            _enter(plan, call, states)
            result = behavior(call.request, context, send_response_callback=send)
        except BaseException as error:  # noqa: BLE001
            _leave(plan, call, states, error)
            raise
        _leave(plan, call, states, None)
        return result

    return non_blocking_like(behavior, non_blocking)


_WRAPPERS = {Shape.UNARY: _unary, Shape.STREAM: _stream, Shape.NON_BLOCKING: _non_blocking}


def _refuser(refusal: Refusal) -> Behavior:
    def refuse(_request: Any, context: grpc.ServicerContext) -> NoReturn:
        context.abort(refusal.code, refusal.message)

    return refuse


def wrap(
    handler: Handler,
    method: str,
    hooks: Sequence[Hook],
    refused: tuple[int, Refusal] | None,
    last_resort: LastResort | None = None,
) -> Handler:
    """`handler` wrapped by those of `hooks` that apply to it. `refused`: the
    index of the hook that refused the call and its refusal; that hook and
    the ones inside it are replaced by an ordinary behavior that aborts (for
    a non-blocking method too: what would start a stream never runs).
    `last_resort`: see the module's docstring."""
    deserializer = handler.request_deserializer
    serializer = handler.response_serializer
    for hook in hooks:
        if deserializer is not None:
            deserializer = hook.deserializer(handler, deserializer)
        if serializer is not None:
            serializer = hook.serializer(handler, serializer)
    if refused is None:
        behavior = behavior_of(handler)
        shape = shape_of(handler)
    else:
        index, refusal = refused
        hooks = hooks[:index]
        behavior = _refuser(refusal)
        shape = Shape.STREAM if handler.response_streaming else Shape.UNARY
    active = [h for h in hooks if _wraps(h) and h.applies(handler)]
    if active:
        behavior = _WRAPPERS[shape](
            method,
            (handler.request_streaming, handler.response_streaming),
            _Plan(active, last_resort),
            behavior,
        )
    return rebuild(handler, behavior, deserializer, serializer)


class HandlerCache:
    """Wrapped handlers, built once by key and kept, at most
    MAX_CACHED_HANDLERS of them (beyond, built per call: correct, slower)."""

    def __init__(self) -> None:
        self._cache: dict[Any, Handler] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, key: Any, build: Callable[[], Handler]) -> Handler:
        found = self._cache.get(key)
        if found is not None:
            return found
        built = build()
        with self._lock:
            if len(self._cache) < MAX_CACHED_HANDLERS:
                built = self._cache.setdefault(key, built)
        return built


class ChainInterceptor(_Interceptor):
    """The one interceptor of the server (and of the gateway's in-process
    calls): `hooks`, outermost first; `last_resort` sets the status of an
    error no hook gave one."""

    def __init__(self, hooks: Sequence[Hook], last_resort: LastResort | None = None) -> None:
        self.hooks = tuple(hooks)
        self.last_resort = last_resort
        self._refusers = tuple((i, h) for i, h in enumerate(self.hooks) if _overrides(h, "refusal"))
        self._cache = HandlerCache()
        # The cached handlers that refuse their call (bounded as the cache).
        self._refusing: set[Handler] = set()

    @property
    def cached(self) -> int:
        """How many wrapped handlers are kept (one per method and refusal)."""
        return len(self._cache)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        refused: tuple[int, Refusal] | None = None
        for index, hook in self._refusers:
            refusal = hook.refusal(handler_call_details)
            if refusal is not None:
                refused = (index, refusal)
                break
        method = handler_call_details.method
        key = (method, handler, None if refused is None else refused[1])
        found = self._cache.get(
            key, lambda: wrap(handler, method, self.hooks, refused, self.last_resort)
        )
        if refused is not None and len(self._refusing) < MAX_CACHED_HANDLERS:
            self._refusing.add(found)
        return found

    def refuses(self, handler: Handler) -> bool:
        """Whether `handler` is one this chain gave to refuse a call: it
        reads no request message (rpc/arrival.py answers it at once)."""
        return handler in self._refusing
