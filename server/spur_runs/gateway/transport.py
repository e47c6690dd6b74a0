"""How the gateway calls its own gRPC server: one interface, two roads.

    reply = await transport.unary(method, request, timeout=t, metadata=m, peer=p)
    reply.response, reply.initial, reply.trailing

- `InProcessTransport` (inprocess.py) runs the method's handler in this
  process, through the server's interceptor and on its threads: the gateway's
  road for unary calls (a second gRPC hop cost more than GetRun itself).
- `ChannelTransport` (here) calls the server through a real grpc.aio
  channel: the road for server streams (WatchRun), and for unary calls when
  the gateway is given no in-process transport (tests build it that way).

Both answer alike: the response message with the call's initial and
trailing metadata, or a failure raised as grpc.aio.AioRpcError carrying the
code, the details and both kinds of metadata. That sameness is what
tests/integration/test_transport_conformance.py checks, RPC by RPC, so that
the hand-made servicer context of the in-process road cannot drift from
grpc's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol

import grpc
from aiohttp import web
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message

from .transcode import message_class

# A response's key (aiohttp responses are mappings) for its Reply.done:
# app.py writes such a response itself, then ends its call.
DONE_KEY: web.ResponseKey[Callable[[], None]] = web.ResponseKey("spur_runs.call_done")

# What the gateway sends (metadata.outgoing_metadata) and gets back:
# (key, value) pairs; grpc.aio.Metadata iterates as such pairs too.
Metadata = tuple[tuple[str, str | bytes], ...]


class Reply(NamedTuple):
    """A unary call's answer."""

    # A message; in process, GetRun's, ListRuns' and GetChildRuns' may be an
    # api.spliced.Spliced of one (render.py renders both).
    response: Any
    initial: Iterable[tuple[str, str | bytes]]
    trailing: Iterable[tuple[str, str | bytes]]
    # In process: ends the call, which holds its answer's charge to the
    # client's address (rpc/unread.py) until the HTTP answer is written
    # (app.py calls it, mux.py if the answer is never made). None: nothing
    # to end.
    done: Callable[[], None] | None = None


class Transport(Protocol):
    """Unary calls to the gateway's own gRPC server."""

    async def unary(
        self,
        method: str,
        request: Message,
        *,
        timeout: float | None,
        metadata: Metadata,
        peer: str,
    ) -> Reply:
        """`method` is the gRPC path ("/spur.runs.v1.RunService/GetRun");
        `peer` names the HTTP client as grpc names a peer, for the in-process
        road (a channel's server sees the channel's own peer). Raises
        grpc.aio.AioRpcError when the call fails."""
        ...


class Channel(Protocol):
    """What ChannelTransport needs of a channel: grpc.aio.Channel, or
    channels.ChannelPool (several connections)."""

    def unary_unary(self, method: str, **codecs: Any) -> Callable[..., Any]: ...

    def unary_stream(self, method: str, **codecs: Any) -> Callable[..., Any]: ...


# grpc's own words for a call refused by --max-concurrent-rpcs. Its server
# answers such a call before any hook of ours sees it, so no call line
# stands for it in the access log; the in-process road refuses in the same
# words (inprocess.py).
CONCURRENCY_REFUSAL = "Concurrent RPC limit exceeded!"


def refused_unseen(call_error: Any) -> bool:
    """Whether a failed call (grpc.aio.AioRpcError) was refused by the
    concurrency bound, unseen by the server's hooks (and its access line)."""
    return bool(
        call_error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        and call_error.details() == CONCURRENCY_REFUSAL
    )


# A streamed message this process's protobuf will not parse: stored JSON
# nested ~49 levels or more (upb's depth limit of 100), which gRPC carries to
# clients without that limit. grpc.aio would log a traceback and hand
# streaming.py None; this names the case instead.
UNDECODABLE: Any = object()


def _tolerant(parse: Callable[[bytes], Message]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return UNDECODABLE

    return deserialize


class ChannelTransport:
    """Calls through a real gRPC channel, for the methods given (their
    messages' codecs are set up once, here)."""

    def __init__(self, channel: Channel, methods: Iterable[MethodDescriptor]) -> None:
        self._unary: dict[str, Callable[..., Any]] = {}
        self._streams: dict[str, Callable[..., Any]] = {}
        for method in methods:
            if method.client_streaming:
                continue  # (no HTTP rule can map to one)
            path = f"/{method.containing_service.full_name}/{method.name}"
            parse = message_class(method.output_type).FromString
            codecs: dict[str, Callable[..., Any]] = {
                "request_serializer": message_class(method.input_type).SerializeToString,
                "response_deserializer": parse,
            }
            if method.server_streaming:
                codecs["response_deserializer"] = _tolerant(parse)
                self._streams[path] = channel.unary_stream(path, **codecs)
            else:
                self._unary[path] = channel.unary_unary(path, **codecs)

    async def unary(
        self,
        method: str,
        request: Message,
        *,
        timeout: float | None,
        metadata: Metadata,
        peer: str,
    ) -> Reply:
        # Cancelling the awaiting task (the HTTP client went away) cancels
        # the call, and the server sees its RPC cancelled.
        call = self._unary[method](request, timeout=timeout, metadata=metadata)
        response = await call
        return Reply(response, await call.initial_metadata(), await call.trailing_metadata())

    def stream(
        self, method: str, request: Message, *, timeout: float | None, metadata: Metadata
    ) -> Any:
        """A server-streaming call, started: grpc.aio's UnaryStreamCall
        (read() message by message, grpc.aio.EOF at the end)."""
        return self._streams[method](request, timeout=timeout, metadata=metadata)
