"""A small client and helpers for the HTTP gateway tests: real HTTP over the
socket with the standard library's http.client, so that nothing of the
server's own HTTP stack stands in for the client; a server with HTTP on a
loopback port (port 0); seeded runs. The fixtures are in http_fixtures.py."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from factories import add_run, add_workflow, all_done
from servers import start_server
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database
from spur_runs.store.models import RunStatus


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("Content-Type") == "application/json", self.headers
        return json.loads(self.body)

    def error(self, code: int) -> dict[str, Any]:
        """The google.rpc.Status body, checked to carry `code` and no traceback."""
        document = self.json()
        assert set(document) == {"code", "message", "details"}, document
        assert document["code"] == code, document
        assert "Traceback" not in document["message"] and 'File "' not in document["message"]
        return dict(document)


class Http:
    """One keep-alive connection to the gateway."""

    def __init__(self, port: int, timeout: float = 30) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        self.connection.request(method, path, body=body, headers=headers or {})
        response = self.connection.getresponse()
        return Reply(response.status, response.headers, response.read())

    def get(self, path: str, **headers: str) -> Reply:
        return self.request("GET", path, headers)

    def close(self) -> None:
        self.connection.close()


# Runs that have ended have a fixed duration (those that have not, a growing one).
ENDED = datetime(2026, 11, 2, 9, 5, 0)
RUNNING = RunStatus.RUNNING


@dataclass
class Seeded:
    """The runs of `seeded`: a parent with six tasks and two children, and
    twelve more top-level runs (fifteen in all)."""

    parent: str
    children: list[str]
    others: list[str]


def seed_runs(url: str) -> Seeded:
    db = Database.from_url(url, pool_size=1)
    try:
        with db.write() as s:
            workflow = add_workflow(s)
            parent = add_run(
                s,
                workflow,
                end_time=ENDED,
                tasks=all_done(),
                initial_inputs={"input_node": {"question": "héllo", "n": 3}},
                outputs={"output": {"answer": 42, "ratio": 0.5, "list": [1, "a", None, True]}},
            )
            children = [
                add_run(s, workflow, parent_run_id=parent, status=RUNNING, start_time=None)
                for _ in range(2)
            ]
            others = [add_run(s, workflow, end_time=ENDED) for _ in range(12)]
    finally:
        db.dispose()
    return Seeded(parent, children, others)


def start_http_server(url: str, **config: object) -> RunsServer:
    server = start_server(url, http_address="127.0.0.1:0", **config)
    assert server.http_port
    return server
