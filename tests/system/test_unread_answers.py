"""Clients that never read their answers (rpc/unread.py): a gRPC client
that grants the server no flow-control window made grpc keep every answer
it asked for, for as long as its connections lived. Real server, real
clients on loopback; another loopback address (127.0.0.2) is another
client."""

from __future__ import annotations

import http.client
import json
import socket

import grpc
import pytest

from factories import add_run, add_workflow, all_done
from half_open import NonReaders, closed_by_server
from servers import start_server, wait_until
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.store.db import Database
from spur_runs.store.migrate import migrate

GET_RUN = "/spur.runs.v1.RunService/GetRun"
OUTPUT = 2_000_000  # bytes of the run's output: each answer is a little more
PER_ADDRESS = 32 * 1024 * 1024  # --max-unread-bytes-per-address's default
HTTP_OUTPUT = 6_000_000
CALLS = 24  # on one connection that reads nothing: 16 answers fit in PER_ADDRESS


def _big_run(url: str, output: int = OUTPUT) -> str:
    migrate(url)
    db = Database.from_url(url, pool_size=1)
    with db.write() as session:
        run_id = add_run(
            session, add_workflow(session), tasks=all_done(), outputs={"text": "x" * output}
        )
    db.dispose()
    return run_id


def _get_run(port: int, run_id: str) -> pb.GetRunResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return RunServiceStub(channel).GetRun(pb.GetRunRequest(run_id=run_id), timeout=10)


def _refused(port: int, run_id: str, details: list[str]) -> bool:
    try:
        _get_run(port, run_id)
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:  # type: ignore[attr-defined]
            details.append(str(error.details()))  # type: ignore[attr-defined]
            return True
        raise
    return False


def test_a_client_that_reads_nothing_holds_its_share_of_answers_and_no_more(
    sqlite_url: str,
) -> None:
    run_id = _big_run(sqlite_url)
    server = start_server(sqlite_url)  # the default bounds
    request = pb.GetRunRequest(run_id=run_id).SerializeToString()
    jams = [NonReaders(server.port, GET_RUN, request, CALLS)]
    try:
        # This client's own answers are refused once it holds its share.
        details: list[str] = []
        wait_until(lambda: _refused(server.port, run_id, details), "a call refused")
        assert "are not read yet" in details[0], details[0]
        # Refused as it begins, before the database is read: even a call
        # whose answer would be NOT_FOUND.
        with pytest.raises(grpc.RpcError) as early:
            _get_run(server.port, "R999999")
        assert early.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert 15 * OUTPUT < server.unread.held("ipv4:127.0.0.1") <= PER_ADDRESS
        # Another client that reads nothing holds its own share, no more.
        jams.append(NonReaders(server.port, GET_RUN, request, CALLS, source="127.0.0.2"))
        wait_until(lambda: server.unread.held("ipv4:127.0.0.2") > 15 * OUTPUT, "its share held")
        jams.pop(0).close()
        # The first one gone, its answers are let go: it is served again
        # (large answers, again and again) while the other holds its share.
        wait_until(lambda: server.unread.held("ipv4:127.0.0.1") == 0, "its answers released")
        for _ in range(5):
            assert _get_run(server.port, run_id).ByteSize() > OUTPUT
        assert 15 * OUTPUT < server.unread.held("ipv4:127.0.0.2") <= PER_ADDRESS
    finally:
        for jam in jams:
            jam.close()
    try:
        wait_until(lambda: server.unread.total == 0, "every answer released")
    finally:
        server.stop(grace=1)


def test_answers_beyond_the_server_wide_bound_are_refused_saying_why(sqlite_url: str) -> None:
    run_id = _big_run(sqlite_url)
    server = start_server(sqlite_url, max_unread_bytes=5 * OUTPUT)
    request = pb.GetRunRequest(run_id=run_id).SerializeToString()
    jam = NonReaders(server.port, GET_RUN, request, CALLS, source="127.0.0.2")
    try:
        wait_until(lambda: server.unread.refused >= CALLS - 5, "the non-reader's calls refused")
        with pytest.raises(grpc.RpcError) as refused:
            _get_run(server.port, run_id)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "answers its clients have not read" in str(refused.value.details())
    finally:
        jam.close()
        server.stop(grace=1)


class _HttpNonReaders:
    """`count` connections from `source` that each ask for `path` over HTTP
    and read nothing (a small receive buffer: the answer stays with the
    server)."""

    def __init__(self, port: int, path: str, count: int, source: str) -> None:
        self.sockets = []
        for _ in range(count):
            sock = socket.socket()
            sock.settimeout(10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            self.sockets.append(sock)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def _http_get(port: int, path: str, source: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_http_clients_that_read_nothing_hold_their_share_and_no_more(sqlite_url: str) -> None:
    # Larger answers: the kernel takes up to 4 MB of each into the socket's
    # send buffer (tcp_wmem), and the server holds the rest.
    run_id = _big_run(sqlite_url, HTTP_OUTPUT)
    server = start_server(sqlite_url, http_address="127.0.0.1:0")
    assert server.http_port is not None
    path = f"/run/{run_id}"
    jam = _HttpNonReaders(server.http_port, path, 8, source="127.0.0.2")
    try:
        # Their answers are held while they read nothing, up to their share;
        # beyond it this address is refused, saying why.
        wait_until(lambda: server.unread.held("ipv4:127.0.0.2") > 4 * HTTP_OUTPUT, "answers held")
        status, body = _http_get(server.http_port, path, "127.0.0.2")
        assert status == 429, status
        assert "are not read yet" in json.loads(body)["message"]
        assert server.unread.held("ipv4:127.0.0.2") <= PER_ADDRESS
        # Another client is served meanwhile.
        status, body = _http_get(server.http_port, path, "127.0.0.1")
        assert status == 200 and len(body) > HTTP_OUTPUT
    finally:
        jam.close()
    try:
        wait_until(lambda: server.unread.total == 0, "every answer released")
    finally:
        server.stop(grace=1)


def test_an_http_answer_that_does_not_move_has_its_connection_cut(sqlite_url: str) -> None:
    run_id = _big_run(sqlite_url, HTTP_OUTPUT)
    # The idle timeout bounds a stalled answer too (gateway/writes.py).
    server = start_server(sqlite_url, http_address="127.0.0.1:0", http_idle_timeout_seconds=1)
    assert server.http_port is not None
    jam = _HttpNonReaders(server.http_port, f"/run/{run_id}", 2, source="127.0.0.2")
    try:
        wait_until(lambda: server.unread.held("ipv4:127.0.0.2") > HTTP_OUTPUT, "answers held")
        wait_until(lambda: server.unread.total == 0, "the answers let go")
        assert all(closed_by_server(sock) for sock in jam.sockets)
    finally:
        jam.close()
        server.stop(grace=1)
