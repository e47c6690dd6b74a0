"""The floor: an empty unary RPC in a minimal grpcio server.

    python bench/lib/floor_server.py --mode sync --port 50061
    python bench/lib/floor_server.py --mode aio --port 50062

What grpcio itself costs per call, on this machine: `/bench.Floor/Empty`
takes any request and answers an empty message (bytes in, bytes out, no
protobuf, no interceptor, no database). The sync server uses the thread pool,
concurrency bound and channel options that `spur-runs serve` uses by default
(spur_runs.config.Config, spur_runs.rpc.limits.server_options), so that GetRun
over this floor is the share of the time our own code takes. Prints
"ready PORT" on stdout once it listens; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from concurrent import futures
from typing import Any

import grpc
import grpc.aio

METHOD = "/bench.Floor/Empty"


def _settings() -> tuple[int, int | None, list[tuple[str, Any]]]:
    """(thread-pool size, maximum_concurrent_rpcs, channel options) of ours."""
    try:
        from spur_runs.config import Config
        from spur_runs.rpc.limits import server_options

        config = Config()
        return config.max_workers, config.max_concurrent_rpcs, server_options(config)
    except Exception as error:  # the server package moved on: say so, use grpc defaults
        print(f"floor: using grpc defaults ({error!r})", file=sys.stderr)
        return 16, None, []


def _empty(request: bytes, context: Any) -> bytes:
    return b""


async def _empty_async(request: bytes, context: Any) -> bytes:
    return b""


def _handler(behavior: Any) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "bench.Floor",
        {
            "Empty": grpc.unary_unary_rpc_method_handler(
                behavior, request_deserializer=None, response_serializer=None
            )
        },
    )


def serve_sync(port: int) -> None:
    workers, max_rpcs, options = _settings()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
        handlers=[_handler(_empty)],
        options=options,
        maximum_concurrent_rpcs=max_rpcs,
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"ready {bound}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):  # a timed wait: the signal handler always gets to run
        pass
    server.stop(1).wait()


async def serve_aio(port: int) -> None:
    _workers, max_rpcs, options = _settings()
    server = grpc.aio.server(
        handlers=[_handler(_empty_async)], options=options, maximum_concurrent_rpcs=max_rpcs
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"ready {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("sync", "aio"), default="sync")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.mode == "sync":
        serve_sync(args.port)
    else:
        asyncio.run(serve_aio(args.port))


if __name__ == "__main__":
    main()
