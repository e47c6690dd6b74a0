"""A TCP forwarder to PostgreSQL that counts its round trips.

Each Sync (extended protocol) or Query (simple protocol) that a client sends
is answered by one ReadyForQuery message, after which the client waits for
nothing more: counting ReadyForQuery in the server's bytes counts the round
trips a piece of code made. The server's stream is read as typed messages
(a type byte, a 4-byte length) from its first byte, so clients must connect
with `sslmode=disable&gssencmode=disable` (else the first answer is the one
byte that declines SSL or GSS encryption)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import make_url


class RoundTripCounter:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._ready = 0
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def round_trips(self) -> int:
        with self._lock:
            return self._ready

    def url_for(self, url: str) -> str:
        """`url` (a PostgreSQL one) through this forwarder."""
        parsed = make_url(url).set(host="127.0.0.1", port=self.port)
        parsed = parsed.update_query_dict({"sslmode": "disable", "gssencmode": "disable"})
        return parsed.render_as_string(hide_password=False)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()
            threading.Thread(target=self._count, args=(server, client), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            _end(target)

    def _count(self, server: socket.socket, client: socket.socket) -> None:
        buffer = b""
        try:
            while data := server.recv(65536):
                buffer += data
                while len(buffer) >= 5:
                    kind, length = buffer[:1], struct.unpack("!I", buffer[1:5])[0]
                    if len(buffer) < 1 + length:
                        break
                    if kind == b"Z":
                        with self._lock:
                            self._ready += 1
                    buffer = buffer[1 + length :]
                client.sendall(data)
        except OSError:
            pass
        finally:
            _end(client)


def _end(sock: socket.socket) -> None:
    """Close `sock` so that its peer sees the end at once: shutdown first
    (close alone leaves it open while another thread waits in recv on it)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@contextmanager
def counting_round_trips(url: str) -> Iterator[RoundTripCounter]:
    """A RoundTripCounter in front of the PostgreSQL server of `url`."""
    parsed = make_url(url)
    counter = RoundTripCounter((parsed.host or "127.0.0.1", parsed.port or 5432))
    try:
        yield counter
    finally:
        counter.close()
