"""Concurrency (issue 6, "Faults"): reads racing DeleteRun on the same runs,
and page-token walks while runs are inserted and deleted, against a real
server on a loopback port, on SQLite and PostgreSQL.

A read sees a run whole or not at all: every Run returned has all its N
tasks (task_count == N == len(tasks)), or the call is NOT_FOUND. A walk of
ListRuns (or GetChildRuns) by page token never returns a run twice, and
returns every run that exists throughout the walk.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from factories import add_run, add_workflow
from servers import start_server
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database
from spur_runs.store.models import Run, RunStatus, TaskStatus

N = 7  # tasks of every run
TASKS = [(f"node{n}", TaskStatus.COMPLETED) for n in range(N)]
START = datetime(2026, 11, 2, 9, 0, 0)


@pytest.fixture
def served(migrated_url: str) -> Iterator[tuple[RunsServer, RunServiceStub]]:
    server = start_server(migrated_url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield server, RunServiceStub(channel)
    finally:
        server.stop(grace=1)


def _whole(run: run_pb2.Run, where: str) -> None:
    assert run.task_count == N and len(run.tasks) == N, (
        f"{where}: run {run.id} with {len(run.tasks)} tasks, task_count {run.task_count}"
    )
    assert all(task.run_id == run.id for task in run.tasks)


class Errors:
    """Failures seen by worker threads, re-raised by the test's thread."""

    def __init__(self) -> None:
        self.found: list[BaseException] = []
        self.codes: Counter[str] = Counter()

    def run(self, work: Callable[[], None]) -> threading.Thread:
        def guarded() -> None:
            try:
                work()
            except BaseException as error:  # noqa: BLE001 - reported by check()
                self.found.append(error)

        thread = threading.Thread(target=guarded)
        thread.start()
        return thread

    def call(self, name: str, call: Callable[[], Any]) -> Any:
        """The answer, or None for NOT_FOUND; any other error fails the test."""
        try:
            answer = call()
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            self.codes[f"{name} {code.name}"] += 1
            assert code is grpc.StatusCode.NOT_FOUND, f"{name}: {code.name} {error.details()}"  # type: ignore[attr-defined]
            return None
        self.codes[f"{name} OK"] += 1
        return answer

    def check(self) -> None:
        if self.found:
            raise self.found[0]


# --- reads racing DeleteRun -----------------------------------------------------------


@pytest.mark.slow
def test_reads_racing_deletes_never_see_half_a_run(
    migrated_url: str, served: tuple[RunsServer, RunServiceStub]
) -> None:
    db = Database.from_url(migrated_url, pool_size=1)
    try:
        with db.write() as s:
            workflow = add_workflow(s)
            tops, everything = [], []
            for n in range(120):
                top = add_run(s, workflow, start_time=START + timedelta(seconds=n), tasks=TASKS)
                tops.append(top)
                everything.append(top)
                if n % 4 == 0:  # a parent: its children go with it
                    for c in range(2):
                        everything.append(
                            add_run(
                                s,
                                workflow,
                                parent_run_id=top,
                                start_time=START + timedelta(seconds=n, milliseconds=c + 1),
                                tasks=TASKS,
                            )
                        )
    finally:
        db.dispose()
    _, stub = served
    errors = Errors()
    done = threading.Event()
    order = tops[:]
    random.Random(6).shuffle(order)

    def delete(ids: list[str]) -> None:
        for run_id in ids:
            errors.call("DeleteRun", lambda: stub.DeleteRun(pb.DeleteRunRequest(run_id=run_id)))  # noqa: B023
            time.sleep(0.003)  # let the readers overlap each delete

    def read(seed: int) -> None:
        rng = random.Random(seed)
        while not done.is_set():
            run_id = rng.choice(everything)
            kind = rng.randrange(4)
            if kind == 0:
                answer = errors.call(
                    "GetRun",
                    lambda: stub.GetRun(pb.GetRunRequest(run_id=run_id)),  # noqa: B023
                )
                if answer is not None:
                    _whole(answer.run, "GetRun")
            elif kind == 1:
                answer = errors.call(
                    "GetRunTasks",
                    lambda: stub.GetRunTasks(pb.GetRunTasksRequest(run_id=run_id)),  # noqa: B023
                )
                if answer is not None:
                    assert len(answer.tasks) == N, f"GetRunTasks {run_id}: {len(answer.tasks)}"
            elif kind == 2:
                answer = errors.call(
                    "GetChildRuns",
                    lambda: stub.GetChildRuns(pb.GetChildRunsRequest(run_id=run_id)),  # noqa: B023
                )
                for run in answer.runs if answer is not None else ():
                    _whole(run, "GetChildRuns")
                    assert run.parent_run_id == run_id
            else:
                page = rng.randrange(1, 8)
                answer = errors.call(
                    "ListRuns",
                    lambda: stub.ListRuns(
                        pb.ListRunsRequest(page=page, page_size=20, parent_only=False)  # noqa: B023
                    ),
                )
                assert answer is not None, "ListRuns is never NOT_FOUND"
                for run in answer.runs:
                    _whole(run, "ListRuns")

    readers = [errors.run(lambda seed=seed: read(seed)) for seed in range(4)]  # type: ignore[misc]
    deleters = [errors.run(lambda part=part: delete(order[part::2])) for part in range(2)]  # type: ignore[misc]
    for thread in deleters:
        thread.join(timeout=60)
    done.set()
    for thread in readers:
        thread.join(timeout=60)
    errors.check()
    print(dict(errors.codes))
    # The race was real: reads found runs, and runs already gone.
    assert errors.codes["DeleteRun OK"] == len(tops)
    assert errors.codes["GetRun OK"] and errors.codes["GetRun NOT_FOUND"]
    assert not stub.ListRuns(pb.ListRunsRequest(parent_only=False)).runs


# --- page-token walks during inserts and deletes ---------------------------------------


@pytest.mark.slow
def test_page_token_walks_during_inserts_and_deletes(
    migrated_url: str, served: tuple[RunsServer, RunServiceStub]
) -> None:
    """Stable runs (never deleted) interleave, in the walk's order, with runs
    that are deleted during the walks and runs inserted during them (with and
    without a start_time, before and after the walk's position)."""
    db = Database.from_url(migrated_url, pool_size=2)
    rng = random.Random(7)
    try:
        with db.write() as s:
            workflow = add_workflow(s)
            parent = add_run(s, workflow, run_type="batch", tasks=TASKS)
            stable, doomed = [parent], []
            for n in range(160):
                when = None if n % 10 == 9 else START + timedelta(seconds=rng.randrange(200))
                run_id = add_run(
                    s,
                    workflow,
                    start_time=when,
                    parent_run_id=parent if n % 3 == 0 else None,
                    status=RunStatus.COMPLETED if n % 2 else RunStatus.FAILED,
                    tasks=TASKS,
                )
                (doomed if n % 2 else stable).append(run_id)
        _, stub = served
        errors = Errors()
        done = threading.Event()

        def insert() -> None:
            n = 0
            while not done.is_set():
                with db.write() as s:
                    when = None if n % 7 == 6 else START + timedelta(seconds=rng.randrange(200))
                    add_run(
                        s,
                        workflow,
                        start_time=when,
                        parent_run_id=parent if n % 3 == 0 else None,
                        status=RunStatus.COMPLETED,
                        tasks=TASKS,
                    )
                n += 1
                time.sleep(0.002)

        def delete() -> None:
            for run_id in doomed:
                errors.call("DeleteRun", lambda: stub.DeleteRun(pb.DeleteRunRequest(run_id=run_id)))  # noqa: B023
                time.sleep(0.004)

        def walk(request: Callable[[str], Any], basic: bool) -> list[str]:
            seen: list[str] = []
            token = ""
            while True:
                answer = request(token)
                for run in answer.runs:
                    if not basic:
                        _whole(run, "walk")
                seen.extend(run.id for run in answer.runs)
                token = answer.next_page_token
                if not token:
                    return seen

        walks = {
            "all": lambda t: stub.ListRuns(
                pb.ListRunsRequest(page_size=7, page_token=t, parent_only=False)
            ),
            "top-level, basic": lambda t: stub.ListRuns(
                pb.ListRunsRequest(page_size=5, page_token=t, parent_only=True, view=1)
            ),
            "failed": lambda t: stub.ListRuns(
                pb.ListRunsRequest(
                    page_size=4, page_token=t, status=[run_pb2.Run.FAILED], parent_only=False
                )
            ),
            "children": lambda t: stub.GetChildRuns(
                pb.GetChildRunsRequest(run_id=parent, page_size=3, page_token=t)
            ),
        }
        with db.read() as s:
            rows = s.execute(select(Run.id, Run.parent_run_id)).all()
        children = {run_id for run_id, up in rows if up == parent}
        expected = {
            "all": set(stable),
            "top-level, basic": set(stable) - children,
            "failed": set(stable) - {parent},
            "children": set(stable) & children,
        }
        assert all(expected.values())

        threads = [errors.run(insert), errors.run(delete)]
        walked = Counter[str]()
        try:
            while threads[1].is_alive() or not walked:
                for name, request in walks.items():
                    seen = walk(request, basic="basic" in name)
                    duplicates = [r for r, k in Counter(seen).items() if k > 1]
                    assert not duplicates, f"{name}: {duplicates} twice"
                    missing = expected[name] - set(seen)
                    assert not missing, f"{name}: stable runs {sorted(missing)} missing"
                    walked[name] += 1
        finally:
            done.set()
            for thread in threads:
                thread.join(timeout=60)
        errors.check()
        print(dict(walked), dict(errors.codes))
        assert errors.codes["DeleteRun OK"] == len(doomed)
        assert min(walked.values()) >= 1
    finally:
        db.dispose()


def test_a_page_token_outlives_its_runs_id_given_to_a_new_run(
    db: Database, stub: RunServiceStub
) -> None:
    """On SQLite a deleted newest run's rowid goes to the next run PySpur
    starts (PySpur's schema has no AUTOINCREMENT). A page token whose last
    run was that one went on from the new run's place: page 2 repeated
    page 1's runs (a hostile review, 2026-12-03). It goes on from the
    token's own time. PostgreSQL never reuses an id: the same walk holds."""
    basic = run_pb2.RUN_VIEW_BASIC
    with db.write() as s:
        version = add_workflow(s)
        older = [add_run(s, version, start_time=START + timedelta(minutes=m)) for m in range(10)]
        # The 5th newest by start_time, and the highest _intid.
        last_of_page = add_run(s, version, start_time=START + timedelta(minutes=5, seconds=30))
    first = stub.ListRuns(pb.ListRunsRequest(page_size=5, view=basic))
    assert [r.id for r in first.runs][-1] == last_of_page
    stub.DeleteRun(pb.DeleteRunRequest(run_id=last_of_page))
    with db.write() as s:  # PySpur starts a run: on SQLite it gets the deleted run's id
        add_run(s, version, start_time=START + timedelta(hours=1))
    second = stub.ListRuns(
        pb.ListRunsRequest(page_size=5, page_token=first.next_page_token, view=basic)
    )
    assert [r.id for r in second.runs] == older[5::-1][:5]
