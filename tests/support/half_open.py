"""A hostile HTTP/2 client on a raw socket: it opens gRPC calls with their
headers and never sends their request message (rpc/arrival.py)."""

from __future__ import annotations

import socket
import struct
import time

HEADERS, RST_STREAM, SETTINGS, PING = 1, 3, 4, 6
END_HEADERS, ACK = 0x4, 0x1


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    head = struct.pack(">I", len(payload))[1:] + bytes([kind, flags])
    return head + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """An HPACK literal header field without indexing, new name."""
    raw_name, raw_value = name.encode(), value.encode()
    return b"\x00" + bytes([len(raw_name)]) + raw_name + bytes([len(raw_value)]) + raw_value


class HalfOpenCalls:
    """`count` calls of `method` on one connection, headers only."""

    def __init__(self, port: int, method: str, count: int) -> None:
        block = b"".join(
            _literal(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )
        self.streams = [1 + 2 * i for i in range(count)]
        self._socket = socket.create_connection(("127.0.0.1", port), timeout=1)
        self._socket.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + _frame(SETTINGS, 0, 0)
            + b"".join(_frame(HEADERS, END_HEADERS, s, block) for s in self.streams)
        )
        self._buffer = b""

    def reset_streams(self, seconds: float) -> set[int]:
        """The streams the server resets within `seconds`, answering its
        pings and settings meanwhile as a live client does."""
        reset: set[int] = set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and reset != set(self.streams):
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            self._buffer += data
            while len(self._buffer) >= 9:
                length = int.from_bytes(self._buffer[:3], "big")
                if len(self._buffer) < 9 + length:
                    break
                kind, flags = self._buffer[3], self._buffer[4]
                stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
                payload = self._buffer[9 : 9 + length]
                self._buffer = self._buffer[9 + length :]
                if kind == PING and not flags & ACK:
                    self._socket.sendall(_frame(PING, ACK, 0, payload))
                elif kind == SETTINGS and not flags & ACK:
                    self._socket.sendall(_frame(SETTINGS, ACK, 0))
                elif kind == RST_STREAM:
                    reset.add(stream)
        return reset

    def close(self) -> None:
        self._socket.close()
