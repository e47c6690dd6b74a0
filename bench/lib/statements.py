"""GetRun's SQL statements for runs of 10, 1,000 and 1,500 tasks, counted in
process with a SQLAlchemy before_cursor_execute listener (issue 5: constant
in the number of tasks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spur.runs.v1 import run_service_pb2 as pb

from .common import DATA
from .data import Database, create_database, drop_database, spur_runs


def statement_counts(
    backend: str, tag: str, sizes: Sequence[int] = (10, 1000, 1500)
) -> dict[str, Any]:
    from sqlalchemy import event, insert, select

    from spur_runs.api.service import RunService
    from spur_runs.store.db import Database as SpurDatabase
    from spur_runs.store.models import Run, Task

    db = create_database(backend, 0, f"{tag}_stmt") if backend == "postgresql" else None
    if db is None:
        path = DATA / "statements.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        db = Database("sqlite", 0, f"sqlite:///{path}", {})
    try:
        spur_runs("migrate", "--database-url", db.url)
        spur_runs("seed", "--database-url", db.url, "--runs", "1")
        spur = SpurDatabase.from_url(db.url, pool_size=2)
        run_ids: dict[int, str] = {}
        with spur.write() as conn:
            template_run = dict(conn.execute(select(Run.__table__).limit(1)).mappings().one())
            template_task = dict(
                conn.execute(
                    select(Task.__table__).where(Task.run_id == template_run["id"]).limit(1)
                )
                .mappings()
                .one()
            )
            for n in sizes:
                values = {k: v for k, v in template_run.items() if k not in ("_intid", "id")}
                values["parent_run_id"] = None
                intid = conn.execute(
                    insert(Run.__table__).values(**values).returning(Run._intid)
                ).scalar_one()
                run_id = f"R{intid}"
                task = {k: v for k, v in template_task.items() if k not in ("_intid", "id")}
                conn.execute(insert(Task.__table__), [{**task, "run_id": run_id} for _ in range(n)])
                run_ids[n] = run_id
        statements: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements.append(statement)

        for engine in spur.engines.values():
            event.listen(engine, "before_cursor_execute", count)
        service = RunService(spur)
        result: dict[str, Any] = {"database": db.name.split()[0], "runs": {}}
        for n, run_id in run_ids.items():
            counts = []
            for _ in range(2):  # the first call may also read the workflow version (cached after)
                statements.clear()
                response = service.GetRun(pb.GetRunRequest(run_id=run_id), None)  # type: ignore[arg-type]
                counts.append(len(statements))
            result["runs"][n] = {
                "first_call": counts[0],
                "statements": counts[1],
                "tasks_embedded": len(response.run.tasks),
                "task_count": response.run.task_count,
                "sql": [" ".join(s.split())[:140] for s in statements],
            }
        spur.dispose()
        return result
    finally:
        drop_database(db)
