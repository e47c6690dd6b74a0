"""The gRPC server's runs are bytes written in C, with their workflow
versions' cached bytes (api/_wire_src/, api/spliced.py, rpc/encode.py): what a
client parses is the very message the servicer builds without splicing, on
both databases, in both views; the gateway renders the same JSON."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update

from factories import add_run, add_workflow, all_done
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.api.service import RunService
from spur_runs.api.spliced import Spliced
from spur_runs.gateway.render import Renderer
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database
from spur_runs.store.models import Task

T0 = datetime(2026, 11, 2, 9, 0, 0)
FULL, BASIC = run_pb2.RUN_VIEW_FULL, run_pb2.RUN_VIEW_BASIC


def _seed(db: Database) -> str:
    """A parent with three children, of two versions."""
    with db.write() as s:
        first, second = add_workflow(s, "one"), add_workflow(s, "two")
        # Ended runs: a running run's duration changes between two answers.
        ended = timedelta(hours=1)
        parent = add_run(s, first, start_time=T0, end_time=T0 + ended, tasks=all_done())
        for n, workflow in enumerate([first, second, first]):
            add_run(
                s,
                workflow,
                parent_run_id=parent,
                start_time=T0 + timedelta(minutes=n + 1),
                end_time=T0 + ended,
                tasks=all_done()[: n + 1],
            )
    return parent


def _calls(parent: str, view: Any) -> list[tuple[str, Any, type[Any]]]:
    return [
        ("GetRun", pb.GetRunRequest(run_id=parent, view=view), pb.GetRunResponse),
        ("ListRuns", pb.ListRunsRequest(page_size=3, view=view), pb.ListRunsResponse),
        (
            "GetChildRuns",
            pb.GetChildRunsRequest(run_id=parent, page_size=2, view=view),
            pb.GetChildRunsResponse,
        ),
    ]


def test_a_spliced_answer_is_the_plain_one(db: Database) -> None:
    parent = _seed(db)
    plain, spliced = RunService(db), RunService(db, splice=True)
    for view in (FULL, BASIC):
        for method, request, kind in _calls(parent, view):
            expected = getattr(plain, method)(request, None)
            answer = getattr(spliced, method)(request, None)
            assert type(answer) is Spliced, method
            assert kind.FromString(answer.SerializeToString()) == expected, method
            assert answer.materialize() == expected, method
            assert all(r.HasField("workflow_version") for r in _runs(expected)), method


def test_the_server_answers_the_plain_message(
    db: Database, server: RunsServer, stub: RunServiceStub
) -> None:
    """The server's servicer splices (so its answers went through
    rpc/encode.py: the generated serializers take messages only)."""
    parent = _seed(db)
    plain = RunService(db)
    for method, request, _kind in _calls(parent, FULL):
        assert type(getattr(server.runs, method)(request, None)) is Spliced, method
        assert getattr(stub, method)(request) == getattr(plain, method)(request, None), method


def _runs(message: Any) -> list[run_pb2.Run]:
    return list(message.runs) if hasattr(message, "runs") else [message.run]


def test_the_gateway_renders_a_spliced_answer_as_the_whole_message(db: Database) -> None:
    """Each body the gateway's routes make of these answers (the whole
    message, or its run or runs as PySpur's paths answer): the same JSON,
    keys in the same order (a Struct's keys come in its map's order, which
    differs between two copies of one message), the second time too (the
    version's JSON then comes from its cache)."""
    parent = _seed(db)
    plain, spliced = RunService(db), RunService(db, splice=True)
    renderer = Renderer()
    for method, request, kind in _calls(parent, FULL):
        field = "run" if method == "GetRun" else "runs"
        for body in ("", field):
            render = renderer.response(kind.DESCRIPTOR, body)
            expected = render(getattr(plain, method)(request, None))
            for _ in range(2):
                answer = getattr(spliced, method)(request, None)
                assert type(answer) is Spliced
                got = json.loads(render(answer))
                assert got == json.loads(expected), (method, body)
                assert _keys(got) == _keys(json.loads(expected)), (method, body)
                assert b'"workflow_version":{"id":"SV' in expected


def _keys(body: Any) -> list[list[str]]:
    """The keys of each run object of a body, in order."""
    if isinstance(body, list):
        return [list(run) for run in body]
    if "runs" in body:
        return [list(run) for run in body["runs"]]
    return [list(body["run"] if "run" in body else body)]


def test_tasks_deeper_than_protobufs_parser_still_render(db: Database) -> None:
    """The gateway parses a spliced run into its message; a task document
    deeper than upb's parser goes (~33 nested objects) is built as a message
    instead, as the plain servicer builds it, and renders the same."""
    deep: Any = {"leaf": True}
    for _ in range(60):
        deep = {"a": deep}
    with db.write() as s:
        run_id = add_run(s, add_workflow(s, "deep"), end_time=T0, tasks=all_done())
        s.execute(update(Task).where(Task.run_id == run_id).values(outputs=deep))
    plain, spliced = RunService(db), RunService(db, splice=True)
    request = pb.GetRunRequest(run_id=run_id)
    render = Renderer().response(pb.GetRunResponse.DESCRIPTOR, "run")
    answer = spliced.GetRun(request, None)
    assert type(answer) is Spliced and answer.runs[0].version is not None
    body = json.loads(render(answer))
    assert body == json.loads(render(plain.GetRun(request, None)))
    assert body["tasks"][0]["outputs"] == deep
