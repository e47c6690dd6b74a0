"""The access log of the HTTP answers the gateway gives without a gRPC call
(gateway/access.py), from the `spur-runs serve` command's JSON log: a 404,
a 421, a 400, a 405 and an unparsable request each leave one line in the
call lines' format, no more (one per request, as a call's), and neither a
token, a query nor a body."""

from __future__ import annotations

import http.client
import json
import re
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from seeding import seeded
from servers import free_port, serve_command, wait_health

TOKEN = "tok3n-sentinel-8f2a"
QUERY = "query-sentinel-31c"
BODY = "body-sentinel-77d"
HAMMER = 40
LINE = re.compile(
    r"(?P<method>\S+ \S+|-) (?P<code>[A-Z_]+) \d+\.\dms peer=ipv4:127\.0\.0\.1:\d+ "
    r"request_id=(?P<id>\S+) forwarded_for=127\.0\.0\.1 http_status=(?P<status>\d{3})"
    r"(?P<more>.*)"
)


def _get(port: int, path: str, method: str = "GET", **headers: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = BODY.encode() if method == "POST" else None
    connection.request(method, path, body=body, headers={"Host": "localhost", **headers})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_answers_without_a_call_leave_one_access_line_each(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = seeded(url)
    grpc_port, http_port = free_port(), free_port()
    log_file = (tmp_path / "stderr").open("w+")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serve_command(
        ["--database-url", url,
         "--grpc-address", f"127.0.0.1:{grpc_port}", "--http-address", f"127.0.0.1:{http_port}"],
        log_file, {"SPUR_RUNS_LOG_FORMAT": "json"},
    ):  # fmt: skip
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            wait_health(channel, 1)
        answers = {
            "a-404": _get(http_port, "/no/such/path", **auth, **{"X-Request-Id": "a-404"}),
            "a-421": _get(
                http_port, f"/run/{run_id}/", Host="evil.example", **{"X-Request-Id": "a-421"}
            ),
            "a-400": _get(
                http_port, f"/run/?page_size=many&page_token={QUERY}", **{"X-Request-Id": "a-400"}
            ),
            "a-405": _get(http_port, "/openapi.json", "POST", **auth, **{"X-Request-Id": "a-405"}),
            # Reaches gRPC: the call's line stands for it, and no other.
            "a-call": _get(http_port, f"/run/{run_id}/", **auth, **{"X-Request-Id": "a-call"}),
        }
        statuses = {key: answer.status for key, answer in answers.items()}
        assert statuses == {"a-404": 404, "a-421": 421, "a-400": 400, "a-405": 405, "a-call": 200}
        generated = _get(http_port, "/no/such/path").getheader("X-Request-Id")
        malformed = _raw(http_port, b"GET /x HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n")
        assert re.match(rb"HTTP/1\.[01] 400 ", malformed), malformed[:40]
        for _ in range(HAMMER):
            assert _get(http_port, "/hammered").status == 404
    log_file.seek(0)
    output = log_file.read()
    for secret in (TOKEN, QUERY, BODY):
        assert secret not in output
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "spur_runs.access"]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for line in access:
        by_id.setdefault(line["request_id"], []).append(line)

    expected = {
        "a-404": ("GET /no/such/path", "NOT_FOUND", 404),
        "a-421": (f"GET /run/{run_id}/", "PERMISSION_DENIED", 421),
        "a-400": ("GET /run/", "INVALID_ARGUMENT", 400),
        "a-405": ("POST /openapi.json", "UNIMPLEMENTED", 405),
    }
    for request_id, (method, code, status) in expected.items():
        (line,) = by_id[request_id]
        assert (line["method"], line["code"], line["http_status"]) == (method, code, status)
        assert line["level"] == "INFO" and line["forwarded_for"] == "127.0.0.1"
        assert isinstance(line["duration_ms"], float) and line["peer"].startswith("ipv4:127.0.0.1:")
        # The call lines' text, with the HTTP status after it.
        shown = LINE.fullmatch(line["message"])
        assert shown is not None, line["message"]
        assert (shown["method"], shown["code"], shown["id"], shown["status"], shown["more"]) == (
            method, code, request_id, str(status), ""
        )  # fmt: skip
    for key, answer in answers.items():  # the id a line can be found by, as for calls
        assert answer.getheader("X-Request-Id") == key
    assert generated and len(generated) == 32
    (call,) = by_id["a-call"]
    assert call["method"] == "/spur.runs.v1.RunService/GetRun" and "http_status" not in call
    (generated_line,) = by_id[generated]
    assert generated_line["method"] == "GET /no/such/path"

    (unparsable,) = [line for line in access if line["method"] == "-"]
    assert (unparsable["code"], unparsable["http_status"]) == ("INVALID_ARGUMENT", 400)
    assert unparsable["message"].endswith(" http_status=400 error=BadHttpMessage")
    # One line per request, as for calls: no more for a client's 404s.
    methods = Counter(line["method"] for line in access)
    assert methods["GET /hammered"] == HAMMER and methods["GET /no/such/path"] == 2
