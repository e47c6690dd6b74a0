"""A hostile HTTP/2 client on a raw socket: gRPC calls with their headers
and never their request message (rpc/arrival.py), or with header values
that grpc's own clients refuse to send."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable

DATA, HEADERS, RST_STREAM, SETTINGS, PING = 0, 1, 3, 4, 6
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
INITIAL_WINDOW_SIZE = 0x4  # a SETTINGS parameter


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    head = struct.pack(">I", len(payload))[1:] + bytes([kind, flags])
    return head + struct.pack(">I", stream) + payload


def _literal(name: str, value: str | bytes) -> bytes:
    """An HPACK literal header field without indexing, new name (< 127 bytes)."""
    raw_name = name.encode()
    raw_value = value if isinstance(value, bytes) else value.encode()
    return b"\x00" + bytes([len(raw_name)]) + raw_name + bytes([len(raw_value)]) + raw_value


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _message(message: bytes) -> bytes:
    """A gRPC length-prefixed message, not compressed."""
    return b"\x00" + struct.pack(">I", len(message)) + message


class _Reader:
    """The server's frames on `sock`, as (kind, flags, stream); it answers
    pings and settings as a live client does."""

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock
        self._buffer = b""

    def read(self) -> list[tuple[int, int, int]] | None:
        """The frames complete so far: [] when nothing came within the
        socket's timeout, None when the server closed the connection."""
        try:
            data = self._socket.recv(65536)
        except TimeoutError:
            return []
        if not data:
            return None
        self._buffer += data
        frames = []
        while len(self._buffer) >= 9 + int.from_bytes(self._buffer[:3], "big"):
            length, kind, flags = int.from_bytes(self._buffer[:3], "big"), *self._buffer[3:5]
            stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            payload = self._buffer[9 : 9 + length]
            self._buffer = self._buffer[9 + length :]
            if kind == PING and not flags & ACK:
                self._socket.sendall(_frame(PING, ACK, 0, payload))
            elif kind == SETTINGS and not flags & ACK:
                self._socket.sendall(_frame(SETTINGS, ACK, 0))
            frames.append((kind, flags, stream))
        return frames


def _call_headers(method: str, *more: tuple[str, str | bytes]) -> bytes:
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *more,
    ]
    return b"".join(_literal(name, value) for name, value in fields)


def raw_call(port: int, method: str, message: bytes, *headers: tuple[str, bytes]) -> bool:
    """One whole call with these extra headers: whether the server ended it
    with its trailers (HEADERS with END_STREAM) within 5 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            PREFACE
            + _frame(SETTINGS, 0, 0)
            + _frame(HEADERS, END_HEADERS, 1, _call_headers(method, *headers))
            + _frame(DATA, END_STREAM, 1, _message(message))
        )
        reader = _Reader(sock)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            frames = reader.read()
            if frames is None:
                return False
            for kind, flags, stream in frames:
                if stream == 1 and kind == HEADERS and flags & END_STREAM:
                    return True
                if stream == 1 and kind == RST_STREAM:
                    return False
        return False


def idle_connections(port: int, count: int) -> list[socket.socket]:
    """`count` connections that send HTTP/2's preface and nothing more."""
    opened = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=1)
        sock.sendall(PREFACE + _frame(SETTINGS, 0, 0))
        opened.append(sock)
    return opened


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (reading what it sent first)."""
    try:
        while data := sock.recv(65536):
            del data
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


class NonReaders:
    """`count` calls of `method` with `message` on one connection that gives
    the server no flow-control window (SETTINGS_INITIAL_WINDOW_SIZE 0): the
    server's answers never leave. It answers pings and settings meanwhile,
    on a thread of its own, as a live client does."""

    def __init__(
        self, port: int, method: str, message: bytes, count: int, source: str = "127.0.0.1"
    ) -> None:
        # `source`: another loopback address (127.0.0.2) is another client.
        self._socket = socket.create_connection(
            ("127.0.0.1", port), timeout=0.5, source_address=(source, 0)
        )
        streams = [1 + 2 * i for i in range(count)]
        self._socket.sendall(
            PREFACE
            + _frame(SETTINGS, 0, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 0))
            + b"".join(
                _frame(HEADERS, END_HEADERS, s, _call_headers(method))
                + _frame(DATA, END_STREAM, s, _message(message))
                for s in streams
            )
        )
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._answer, daemon=True)
        self._thread.start()

    def _answer(self) -> None:
        reader = _Reader(self._socket)
        while not self._closed.is_set():
            try:
                if reader.read() is None:
                    return
            except OSError:  # closed by close()
                return

    def close(self) -> None:
        self._closed.set()
        self._socket.close()
        self._thread.join(timeout=5)


class HalfOpenCalls:
    """`count` calls of `method` on one connection, headers only."""

    def __init__(self, port: int, method: str, count: int) -> None:
        block = _call_headers(method)
        self.streams = [1 + 2 * i for i in range(count)]
        self._socket = socket.create_connection(("127.0.0.1", port), timeout=1)
        self._socket.sendall(
            PREFACE
            + _frame(SETTINGS, 0, 0)
            + b"".join(_frame(HEADERS, END_HEADERS, s, block) for s in self.streams)
        )
        self._reader = _Reader(self._socket)

    def reset_streams(self, seconds: float) -> set[int]:
        """The streams the server resets within `seconds`, answering its
        pings and settings meanwhile as a live client does."""
        return self._ended(seconds, lambda kind, flags: kind == RST_STREAM)

    def answered_streams(self, seconds: float) -> set[int]:
        """The streams the server ends with its trailers within `seconds`."""
        return self._ended(seconds, lambda kind, flags: kind == HEADERS and flags & END_STREAM > 0)

    def _ended(self, seconds: float, ends: Callable[[int, int], bool]) -> set[int]:
        ended: set[int] = set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and ended != set(self.streams):
            frames = self._reader.read()
            if frames is None:
                break
            ended.update(stream for kind, flags, stream in frames if ends(kind, flags))
        return ended

    def close(self) -> None:
        self._socket.close()


CONTINUATION = 9


class HeaderFlood:
    """One call whose header block never ends: HEADERS without END_HEADERS,
    then CONTINUATION frames as fast as the socket takes them, on a thread
    of its own, until stop() or the server closes the connection."""

    def __init__(self, port: int, method: str) -> None:
        self._socket = socket.create_connection(("127.0.0.1", port), timeout=1)
        self._socket.sendall(PREFACE + _frame(SETTINGS, 0, 0))
        self._socket.sendall(_frame(HEADERS, 0, 1, _call_headers(method)))
        self._stop = threading.Event()
        self.sent = 0
        self._thread = threading.Thread(target=self._flood, daemon=True)
        self._thread.start()

    def _flood(self) -> None:
        block = _frame(
            CONTINUATION, 0, 1, b"".join(_literal(f"x-a{i}", "v" * 50) for i in range(200))
        )
        while not self._stop.is_set():
            try:
                self._socket.sendall(block)
            except TimeoutError:
                continue
            except OSError:  # closed by the server
                return
            self.sent += len(block)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()


class ResendingCalls:
    """Connections of `count` headers-only calls of `method` each, a new
    one sent as soon as the server ends one (reset or answered), on threads
    of their own until stop(): the attacker arrival.py's cancels do not
    discourage."""

    def __init__(self, port: int, method: str, connections: int, count: int = 100) -> None:
        self._block = _call_headers(method)
        self._port, self._count = port, count
        self._stop = threading.Event()
        self.sent = 0
        self._threads = [
            threading.Thread(target=self._attack, daemon=True) for _ in range(connections)
        ]
        for thread in self._threads:
            thread.start()

    def _attack(self) -> None:
        while not self._stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", self._port), timeout=0.2)
            except OSError:
                time.sleep(0.05)
                continue
            with sock:
                next_stream = 1

                def calls(count: int) -> bytes:
                    nonlocal next_stream
                    streams = range(next_stream, next_stream + 2 * count, 2)
                    next_stream += 2 * count
                    self.sent += count
                    return b"".join(_frame(HEADERS, END_HEADERS, s, self._block) for s in streams)

                try:
                    sock.sendall(PREFACE + _frame(SETTINGS, 0, 0) + calls(self._count))
                    reader = _Reader(sock)
                    while not self._stop.is_set():
                        frames = reader.read()
                        if frames is None:
                            break
                        ended = sum(
                            1
                            for kind, flags, _ in frames
                            if kind == RST_STREAM or (kind == HEADERS and flags & END_STREAM)
                        )
                        if ended:
                            sock.sendall(calls(ended))
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)


WINDOW_UPDATE = 8


class SharedConnection:
    """One connection carrying several clients' streams, as an L7 proxy's
    does: stream 1 (`message`) is read (its window granted); `count` more
    (`jam`) are never given a window. It answers pings and settings. The
    jam is opened once stream 1 has its first message: a message still
    waiting for a sender when the jam is found is one of a stream of that
    connection that may read nothing (api/senders.py), and its stream goes
    with the jam (under load, 1 run in ~20 opened both at once)."""

    def __init__(self, port: int, method: str, message: bytes, jam: bytes, count: int) -> None:
        self.jammed = [3 + 2 * i for i in range(count)]

        def call(stream: int, body: bytes) -> bytes:
            return _frame(HEADERS, END_HEADERS, stream, _call_headers(method)) + _frame(
                DATA, END_STREAM, stream, _message(body)
            )

        self._socket = socket.create_connection(("127.0.0.1", port), timeout=0.2)
        self._socket.sendall(
            PREFACE
            + _frame(SETTINGS, 0, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 0))
            + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 30))  # the connection's
            + call(1, message)
            + _frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1 << 30))  # stream 1's alone
        )
        self._reader = _Reader(self._socket)
        self.read_by_1 = False  # stream 1 got a message
        deadline = time.monotonic() + 10
        while not self.read_by_1 and time.monotonic() < deadline:
            frames = self._reader.read()
            if frames is None:
                break
            self.read_by_1 = any(kind == DATA and stream == 1 for kind, _, stream in frames)
        if not self.read_by_1:
            self._socket.close()
            raise AssertionError("stream 1 got no first message")
        self._socket.sendall(b"".join(call(s, jam) for s in self.jammed))

    def ended_within(self, seconds: float) -> set[int]:
        """The streams that ended (reset, or answered in full) within `seconds`."""
        ended: set[int] = set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            frames = self._reader.read()
            if frames is None:
                break
            for kind, flags, stream in frames:
                self.read_by_1 |= kind == DATA and stream == 1
                if kind == RST_STREAM or (kind == HEADERS and flags & END_STREAM):
                    ended.add(stream)
        return ended

    def close(self) -> None:
        self._socket.close()
