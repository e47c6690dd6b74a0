"""A TCP forwarder that holds every chunk for a fixed time, each way: a
database across a network, on a machine whose kernel has no netem.

    python bench/lib/delay_proxy.py --listen-port 6543 --to 127.0.0.1:5432 --delay-ms 1

Each chunk read from one side is written to the other `--delay-ms` after it
was read, in order; a closed side closes the other once what it sent has
been delivered. asyncio's timers wake on whole milliseconds (epoll), so the
hold is at least the delay and rounds up to the next millisecond: the bench
measures the round trip it gives (workers.py: `SELECT 1` through it) instead
of assuming it. Prints "ready PORT" once it listens; SIGTERM stops it. Its
own CPU (a few µs per chunk) is the same for every case measured through it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await held.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            held.put_nowait((loop.time() + delay, data))
    except ConnectionError:
        pass
    held.put_nowait((0.0, b""))
    with contextlib.suppress(ConnectionError):
        await sender
    writer.close()


async def _serve(port: int, host: str, target_port: int, delay: float) -> None:
    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer, delay), _pump(up_reader, writer, delay))

    server = await asyncio.start_server(connected, "127.0.0.1", port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"ready {port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--to", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, required=True, help="hold, each way")
    args = parser.parse_args()
    host, _, port = args.to.rpartition(":")
    asyncio.run(_serve(args.listen_port, host, int(port), args.delay_ms / 1000))


if __name__ == "__main__":
    main()
