"""Load under faults: client threads calling the read RPCs with deadlines
(`Load`), the health they see, the pool gauges the server exports."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from factories import add_run, add_workflow, all_done
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.store.db import Database
from spur_runs.store.migrate import migrate

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DEADLINE_S = 3.0


def seed_runs(url: str, count: int = 20) -> list[str]:
    migrate(url)
    db = Database.from_url(url, pool_size=1)
    with db.write() as conn:
        workflow = add_workflow(conn)
        ids = [add_run(conn, workflow, tasks=all_done()) for _ in range(count)]
    db.dispose()
    return ids


@dataclass
class Outcome:
    method: str
    code: grpc.StatusCode
    started: float  # time.monotonic()
    ended: float
    details: str = ""

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Load:
    """Client threads calling the read RPCs in a closed loop, each call with
    a deadline; every outcome is kept."""

    stub: RunServiceStub
    run_ids: list[str]
    threads: int = 4
    deadline: float = DEADLINE_S
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _call(self, rng: random.Random) -> tuple[str, Callable[[], object]]:
        run_id = rng.choice(self.run_ids)
        pick = rng.random()
        if pick < 0.6:
            return "GetRun", lambda: self.stub.GetRun(
                pb.GetRunRequest(run_id=run_id), timeout=self.deadline
            )
        if pick < 0.8:
            return "ListRuns", lambda: self.stub.ListRuns(
                pb.ListRunsRequest(page_size=5), timeout=self.deadline
            )
        return "GetRunTasks", lambda: self.stub.GetRunTasks(
            pb.GetRunTasksRequest(run_id=run_id), timeout=self.deadline
        )

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            method, call = self._call(rng)
            started = time.monotonic()
            details = ""
            try:
                call()
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code, details = error.code(), error.details() or ""
            self.outcomes.append(Outcome(method, code, started, time.monotonic(), details))
            if code != grpc.StatusCode.OK:
                time.sleep(0.01)  # a client backs off a little before retrying

    def __enter__(self) -> Load:
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, args=(i,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=self.deadline + 5)

    def wait_for(self, what: Callable[[Outcome], bool], timeout: float) -> Outcome:
        """The first outcome (from now on) matching `what`."""
        seen = len(self.outcomes)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for outcome in self.outcomes[seen:]:
                if what(outcome):
                    return outcome
            time.sleep(0.01)
        raise AssertionError(f"no call matched within {timeout} s: {self.codes()}")

    def failures(self) -> list[str]:
        return [f"{o.method} {o.code.name}: {o.details}" for o in self.outcomes if o.details]

    def codes(self) -> Counter[str]:
        return Counter(o.code.name for o in self.outcomes)

    def report(self, label: str) -> str:
        slowest = max(o.seconds for o in self.outcomes)
        return (
            f"{label}: {len(self.outcomes)} calls {dict(self.codes())}; slowest "
            f"{slowest * 1000:.0f} ms = {slowest / self.deadline:.2f} of the "
            f"{self.deadline:.0f} s deadline"
        )

    def assert_clean(self) -> None:
        """Every call OK or UNAVAILABLE, none past (or at) its deadline."""
        assert set(self.codes()) <= {"OK", "UNAVAILABLE"}, self.codes()
        assert max(o.seconds for o in self.outcomes) < self.deadline * 0.9


def health_status(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest(service="spur.runs.v1.RunService")
    return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status)


def pool_gauges(server: object, database: str = "primary") -> dict[str, float]:
    """The spur_runs_db_pool_* gauges as GET /metrics serves them."""
    from prometheus_client.parser import text_string_to_metric_families

    body, _ = server.metrics.exposition()  # type: ignore[attr-defined]
    return {
        sample.name.removeprefix("spur_runs_db_pool_"): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name.startswith("spur_runs_db_pool_") and sample.labels["database"] == database
    }


def wait_pool_idle(server: object, timeout: float) -> float:
    """Seconds until no connection of the pool is checked out."""
    started = time.monotonic()
    while True:
        gauges = pool_gauges(server)
        if gauges["checked_out"] == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"pool still busy after {timeout} s: {gauges}")
        time.sleep(0.02)
