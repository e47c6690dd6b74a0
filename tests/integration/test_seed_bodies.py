"""The seed's HTTP API, body for body, beside PySpur's own router.

One database written by PySpur 0.1.18's own ORM classes is served twice:
by PySpur's Runs router (FastAPI, as PySpur serves it) and by spur-runs. Every
Get Run and List Runs body must be equal value for value (times as the same
text: PySpur's UI appends a "Z" to them; float fields as floats), and every body of every seed
endpoint must be accepted by PySpur's own pydantic RunResponseSchema and
TaskResponseSchema. On SQLite and PostgreSQL. The rows include odd but
legal ones (pyspur_peer._odd_runs: every status, unicode, 1e308 and 5e-324,
an offset time, an end before the start, a three-level chain).
"""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from http_client import Http
from pyspur_peer import pyspur_schema, serve_pyspur_router, write_world
from servers import start_server
from spur_runs.runtime.server import RunsServer

pytest.importorskip("pyspur.models.base_model")
pytest.importorskip("fastapi")

# Fields whose value changes with the clock: a running run's duration.
_CLOCK_SLACK_SECONDS = 30.0
_TIMES = frozenset(("start_time", "end_time", "created_at", "updated_at"))


@pytest.fixture
def world(database_url: str) -> dict[str, Any]:
    pyspur_schema(database_url)
    return write_world(database_url)


@pytest.fixture
def pyspur(database_url: str, world: dict[str, Any]) -> Iterator[Http]:
    with serve_pyspur_router(database_url) as port:
        client = Http(port)
        yield client
        client.close()


@pytest.fixture
def ours(database_url: str, world: dict[str, Any]) -> Iterator[Http]:
    server = start_server(database_url, http_address="127.0.0.1:0")
    assert server.http_port is not None
    client = Http(server.http_port)
    yield client
    client.close()
    server.stop(grace=1)


def instant(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def assert_same(theirs: Any, mine: Any, where: str = "$") -> None:
    """Every value PySpur's body holds, ours holds equally. Keys PySpur's
    schemas lack (node_type, task_count, ...) are the seed's or ours."""
    if isinstance(theirs, dict):
        assert isinstance(mine, dict), where
        missing = set(theirs) - set(mine)
        assert not missing, (where, missing)
        for key, value in theirs.items():
            path = f"{where}.{key}"
            if key in _TIMES and isinstance(value, str):
                # The same text, not only the same instant: PySpur's UI
                # reads `Date.parse(start_time + "Z")`.
                assert mine[key] == value, (path, value, mine[key])
                assert instant(value) == instant(mine[key]), path
            elif key == "duration" and value is not None:
                assert type(mine[key]) is float, (path, mine[key])
                assert math.isclose(value, mine[key], abs_tol=_CLOCK_SLACK_SECONDS), path
            else:
                assert_same(value, mine[key], path)
    elif isinstance(theirs, list):
        assert isinstance(mine, list) and len(mine) == len(theirs), where
        for n, (a, b) in enumerate(zip(theirs, mine, strict=True)):
            assert_same(a, b, f"{where}[{n}]")
    elif isinstance(theirs, float) and where.endswith(".percentage_complete"):
        assert type(mine) is float and math.isclose(theirs, mine), (where, mine)
    elif isinstance(theirs, float) or isinstance(mine, float):
        assert math.isclose(theirs, mine), where
    else:
        assert theirs == mine and type(theirs) is type(mine), (where, theirs, mine)


def body(client: Http, path: str) -> Any:
    reply = client.get(path)
    assert reply.status == 200, (path, reply.body[:300])
    return reply.json()


def validate_run(document: Any) -> None:
    from pyspur.schemas.run_schemas import RunResponseSchema

    RunResponseSchema.model_validate(document)


def validate_task(document: Any) -> None:
    from pyspur.schemas.task_schemas import TaskResponseSchema

    TaskResponseSchema.model_validate(document)


def all_run_ids(world: dict[str, Any]) -> list[str]:
    return [
        world["batch"],
        *world["children"],
        world["failed"],
        world["running"],
        world["canceled"],
        *world["odd"],
    ]


LISTINGS = [
    "/run/",
    "/run/?page=1&page_size=10",
    "/run/?page=2&page_size=2",
    "/run/?page_size=100&parent_only=false",
    "/run/?page=2&page_size=2&parent_only=false",
    "/run/?page_size=100&parent_only=true&run_type=batch",
    "/run/?page=1&page_size=10&parent_only=false&run_type=interactive",
    "/run/?page=9&page_size=100",  # past the end: []
    "/run/?page_size=100&parent_only=false&run_type=%C3%BCn%C3%AFc%C3%B8d%C3%A9%20%F0%9F%9A%80",
    "/run/?page_size=100&run_type=",  # (no filter, for both)
]


@pytest.mark.slow
def test_get_run_bodies_equal_pyspurs(world: dict[str, Any], pyspur: Http, ours: Http) -> None:
    for run_id in all_run_ids(world):
        theirs = body(pyspur, f"/run/{run_id}/")
        mine = body(ours, f"/run/{run_id}/")
        assert_same(theirs, mine, run_id)
        validate_run(mine)
        for task in mine["tasks"]:
            validate_task(task)
    # What the rows hold, as PySpur shows it too: {} stays {}, null stays
    # null, [] stays [].
    batch = body(ours, f"/run/{world['batch']}/")
    assert batch["initial_inputs"] == {} and batch["status"] == "PAUSED"
    inputs = [t["inputs"] for t in batch["tasks"]]
    assert inputs == [{}, [], None, {"a": {}, "b": []}, None]
    assert [t["outputs"] for t in batch["tasks"]][:3] == [{"q": 1}, {}, None]
    failed = body(ours, f"/run/{world['failed']}/")
    assert failed["initial_inputs"] is None and failed["outputs"] is None
    assert [t["status"] for t in failed["tasks"]] == ["COMPLETED", "FAILED"]
    assert failed["tasks"][1]["error"] == "rate limited: 429"
    assert body(ours, f"/run/{world['children'][0]}/")["outputs"] == {}


@pytest.mark.slow
def test_list_runs_bodies_equal_pyspurs(world: dict[str, Any], pyspur: Http, ours: Http) -> None:
    for path in LISTINGS:
        theirs, mine = body(pyspur, path), body(ours, path)
        assert isinstance(mine, list), path
        assert [r["id"] for r in mine] == [r["id"] for r in theirs], path
        assert_same(theirs, mine, path)
        for run in mine:
            validate_run(run)


@pytest.mark.slow
def test_status_path_answers_the_run_and_never_writes(
    world: dict[str, Any], pyspur: Http, ours: Http
) -> None:
    run_id = world["failed"]
    mine = body(ours, f"/run/{run_id}/status/")
    assert mine == body(ours, f"/run/{run_id}/")
    assert_same(body(pyspur, f"/run/{run_id}/status/"), mine)
    validate_run(mine)


def _runs_with_task_statuses(url: str, shapes: dict[str, tuple[str, list[str]]]) -> dict[str, str]:
    """A run per shape (its status, its tasks' statuses), of the world's
    workflow version, written by PySpur's own classes; ids by shape name."""
    from pyspur.models.run_model import RunModel, RunStatus
    from pyspur.models.task_model import TaskModel, TaskStatus
    from pyspur.models.workflow_version_model import WorkflowVersionModel
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from spur_runs.store.engine import normalize_url

    engine = create_engine(normalize_url(url))
    ids = {}
    with Session(engine) as session:
        version = session.query(WorkflowVersionModel).one()
        for name, (status, tasks) in shapes.items():
            run = RunModel(
                workflow_id=version.workflow_id,
                workflow_version_id=version.id,
                status=RunStatus[status],
                run_type="interactive",
                start_time=datetime(2026, 11, 21, 9, 0),
            )
            session.add(run)
            session.flush()
            for node, task_status in zip(("input_node", "llm", "router"), tasks, strict=False):
                session.add(TaskModel(run_id=run.id, node_id=node, status=TaskStatus[task_status]))
            ids[name] = run.id
        session.commit()
    engine.dispose()
    return ids


# PySpur's status poll (get_run_status) marks a run FAILED when a task
# failed and none is PENDING or RUNNING, whatever the run's status.
POLL_SHAPES = {
    "stuck": ("RUNNING", ["COMPLETED", "FAILED"]),  # -> FAILED
    "completed_with_a_failure": ("COMPLETED", ["FAILED", "COMPLETED"]),  # -> FAILED
    "paused_with_a_failure": ("PAUSED", ["FAILED", "PAUSED"]),  # -> FAILED
    "still_running": ("RUNNING", ["FAILED", "RUNNING"]),
    "still_pending": ("RUNNING", ["FAILED", "COMPLETED", "PENDING"]),
    "no_failure": ("RUNNING", ["COMPLETED", "COMPLETED"]),
    "no_tasks": ("PENDING", []),
}


@pytest.mark.slow
def test_status_poll_reports_what_pyspurs_reports_without_writing(
    database_url: str, world: dict[str, Any], pyspur: Http, ours: Http
) -> None:
    """PySpur's UI polls /status/ until COMPLETED or FAILED: a run whose
    executor stopped before marking it FAILED must end the poll with ours as
    with PySpur's, which also stores FAILED; ours stores nothing."""
    ids = _runs_with_task_statuses(database_url, POLL_SHAPES)
    for name, run_id in ids.items():
        stored = POLL_SHAPES[name][0]
        mine = body(ours, f"/run/{run_id}/status/")
        # Ours wrote nothing: GetRun still says what is stored.
        assert body(ours, f"/run/{run_id}/")["status"] == stored, name
        theirs = body(pyspur, f"/run/{run_id}/status/")  # PySpur writes here
        assert mine["status"] == theirs["status"], (name, mine["status"], theirs["status"])
        assert_same(theirs, mine, name)
        validate_run(mine)
    assert [body(ours, f"/run/{ids[n]}/status/")["status"] for n in POLL_SHAPES] == [
        "FAILED", "FAILED", "FAILED", "RUNNING", "RUNNING", "RUNNING", "PENDING"
    ]  # fmt: skip


@pytest.mark.slow
def test_tasks_and_children_are_bare_lists_pyspurs_schemas_accept(
    world: dict[str, Any], pyspur: Http, ours: Http
) -> None:
    for run_id in all_run_ids(world):
        tasks = body(ours, f"/run/{run_id}/tasks/")
        assert isinstance(tasks, list)
        for task in tasks:
            validate_task(task)
        # The same tasks PySpur's Get Run holds.
        assert_same(body(pyspur, f"/run/{run_id}/")["tasks"], tasks, run_id)
    children = body(ours, f"/run/{world['batch']}/children/")
    assert sorted(r["id"] for r in children) == sorted(world["children"])
    for run in children:
        validate_run(run)
        assert_same(body(pyspur, f"/run/{run['id']}/"), run)
    assert body(ours, f"/run/{world['failed']}/children/") == []


@pytest.mark.slow
def test_delete_is_204_with_no_body(world: dict[str, Any], ours: Http) -> None:
    reply = ours.request("DELETE", f"/run/{world['canceled']}/")
    assert (reply.status, reply.body) == (204, b"")
    assert ours.get(f"/run/{world['canceled']}/").status == 404


@pytest.mark.slow
@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page_size=0", "page_size"),
        ("page_size=101", "page_size"),
        ("page_size=-5", "page_size"),
    ],
)
def test_out_of_bounds_paging_is_400_naming_the_parameter(
    ours: Http, pyspur: Http, query: str, parameter: str
) -> None:
    assert pyspur.get(f"/run/?{query}").status == 422  # PySpur refuses them too
    reply = ours.get(f"/run/?{query}")
    assert reply.status == 400
    (detail,) = reply.error(3)["details"]
    assert detail["field_violations"][0]["field"] == parameter


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        connection.close()


@pytest.fixture
def under_api(database_url: str, world: dict[str, Any]) -> Iterator[RunsServer]:
    server = start_server(database_url, http_address="127.0.0.1:0", http_path_prefix="/api")
    yield server
    server.stop(grace=1)


@pytest.mark.slow
def test_pyspur_ui_calls_work_under_the_api_prefix(
    world: dict[str, Any], under_api: RunsServer
) -> None:
    port = under_api.http_port
    assert port is not None
    # The run page polls this until the run is no longer RUNNING.
    status, _, raw = _get(port, f"/api/run/{world['running']}/status/")
    polled = json.loads(raw)
    assert status == 200 and polled["status"] == "RUNNING"
    assert isinstance(polled["tasks"], list) and polled["percentage_complete"] == 0
    assert [t["status"] for t in polled["tasks"]] == ["RUNNING"]
    status, _, raw = _get(port, f"/api/run/{world['batch']}/status/")
    assert json.loads(raw)["percentage_complete"] == 60
    # The batch table: its exact query, mapped as a list.
    status, _, raw = _get(port, "/api/run/?page=1&page_size=10&parent_only=true&run_type=batch")
    table = json.loads(raw)
    assert status == 200
    assert [r["id"] for r in table] == [world["canceled"], world["batch"]]
    # Everything moved under the prefix; nothing answers outside it.
    assert _get(port, f"/run/{world['batch']}/")[0] == 404
    # An escaped unreserved character is the character, in the prefix too.
    assert _get(port, f"/%61pi/run/{world['batch']}/")[0] == 200
    status, _, raw = _get(port, "/api/openapi.json")
    assert status == 200 and json.loads(raw)["servers"] == [{"url": "/api"}]
    assert _get(port, "/api/metrics")[0] == 200
    assert _get(port, "/openapi.json")[0] == 404
    status, headers, _ = _get(port, "/api/run/?page_size=1&parent_only=false")
    assert headers["Link"].startswith("</api/run/?page_size=1&parent_only=false&page_token=")


# List Runs' parameters in spellings a client may send, each read by
# PySpur's router (FastAPI, pydantic in lax mode) either as a value (200) or
# as no value (422): ours must read the same runs, or refuse it too (400,
# api.md). Left out: what api.md says differs on purpose (a parameter given
# twice, a page beyond int32's, parameters PySpur does not have).
SPELLINGS = [
    "page=1.0&page_size=3",
    "page=2.00&page_size=3",
    "page=%202%20&page_size=3",
    "page=%2B2&page_size=3",
    "page=02&page_size=3",
    "page_size=1_0",  # Python's and pydantic's digit separator
    "page=1_0&page_size=1",
    "page_size=+1_2.0",
    "page=0_2&page_size=2",
    "page_size=1_",
    "page_size=_1",
    "page_size=1__0",
    "page=1.",
    "page_size=3.",
    "page=1.5",
    "page_size=1e1",
    "page_size=0x10",
    "page=",
    "parent_only=yes&page_size=100",
    "parent_only=OFF&page_size=100",
    "parent_only=f&page_size=100",
    "parent_only=%20false&page_size=100",  # no spaces around a boolean
    "parent_only=true%20&page_size=100",
    "parent_only=%09true&page_size=100",
    "parent_only=2&page_size=100",
    "parent_only=",
]


@pytest.mark.slow
def test_query_spellings_read_as_pyspur_reads_them(pyspur: Http, ours: Http) -> None:
    differ = []
    for query in SPELLINGS:
        theirs, mine = pyspur.get(f"/run/?{query}"), ours.get(f"/run/?{query}")
        if theirs.status == 422:
            same = mine.status == 400
        else:
            assert theirs.status == 200, (query, theirs.body[:200])
            same = mine.status == 200 and [r["id"] for r in mine.json()] == [
                r["id"] for r in theirs.json()
            ]
        if not same:
            differ.append((query, theirs.status, mine.status))
    assert not differ
