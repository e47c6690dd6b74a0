"""The size of a request's head (its request line and headers) in all.

aiohttp bounds each line (8190 bytes) and the number of headers (128), not
their sum: 128 headers of 8 KiB made a 1 MiB head that aiohttp held, twice
over, until it ended, and 500 connections sending such heads took the server
from 0.1 GB to 1 GB, kept after they were gone. A head over 32 KiB (nginx's
default bound) is now answered 431 as soon as it is over, pipelined heads
too; behind a running stream, whose answer is being written, the connection
is dropped instead.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from http_client import Seeded, seed_runs, start_http_server
from spur_runs.runtime.server import RunsServer
from spur_runs.store.migrate import migrate

# Five headers of 8,000 bytes: each within the parser's limits, 40 KB in all.
_LARGE = b"".join(b"X-Large-%d: %s\r\n" % (n, b"v" * 8000) for n in range(5))
# Four of 7,000: 28 KB, under the bound.
_FITTING = b"".join(b"X-Fitting-%d: %s\r\n" % (n, b"v" * 7000) for n in range(4))


@pytest.fixture
def served(sqlite_url: str) -> Iterator[tuple[RunsServer, Seeded]]:
    migrate(sqlite_url)
    seeded = seed_runs(sqlite_url)
    # A header timeout no answer here waits for: a head over the bound is
    # answered when it is over, not when the timeout closes the connection.
    server = start_http_server(sqlite_url, http_header_timeout_seconds=120.0)
    yield server, seeded
    server.stop(grace=1)


def _head(path: str, headers: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s" % (path.encode(), headers)


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def _one_answer(sock: socket.socket) -> bytes:
    """One answer with a Content-Length, the connection left open."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        return _answer(sock)


def _refusal(answer: bytes) -> dict[str, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert b"\r\nConnection: close" in head and b"\r\nX-Request-Id: " in head
    status: dict[str, object] = json.loads(body)
    assert status["code"] == 3 and "32768 bytes" in str(status["message"]), status
    return status


def test_a_head_over_32_kib_is_431_once_it_is_over(served: tuple[RunsServer, Seeded]) -> None:
    server, seeded = served
    port = server.http_port
    assert port is not None
    path = f"/run/{seeded.parent}/"
    fitting = _exchange(port, _head(path, _FITTING + b"Connection: close\r\n\r\n"))
    assert fitting.startswith(b"HTTP/1.1 200 "), fitting[:300]
    _refusal(_exchange(port, _head(path, _LARGE + b"Connection: close\r\n\r\n")))
    # A head that is still coming: answered once over, not at the timeout.
    _refusal(_exchange(port, _head(path, _LARGE)))
    # The same in reads of 1,000 bytes, the bound's end split between two.
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        data = _head(path, _LARGE)
        for at in range(0, len(data), 1000):
            sock.sendall(data[at : at + 1000])
            sock.settimeout(0.01)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # answered: nothing more is read
            except TimeoutError:
                continue
            finally:
                sock.settimeout(60)
        _refusal(_answer(sock))
    # Pipelined after a request that fits, in the same read.
    pipelined = _head("/healthz", b"\r\n") + _head(path, _LARGE + b"Connection: close\r\n\r\n")
    _refusal(_exchange(port, pipelined))
    # Pipelined after a request with a body (no route reads it): the body is
    # passed over, whatever it holds, and the head after it is counted.
    body = b"\r\n\r\n".join([b"x" * 30_000] * 10)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(_head(path, b"Content-Length: %d\r\n\r\n" % len(body)) + body)
        first = _one_answer(sock)
        assert first.startswith(b"HTTP/1.1 200 "), first[:300]
        sock.sendall(_head(path, _LARGE + b"\r\n"))
        _refusal(_answer(sock))
    # A chunked body (no route takes one) counts as head.
    chunked = _head(path, b"Transfer-Encoding: chunked\r\n\r\n")
    chunks = b"".join(b"1f40\r\n%s\r\n" % (b"c" * 8000) for _ in range(5)) + b"0\r\n\r\n"
    _refusal(_exchange(port, chunked + chunks))


def test_a_body_on_a_get_however_large_keeps_the_connection(
    served: tuple[RunsServer, Seeded],
) -> None:
    """A Content-Length body a route does not read is not a head: 2 MB of it
    on a GET, then another GET on the same connection, are both answered."""
    server, seeded = served
    port = server.http_port
    assert port is not None
    path = f"/run/{seeded.parent}/"
    body = b"y" * 2_000_000
    first = _head(path, b"Content-Length: %d\r\n\r\n" % len(body)) + body
    answer = _exchange(port, first + _head(path, b"Connection: close\r\n\r\n"))
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer[:300]
    assert b" 431 " not in answer


def test_a_large_head_pipelined_behind_a_stream_drops_the_connection(
    served: tuple[RunsServer, Seeded],
) -> None:
    server, seeded = served
    port = server.http_port
    assert port is not None
    running = seeded.children[0]
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(_head(f"/run/{running}/watch", b"\r\n"))
        started = sock.recv(65536)
        assert started.startswith(b"HTTP/1.1 200 "), started[:300]
        # aiohttp would queue it (up to 32 of 1 MiB) while the watch runs.
        try:
            sock.sendall(_head(f"/run/{seeded.parent}/", _LARGE + b"\r\n"))
            rest = _answer(sock)
        except ConnectionResetError:
            rest = b""
        assert b"HTTP/1.1 431" not in rest  # (never inside the stream's body)
    # The server goes on answering.
    after = _exchange(port, _head(f"/run/{seeded.parent}/", b"Connection: close\r\n\r\n"))
    assert after.startswith(b"HTTP/1.1 200 "), after[:300]
