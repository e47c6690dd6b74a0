"""The HTTP port against clients that do not play fair (issue 16), over real
sockets against real servers:

- a connection that sends nothing, or its headers a byte at a time, is
  closed at the header timeout; an idle keep-alive one at the idle timeout;
- at most --http-max-connections are open: one more evicts the oldest
  connection without a request, or gets 503 when all have one; gRPC and
  HTTP keep answering through a slow-loris, and under a low file limit
  (a subprocess server) nothing floods the log and everything recovers;
- a tokenless server on loopback answers only its own Host names (DNS
  rebinding), unless --http-allowed-hosts says more;
- Grpc-Timeout: 99999999H on the watch route is a stream, not a 504;
- the access log's forwarded_for believes X-Forwarded-For only from
  --trusted-proxies, and never a caller's Grpc-Metadata-X-Forwarded-For.

The health endpoints: test_http_probes.py.

Close times are printed (pytest -s).
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from certs import make_tls_files
from http_client import Http, Seeded, seed_runs, start_http_server
from servers import start_server
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.runtime.server import RunsServer
from spur_runs.store.migrate import migrate

UNAVAILABLE, PERMISSION_DENIED, INVALID_ARGUMENT = 14, 7, 3


@pytest.fixture
def sqlite_db(sqlite_url: str) -> tuple[str, Seeded]:
    migrate(sqlite_url)
    return sqlite_url, seed_runs(sqlite_url)


@pytest.fixture
def short(sqlite_db: tuple[str, Seeded]) -> Iterator[RunsServer]:
    """A server with a 1 s header timeout and a 2 s idle timeout."""
    server = start_http_server(
        sqlite_db[0], http_header_timeout_seconds=1.0, http_idle_timeout_seconds=2.0
    )
    yield server
    server.stop(grace=1)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _closed_within(sock: socket.socket, limit: float, feed: bytes = b"") -> float:
    """Seconds until the server closes `sock` (sending `feed` every 0.2 s
    meanwhile); fails if it is still open after `limit`."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            if feed:
                sock.sendall(feed)
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:  # reset: closed as well
            return time.monotonic() - started
    raise AssertionError(f"the connection was still open after {limit} s")


def _get(sock: socket.socket, path: str, host: str = "127.0.0.1") -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    sock.settimeout(10)
    return sock.recv(65536)


@pytest.mark.exclusive  # closed within 0.8 s of the 1 s timeout
def test_a_silent_connection_is_closed_at_the_header_timeout(short: RunsServer) -> None:
    assert short.http_port
    with _connect(short.http_port) as sock:
        seconds = _closed_within(sock, 5)
    print(f"\nsilent connection closed after {seconds:.3f} s (header timeout 1 s)")
    assert 0.9 <= seconds < 1.8


@pytest.mark.exclusive  # closed within 0.8 s of the 1 s timeout
def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_header_timeout(
    short: RunsServer,
) -> None:
    assert short.http_port
    with _connect(short.http_port) as sock:
        sock.sendall(b"GET /run HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        # One header line every 0.2 s, never the blank line that ends them.
        seconds = _closed_within(sock, 5, feed=b"X-A: b\r\n")
    print(f"\nheaders trickled: closed after {seconds:.3f} s (header timeout 1 s)")
    assert 0.8 <= seconds < 1.8


@pytest.mark.slow
@pytest.mark.exclusive  # 0.6 s of headers within a 1 s timeout
def test_slow_but_timely_headers_are_answered_and_idle_keep_alive_ends(
    short: RunsServer, sqlite_db: tuple[str, Seeded]
) -> None:
    assert short.http_port
    run = sqlite_db[1].parent
    with _connect(short.http_port) as sock:
        for part in (f"GET /run/{run} HTTP/1.1\r\n", "Host: 127.0.0.1\r\n", "\r\n"):
            sock.sendall(part.encode())
            time.sleep(0.3)  # 0.6 s in all: within the 1 s header timeout
        assert _get_reply(sock).startswith(b"HTTP/1.1 200")
        # A second request on the same connection, after the header timeout
        # has passed since the first: a keep-alive connection's clock for
        # headers starts with its next request, not with the connection.
        time.sleep(1.2)
        assert _get(sock, f"/run/{run}").startswith(b"HTTP/1.1 200")
        # Now idle: closed at the idle timeout (2 s), not the header one.
        seconds = _closed_within(sock, 6)
    print(f"\nidle keep-alive connection closed after {seconds:.3f} s (idle timeout 2 s)")
    assert 1.8 <= seconds < 3.0


def _get_reply(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    return sock.recv(65536)


@pytest.mark.slow
@pytest.mark.exclusive  # evicted within 2 s
def test_the_cap_evicts_waiting_connections_and_refuses_when_all_are_busy(
    sqlite_db: tuple[str, Seeded],
) -> None:
    url, seeded = sqlite_db
    server = start_http_server(url, http_max_connections=4)
    assert server.http_port
    port = server.http_port
    try:
        # Four connections that send nothing; the fifth, a second later,
        # evicts the oldest of them and is answered.
        idle = [_connect(port) for _ in range(4)]
        time.sleep(1.1)
        with _connect(port) as fifth:
            assert _get(fifth, "/healthz").startswith(b"HTTP/1.1 200")
        assert _closed_within(idle[0], 2) < 2
        for sock in idle:
            sock.close()
        time.sleep(0.2)
        # Four connections each with a request running (a watch of a RUNNING
        # run): none can be evicted, so the fifth gets 503 at once.
        watches = [_connect(port) for _ in range(4)]
        for sock in watches:
            reply = _get(sock, f"/run/{seeded.children[0]}/watch")
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        with _connect(port) as refused:
            reply = _get_reply(refused)
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503"), reply
            status = json.loads(body)
            assert status["code"] == UNAVAILABLE and "too many" in status["message"]
            assert _closed_within(refused, 3) < 3
        watches.pop().close()
        time.sleep(0.3)
        with _connect(port) as after:
            assert _get(after, "/healthz").startswith(b"HTTP/1.1 200")
        for sock in watches:
            sock.close()
    finally:
        server.stop(grace=1)


@pytest.mark.slow
def test_grpc_and_http_answer_through_a_slow_loris(sqlite_db: tuple[str, Seeded]) -> None:
    url, seeded = sqlite_db
    server = start_http_server(url, http_max_connections=50, http_header_timeout_seconds=2.0)
    assert server.http_port
    port = server.http_port
    stop = threading.Event()
    opened = [0]

    def loris() -> None:
        held: list[socket.socket] = []
        while not stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                sock.sendall(b"GET /run HTTP/1.1\r\n")
                held.append(sock)
                opened[0] += 1
            except OSError:
                pass
            if len(held) > 300:
                held.pop(0).close()
            time.sleep(0.005)
        for sock in held:
            sock.close()

    attacker = threading.Thread(target=loris)
    attacker.start()
    try:
        time.sleep(2.5)
        answered = []
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            for _ in range(5):
                started = time.monotonic()
                assert stub.GetRun(pb.GetRunRequest(run_id=seeded.parent), timeout=5).run.id
                client = Http(port, timeout=5)
                try:
                    assert client.get(f"/run/{seeded.parent}").status == 200
                finally:
                    client.close()
                answered.append(time.monotonic() - started)
                time.sleep(0.2)
        print(
            f"\nduring a slow-loris ({opened[0]} connections opened, cap 50): gRPC + HTTP "
            f"answered in {max(answered) * 1000:.0f} ms at most"
        )
        assert opened[0] > 200
    finally:
        stop.set()
        attacker.join()
        server.stop(grace=1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client = Http(port, timeout=2)
            try:
                if client.get("/healthz").status == 200:
                    return
            finally:
                client.close()
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the server did not start")


@pytest.mark.slow
def test_a_low_file_limit_floods_no_log_and_recovers(
    sqlite_db: tuple[str, Seeded], tmp_path: Path
) -> None:
    """A server limited to 512 files: 1,500 connections, opened as fast as
    one client can and held, neither exhaust its descriptors nor flood its
    log, and gRPC and HTTP answer throughout and after."""
    url, seeded = sqlite_db
    grpc_port, http_port = _free_port(), _free_port()
    log_path = tmp_path / "stderr"

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))

    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "spur_runs", "serve", "--database-url", url,
             "--grpc-address", f"127.0.0.1:{grpc_port}",
             "--http-address", f"127.0.0.1:{http_port}"],
            stdout=subprocess.DEVNULL, stderr=log, preexec_fn=limit_files,
        )  # fmt: skip
    held: list[socket.socket] = []
    try:
        _wait_http(http_port)
        for _ in range(1500):
            held.append(socket.create_connection(("127.0.0.1", http_port), timeout=5))
        time.sleep(0.5)
        files = len(os.listdir(f"/proc/{process.pid}/fd"))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stub = RunServiceStub(channel)
            assert stub.GetRun(pb.GetRunRequest(run_id=seeded.parent), timeout=5).run.id
        time.sleep(1.1)  # (the held connections become evictable)
        client = Http(http_port, timeout=5)
        try:
            assert client.get("/readyz").status == 200  # during
            for sock in held:
                sock.close()
            held.clear()
            time.sleep(0.5)
            assert client.get(f"/run/{seeded.parent}").status == 200  # after
        finally:
            client.close()
        print(f"\n1,500 connections held against a 512-file limit: the server had {files} open")
        assert files < 512
    finally:
        for sock in held:
            sock.close()
        process.terminate()
        process.wait(timeout=30)
    output = log_path.read_text()
    assert "at most 128 open HTTP connections" in output  # (512 - 256) / 2
    assert output.count("Too many open files") <= 3, output[-3000:]
    assert "Traceback" not in output
    assert len(output.splitlines()) < 40, output[-3000:]


@pytest.mark.slow
@pytest.mark.exclusive  # closed within 0.8 s of the 1 s timeout
def test_a_tls_handshake_is_held_to_the_header_timeout_and_the_cap(
    sqlite_db: tuple[str, Seeded], tmp_path: Path
) -> None:
    url, seeded = sqlite_db
    files = make_tls_files(tmp_path)
    server = start_http_server(
        url,
        tls_cert=files.cert,
        tls_key=files.key,
        http_header_timeout_seconds=1.0,
        http_max_connections=3,
    )
    assert server.http_port
    port = server.http_port

    def https_get() -> int:
        context = ssl.create_default_context(cadata=files.ca_pem.decode())
        connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
        try:
            statuses = []
            for _ in range(2):  # (keep-alive: the second on the same connection)
                connection.request("GET", f"/run/{seeded.parent}")
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
            assert statuses[0] == statuses[1]
            return statuses[0]
        finally:
            connection.close()

    try:
        assert https_get() == 200
        with _connect(port) as silent:
            seconds = _closed_within(silent, 5)
        with _connect(port) as partial:
            partial.sendall(b"\x16\x03\x01\x02\x00")  # a ClientHello's record header only
            partial_seconds = _closed_within(partial, 5)
        print(
            f"\nTLS port: silent connection closed after {seconds:.3f} s, half a handshake "
            f"after {partial_seconds:.3f} s (header timeout 1 s)"
        )
        assert 0.9 <= seconds < 1.8 and 0.9 <= partial_seconds < 1.8
        # Connections stuck before their handshake count against the cap and
        # are the first evicted: a real client still gets in.
        stuck = [_connect(port) for _ in range(3)]
        time.sleep(0.2)
        assert https_get() == 200
        assert _closed_within(stuck[0], 2) < 2
        for sock in stuck:
            sock.close()
    finally:
        server.stop(grace=1)


# --- DNS rebinding ---


def _host_status(port: int, host: str) -> int:
    with _connect(port) as sock:
        reply = _get(sock, "/run?page_size=1", host)
    return int(reply.split(b" ", 2)[1])


def test_a_tokenless_loopback_server_answers_only_its_own_names(
    sqlite_db: tuple[str, Seeded],
) -> None:
    server = start_http_server(sqlite_db[0], http_allowed_hosts="runs.internal, 10.1.2.3")
    assert server.http_port
    port = server.http_port
    try:
        for host in (
            "localhost", f"localhost:{port}", "LocalHost", "127.0.0.1", f"127.0.0.1:{port}",
            "[::1]", f"[::1]:{port}", "runs.internal", "runs.internal:8080", "10.1.2.3",
        ):  # fmt: skip
            assert _host_status(port, host) == 200, host
        for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.2"):
            assert _host_status(port, host) == 421, host
        with _connect(port) as sock:
            reply = _get(sock, "/healthz", "rebound.example")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 421") and b"application/json" in head
        status = json.loads(body)
        assert status["code"] == PERMISSION_DENIED and "rebound.example" in status["message"]
    finally:
        server.stop(grace=1)


def test_an_absolute_form_target_is_answered_for_its_own_authority(
    sqlite_db: tuple[str, Seeded],
) -> None:
    """RFC 9112 3.2.2: `GET http://host/path` is served as `GET /path`; its
    authority is checked as a Host, and so is the Host header beside it."""
    server = start_http_server(sqlite_db[0])
    assert server.http_port
    port = server.http_port
    try:
        with _connect(port) as sock:
            origin = _get(sock, "/run/R1/?page_size=1").partition(b"\r\n\r\n")[2]
        for target in (f"http://127.0.0.1:{port}/run/R1/", "HTTP://localhost/run/R1/"):
            with _connect(port) as sock:
                reply = _get(sock, target, host="localhost")
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), (target, head)
            assert json.loads(body)["id"] == json.loads(origin)["id"] == "R1"
        for target, host in (
            ("http://evil.example/run/R1/", "127.0.0.1"),
            ("http://localhost/run/R1/", "evil.example"),
        ):
            with _connect(port) as sock:
                reply = _get(sock, target, host=host)
            assert reply.startswith(b"HTTP/1.1 421"), (target, host, reply[:100])
        with _connect(port) as sock:
            reply = _get(sock, f"http://127.0.0.1:{port}/healthz", host="127.0.0.1")
        assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
    finally:
        server.stop(grace=1)


def test_tokens_or_a_public_address_answer_any_host(
    sqlite_db: tuple[str, Seeded], tmp_path: Path
) -> None:
    tokens = tmp_path / "readers"
    tokens.write_text("r3ader-token\n")
    with_tokens = start_http_server(sqlite_db[0], reader_tokens_file=str(tokens))
    try:
        assert with_tokens.http_port
        assert _host_status(with_tokens.http_port, "evil.example") == 401  # not 421
    finally:
        with_tokens.stop(grace=1)
    public = start_server(sqlite_db[0], http_address="0.0.0.0:0")
    try:
        assert public.http_port
        assert _host_status(public.http_port, "evil.example") == 200
    finally:
        public.stop(grace=1)


# --- Grpc-Timeout on the stream ---


def test_an_enormous_grpc_timeout_on_the_watch_route_is_no_deadline(
    sqlite_db: tuple[str, Seeded],
) -> None:
    url, seeded = sqlite_db
    server = start_http_server(url)
    assert server.http_port
    client = Http(server.http_port)
    try:
        replies = {
            path: client.request("GET", path, {"Grpc-Timeout": "99999999H"})
            for path in (f"/run/{seeded.parent}/watch", f"/run/{seeded.parent}")
        }
        for path, reply in replies.items():
            assert reply.status == 200, (path, reply.body[:300])
            assert seeded.parent.encode() in reply.body
        # The parent has ended: its watch is one message, then the end.
        (line,) = replies[f"/run/{seeded.parent}/watch"].body.splitlines()
        assert "result" in json.loads(line)
    finally:
        client.close()
        server.stop(grace=1)


def test_large_headers_get_the_same_answer_on_every_route(
    sqlite_db: tuple[str, Seeded],
) -> None:
    """A browser's large cookies: the watch route (through gRPC's channel,
    whose server refuses metadata past 8 KiB, at random up to 16 KiB) got
    429s with grpc's own text, where unary routes answered."""
    url, seeded = sqlite_db
    server = start_http_server(url)
    assert server.http_port
    client = Http(server.http_port)
    paths = (f"/run/{seeded.parent}/watch", f"/run/{seeded.parent}/")
    try:
        large = {"Cookie": "session=" + "a" * 8100, "User-Agent": "u" * 2000}
        for _ in range(5):
            for path in paths:
                reply = client.request("GET", path, large)
                assert reply.status == 200, (path, reply.body[:300])
        # Metadata the caller means (Authorization, Grpc-Metadata-*) is not
        # left out: too much of it is a 400 naming the headers, everywhere.
        meant = {f"Grpc-Metadata-Note{i}": "n" * 1000 for i in range(8)}
        for path in paths:
            reply = client.request("GET", path, meant)
            assert reply.status == 400, (path, reply.body[:300])
            assert json.loads(reply.body)["details"][0]["field_violations"][0]["field"] == (
                "headers"
            )
        # The message names every header it counts.
        reply = client.request("GET", paths[1], {"X-Request-Id": "r" * 7500})
        assert reply.status == 400 and "X-Request-Id" in json.loads(reply.body)["message"]
    finally:
        client.close()
        server.stop(grace=1)


# --- forwarded_for in the access log ---


def _serve_json(
    url: str, tmp_path: Path, *flags: str
) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    grpc_port, http_port = _free_port(), _free_port()
    log_path = tmp_path / f"stderr-{http_port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "spur_runs", "serve", "--database-url", url,
             "--grpc-address", f"127.0.0.1:{grpc_port}",
             "--http-address", f"127.0.0.1:{http_port}", "--log-format", "json", *flags],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    _wait_http(http_port)
    return process, grpc_port, http_port, log_path


def _access(log_path: Path) -> dict[str, dict[str, object]]:
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return {line["request_id"]: line for line in lines if line["logger"] == "spur_runs.access"}


@pytest.mark.slow
@pytest.mark.parametrize("trusted", [False, True])
def test_forwarded_for_is_believed_only_from_a_trusted_proxy(
    sqlite_db: tuple[str, Seeded], tmp_path: Path, trusted: bool
) -> None:
    url, seeded = sqlite_db
    flags = ("--trusted-proxies", "10.0.0.0/8, 127.0.0.1") if trusted else ()
    process, grpc_port, port, log_path = _serve_json(url, tmp_path, *flags)
    client = Http(port)
    try:
        forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Host": "forged.example"}
        for request_id, path in (("unary-1", f"/run/{seeded.parent}"),
                                 ("stream-1", f"/run/{seeded.parent}/watch")):  # fmt: skip
            reply = client.request("GET", path, {**forged, "X-Request-Id": request_id})
            assert reply.status == 200
        # The gateway's own keys cannot be set through Grpc-Metadata-*...
        for header in (
            "Grpc-Metadata-X-Forwarded-For",
            "Grpc-Metadata-X-Forwarded-Host",
            "Grpc-Metadata-Spur-Runs-Gateway",
        ):
            reply = client.request("GET", f"/run/{seeded.parent}", {header: "198.51.100.1"})
            assert reply.status == 400
            assert header in reply.error(INVALID_ARGUMENT)["message"]
        # ...and a gRPC caller's x-forwarded-for is its own say, not logged.
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            RunServiceStub(channel).GetRun(
                pb.GetRunRequest(run_id=seeded.parent),
                metadata=(
                    ("x-forwarded-for", "198.51.100.1"),
                    ("spur-runs-gateway", "0" * 32),
                    ("x-request-id", "grpc-1"),
                ),
                timeout=10,
            )
    finally:
        client.close()
        process.terminate()
        assert process.wait(timeout=30) == 0
    access = _access(log_path)
    want = "203.0.113.9, 127.0.0.1" if trusted else "127.0.0.1"
    for request_id in ("unary-1", "stream-1"):
        assert access[request_id]["forwarded_for"] == want, access[request_id]
    assert access["grpc-1"]["code"] == "OK" and "forwarded_for" not in access["grpc-1"]
    assert "198.51.100.1" not in log_path.read_text()


@pytest.mark.slow
def test_a_bad_trust_list_stops_start_up_with_one_line(sqlite_db: tuple[str, Seeded]) -> None:
    for flag, value in (
        ("--trusted-proxies", "10.0.0.0/33"),
        ("--trusted-proxies", "proxy.example"),
        ("--http-allowed-hosts", "bad host"),
        ("--http-max-connections", "0"),
        ("--http-header-timeout-seconds", "inf"),
        ("--http-idle-timeout-seconds", "-1"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "spur_runs", "serve", "--database-url", sqlite_db[0],
             flag, value],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, (flag, value, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and flag in done.stderr, done.stderr
