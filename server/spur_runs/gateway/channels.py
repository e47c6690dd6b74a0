"""The gateway's gRPC channels to its own server: several connections, not one.

The server lets one connection have at most --max-streams-per-connection
streams open (HTTP/2 MAX_CONCURRENT_STREAMS), and every HTTP WatchRun is a
stream on the gateway's connection: with a single one, the next HTTP watch
beyond that bound would wait, silently, for another to end. So the gateway
opens enough connections for --max-watchers streams (each channel with a
subchannel pool of its own, else grpc would share one connection among them)
and puts each call on the one with the fewest calls open. A channel connects
on its first call, so the spare ones cost nothing until needed.

Used on the gateway's event-loop thread only: no lock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import grpc.aio

from ..config import Config


def channel_count(config: Config) -> int:
    """Connections enough for every WatchRun stream the server accepts, plus
    one for the unary calls that do not run in process."""
    return math.ceil(config.max_watchers / config.max_streams_per_connection) + 1


class ChannelPool:
    def __init__(self, target: str, options: Sequence[tuple[str, Any]], count: int) -> None:
        own = [*options, ("grpc.use_local_subchannel_pool", 1)]
        self._channels = [grpc.aio.insecure_channel(target, options=own) for _ in range(count)]
        self._open = [0] * count  # calls in flight, by channel

    def unary_unary(self, method: str, **codecs: Any) -> Callable[..., Any]:
        return self._spread([c.unary_unary(method, **codecs) for c in self._channels])

    def unary_stream(self, method: str, **codecs: Any) -> Callable[..., Any]:
        return self._spread([c.unary_stream(method, **codecs) for c in self._channels])

    def _spread(self, callables: list[Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            index = min(range(len(callables)), key=self._open.__getitem__)
            started = callables[index](*args, **kwargs)
            self._open[index] += 1
            started.add_done_callback(lambda _call: self._done(index))
            return started

        return call

    def _done(self, index: int) -> None:
        self._open[index] -= 1

    async def close(self, grace: float | None = None) -> None:
        for channel in self._channels:
            await channel.close(grace)
