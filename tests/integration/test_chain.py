"""rpc/chain.py: the one interceptor, on a real gRPC server.

Raw-bytes methods (no protobuf) with recording hooks, plus the real server's
chain: the order the hooks run in, refusals, errors, the three handler
shapes, grpc's non-blocking form kept through the wrapper, and the bound of
the wrapped-handler cache.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from servers import start_server
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1 import run_service_pb2_grpc
from spur_runs.rpc.chain import (
    MAX_CACHED_HANDLERS,
    Call,
    ChainInterceptor,
    Handler,
    Hook,
    Refusal,
    is_non_blocking,
    wrap,
)

SERVICE = "chain.test.T"


class Recorder(Hook):
    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name
        self.events = events

    def enter(self, call: Call) -> str:
        self.events.append(f"{self.name}.enter {call.shape.value}")
        return self.name

    def sent(self, call: Call, state: Any, response: Any) -> None:
        self.events.append(f"{self.name}.sent {response!r}")

    def send(self, call: Call, state: Any, item: Any) -> Any:
        self.events.append(f"{self.name}.send {item!r}")
        return item

    def exit(self, call: Call, state: Any, error: BaseException | None) -> None:
        assert state == self.name
        self.events.append(f"{self.name}.exit {type(error).__name__ if error else None}")


class Refuser(Hook):
    def refusal(self, details: grpc.HandlerCallDetails) -> Refusal | None:
        for key, value in details.invocation_metadata or ():
            if key == "refuse":
                return Refusal(grpc.StatusCode.PERMISSION_DENIED, value)
        return None


class Mapper(Hook):
    """Turns a ValueError into INVALID_ARGUMENT, as errors.ErrorHook does."""

    def exit(self, call: Call, state: Any, error: BaseException | None) -> None:
        if isinstance(error, ValueError):
            call.context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"fail":
        raise ValueError("bad request")
    return b"got " + request


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    yield b"one"
    yield b"two"


def _non_blocking(
    request: bytes, context: grpc.ServicerContext, send_response_callback: Any
) -> None:
    """Returns at once; sends from another thread, later."""

    def later() -> None:
        time.sleep(0.2)
        send_response_callback(b"late")
        send_response_callback(None)

    threading.Thread(target=later, daemon=True).start()


_non_blocking.experimental_non_blocking = True  # type: ignore[attr-defined]


@pytest.fixture
def events() -> list[str]:
    return []


def _serve(events: list[str], workers: int = 4) -> tuple[grpc.Server, int, ChainInterceptor]:
    chain = ChainInterceptor(
        [Recorder("outer", events), Refuser(), Mapper(), Recorder("inner", events)]
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), interceptors=[chain])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "Watch": grpc.unary_stream_rpc_method_handler(_non_blocking),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, chain


@pytest.fixture
def raw(events: list[str]) -> Iterator[tuple[grpc.Channel, ChainInterceptor]]:
    server, port, chain = _serve(events)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel, chain
    server.stop(grace=None)


def _wait_for(events: list[str], last: str) -> None:
    deadline = time.monotonic() + 5
    while (not events or events[-1] != last) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_unary_hooks_run_outer_to_inner_then_back(
    raw: tuple[grpc.Channel, ChainInterceptor], events: list[str]
) -> None:
    channel, _ = raw
    assert channel.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=5) == b"got x"
    _wait_for(events, "outer.exit None")
    assert events == [
        "outer.enter unary",
        "inner.enter unary",
        "outer.sent b'got x'",
        "inner.sent b'got x'",
        "inner.exit None",
        "outer.exit None",
    ]


def test_an_exit_that_raises_replaces_the_error_for_the_hooks_outside(
    raw: tuple[grpc.Channel, ChainInterceptor], events: list[str]
) -> None:
    channel, _ = raw
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(f"/{SERVICE}/Unary")(b"fail", timeout=5)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "bad request"
    _wait_for(events, "outer.exit Exception")
    # inner saw the handler's ValueError; outer, outside Mapper, grpc's abort.
    assert events[-2:] == ["inner.exit ValueError", "outer.exit Exception"]


def test_a_refusal_skips_the_hooks_inside_and_the_behavior(
    raw: tuple[grpc.Channel, ChainInterceptor], events: list[str]
) -> None:
    channel, _ = raw
    for method in ("Unary", "Watch"):  # Watch: non-blocking, refused as an ordinary stream
        events.clear()
        call = (
            channel.unary_unary(f"/{SERVICE}/Unary")
            if method == "Unary"
            else channel.unary_stream(f"/{SERVICE}/Watch")
        )
        with pytest.raises(grpc.RpcError) as caught:
            answer = call(b"x", timeout=5, metadata=(("refuse", "not you"),))
            list(answer)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert caught.value.details() == "not you"
        _wait_for(events, "outer.exit Exception")
        shape = "unary" if method == "Unary" else "stream"
        assert events == [f"outer.enter {shape}", "outer.exit Exception"]


def test_a_stream_is_wrapped_by_one_generator(
    raw: tuple[grpc.Channel, ChainInterceptor], events: list[str]
) -> None:
    channel, _ = raw
    assert list(channel.unary_stream(f"/{SERVICE}/Stream")(b"x", timeout=5)) == [b"one", b"two"]
    _wait_for(events, "outer.exit None")
    assert events == [
        "outer.enter stream",
        "inner.enter stream",
        "outer.sent b'one'",
        "inner.sent b'one'",
        "outer.sent b'two'",
        "inner.sent b'two'",
        "inner.exit None",
        "outer.exit None",
    ]


def test_grpc_still_serves_the_wrapper_in_its_non_blocking_form(events: list[str]) -> None:
    """Pins chain.non_blocking_like: grpc has no public way to ask for the
    non-blocking form, and reads the behavior's attributes. With ONE server
    thread, three streams stay open at once and a unary call is answered
    meanwhile: no thread is held by an open stream."""
    server, port, _ = _serve(events, workers=1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = channel.unary_stream(f"/{SERVICE}/Watch")
            streams = [watch(b"x", timeout=5) for _ in range(3)]
            time.sleep(0.05)
            assert channel.unary_unary(f"/{SERVICE}/Unary")(b"y", timeout=1) == b"got y"
            for stream in streams:
                assert list(stream) == [b"late"]
    finally:
        server.stop(grace=None)
    watch_events = [e for e in events if "unary" not in e and "y'" not in e]
    assert watch_events.count("outer.enter non_blocking") == 3
    # Inner hooks see an item first, as nested wrappers would.
    assert watch_events.count("inner.send b'late'") == 3
    first_late = watch_events.index("inner.send b'late'")
    assert watch_events[first_late + 1] == "outer.send b'late'"
    assert watch_events.count("outer.send None") == 3


def test_the_wrapper_of_a_non_blocking_behavior_is_non_blocking_on_its_pool() -> None:
    pool = futures.ThreadPoolExecutor(max_workers=1)
    _non_blocking.experimental_thread_pool = pool  # type: ignore[attr-defined]
    try:
        handler: Handler = grpc.unary_stream_rpc_method_handler(_non_blocking)
        wrapped = wrap(handler, "/x/Y", [Recorder("r", [])], None)
        assert wrapped.unary_stream is not _non_blocking
        assert is_non_blocking(wrapped.unary_stream)
        assert wrapped.unary_stream.experimental_thread_pool is pool  # type: ignore[union-attr]
    finally:
        del _non_blocking.experimental_thread_pool  # type: ignore[attr-defined]
        pool.shutdown()


def test_each_method_is_wrapped_once_and_the_cache_is_bounded(
    raw: tuple[grpc.Channel, ChainInterceptor],
) -> None:
    channel, chain = raw
    for _ in range(20):
        channel.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=5)
        list(channel.unary_stream(f"/{SERVICE}/Stream")(b"x", timeout=5))
    assert chain.cached == 2
    # A continuation that made a new handler on every call: built per call, never kept.
    fresh = ChainInterceptor([Recorder("r", [])])
    details = _details("/x/Y")
    for _ in range(MAX_CACHED_HANDLERS + 50):
        assert fresh.intercept_service(lambda d: _new_handler(), details) is not None
    assert fresh.cached == MAX_CACHED_HANDLERS


def _new_handler() -> Handler:
    def behavior(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    return grpc.unary_unary_rpc_method_handler(behavior)


def _details(method: str) -> grpc.HandlerCallDetails:
    class Details(grpc.HandlerCallDetails):
        def __init__(self) -> None:
            self.method = method
            self.invocation_metadata = ()

    return Details()


def test_the_real_server_keeps_one_wrapped_handler_per_method(migrated_url: str) -> None:
    server = start_server(migrated_url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = run_service_pb2_grpc.RunServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(10):
                with pytest.raises(grpc.RpcError):
                    stub.GetRun(pb.GetRunRequest(run_id="no-such-run"), timeout=5)
                health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert server.chain.cached == 2
        # The served chain has the last resort test_an_error_no_hook_gave_a_
        # status_... tests on a chain of its own (a merge once dropped it).
        from spur_runs.rpc.errors import last_resort

        assert server.chain.last_resort is last_resort
    finally:
        server.stop(grace=1)


class Exploder(Hook):
    """A hook outside the error mapping that fails: what a bug in observe,
    auth or deadlines would do (a review, 2026-12-04, found two such bugs:
    metadata beyond ASCII)."""

    def __init__(self, where: str) -> None:
        self.where = where

    def enter(self, call: Call) -> None:
        if self.where == "enter":
            raise RuntimeError("secret detail of a failing hook")

    def exit(self, call: Call, state: Any, error: BaseException | None) -> None:
        if self.where == "exit":
            raise RuntimeError("secret detail of a failing hook")


@pytest.mark.parametrize("where", ["enter", "exit"])
@pytest.mark.parametrize("method", ["Unary", "Stream", "Watch"])
def test_an_error_no_hook_gave_a_status_is_internal_with_a_generic_message(
    where: str, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    """grpc alone answered UNKNOWN with the exception's text; the chain's
    last resort gives it the status every unexpected error gets, and the
    traceback goes to the log."""
    from spur_runs.rpc.errors import last_resort

    observed: list[grpc.StatusCode] = []

    class Observer(Hook):
        def exit(self, call: Call, state: Any, error: BaseException | None) -> None:
            from spur_runs.rpc.observe import _final_code

            observed.append(_final_code(call.context, error is not None))

    chain = ChainInterceptor([Observer(), Exploder(where), Mapper()], last_resort=last_resort)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[chain])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "Watch": grpc.unary_stream_rpc_method_handler(_non_blocking),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            path = f"/{SERVICE}/{method}"
            with caplog.at_level("ERROR", logger="spur_runs.rpc.status"):
                with pytest.raises(grpc.RpcError) as caught:
                    if method == "Unary":
                        channel.unary_unary(path)(b"x", timeout=5)
                    else:
                        list(channel.unary_stream(path)(b"x", timeout=5))
        assert caught.value.code() is grpc.StatusCode.INTERNAL, caught.value.details()
        assert caught.value.details() == "internal error"
        assert any(r.exc_info and "secret detail" in str(r.exc_info[1]) for r in caplog.records), (
            caplog.text
        )
        # What observe's access line and metrics say is what the client got.
        assert observed == [grpc.StatusCode.INTERNAL]
    finally:
        server.stop(grace=None)
