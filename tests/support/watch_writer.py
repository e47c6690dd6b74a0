"""A stand-in for PySpur's engine in another process: it writes a run's rows
with plain SQL, one step per line read on stdin, and knows nothing of
spur-runs. After each committed step it prints "done <step>".

    python watch_writer.py DATABASE_URL RUN_ID
    stdin: "1\\n", "2\\n", ... or "delete\\n"

The steps (tests/integration/test_watch.py checks each one's effect in order):
 1  the run starts: status RUNNING
 2  its first task starts: RUNNING, with a start_time
 3  that task completes: COMPLETED, end_time and outputs
 4  the engine adds a task for the next node (a new row)
 5  that task fails, with an error
 6  the run ends: FAILED, with an end_time
"""

from __future__ import annotations

import sys

from sqlalchemy import create_engine, text

STEPS = {
    "1": ["UPDATE runs SET status = 'RUNNING' WHERE id = :run"],
    "2": [
        "UPDATE tasks SET status = 'RUNNING', start_time = '2026-11-02 09:00:01' "
        "WHERE run_id = :run AND node_id = 'input_node'"
    ],
    "3": [
        "UPDATE tasks SET status = 'COMPLETED', end_time = '2026-11-02 09:00:02', "
        "outputs = '{\"answer\": \"forty-two\"}' WHERE run_id = :run AND node_id = 'input_node'"
    ],
    "4": [
        "INSERT INTO tasks (run_id, node_id, status, inputs, start_time) "
        "VALUES (:run, 'llm', 'RUNNING', '{\"n\": 1}', '2026-11-02 09:00:03')"
    ],
    "5": [
        "UPDATE tasks SET status = 'FAILED', error = 'model timed out', "
        "end_time = '2026-11-02 09:00:04' WHERE run_id = :run AND node_id = 'llm'"
    ],
    "6": ["UPDATE runs SET status = 'FAILED', end_time = '2026-11-02 09:00:05' WHERE id = :run"],
    "delete": ["DELETE FROM tasks WHERE run_id = :run", "DELETE FROM runs WHERE id = :run"],
}


def main() -> None:
    url, run_id = sys.argv[1], sys.argv[2]
    if url.startswith("postgresql://"):
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)
    for line in sys.stdin:
        step = line.strip()
        if not step:
            continue
        with engine.begin() as conn:  # one transaction per step, committed
            for statement in STEPS[step]:
                conn.execute(text(statement), {"run": run_id})
        print(f"done {step}", flush=True)
    engine.dispose()


if __name__ == "__main__":
    main()
