# ruff: noqa: E501  (report strings and command lines read better unbroken)
"""The benchmark suite (issues 5 and 17): spur-runs side by side with PySpur, the gRPC floor and a baseline tree.

    python bench/run.py --quick     # 10,000 runs only, a few minutes
    python bench/run.py             # 10,000 and 1,000,000 runs, ~25 minutes

(any Python with the project installed: `pip install -e '.[dev]'`). Writes
bench/results/RESULTS.md, results.json and throughput.png. Loopback only.

What it does, in one process so that every ratio is measured in one run
(the code: bench/lib/; bench/README.md says which module does what):

1. Installs what is missing: h2load and wrk with apt-get (nghttp2-client,
   wrk), and bench/.data/venv, a venv of its own, with PySpur 0.1.18
   (--no-deps) plus what its Runs router needs, at the versions PySpur pins,
   and matplotlib for the chart (lib/tools.py). With --baseline REF (default
   528c7ea), a detached worktree of REF under bench/.data (lib/servers.py).
2. Counts GetRun's SQL statements for a run of 10 and of 1,000 tasks, in
   process (lib/statements.py).
3. For each database (SQLite file under bench/.data, PostgreSQL database
   spur_bench_* at 127.0.0.1:5432, dropped at the end), at 10,000 and
   1,000,000 runs: `spur-runs migrate` + `spur-runs seed --runs N` (timed),
   then `spur-runs serve` (gRPC + HTTP), the baseline's `spur-runs serve`,
   PySpur's router under uvicorn on the same database, and the two floor
   servers (lib/floor_server.py); every case is measured `--rounds` times,
   the cases of one comparison next to each other in every round (the order
   reversed every other round), and a ratio is the median of its per-round
   ratios (lib/suite.py, lib/load.py).
4. `--workers 2` against 1 under the same load (SQLite, smallest size).
5. Server RSS at the end of each database's cases; the targets with
   PASS/MISS (lib/targets.py), the tables (lib/report.py) and the chart.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lib.common import DATA, GET_RUN_PATH, LIB, PG_ADMIN_URL, RESULTS, log
from lib.data import create_database, drop_database
from lib.load import GrpcLoad, HttpLoad, Settings
from lib.procs import Processes
from lib.report import commands, machine, notes, write_markdown
from lib.servers import baseline_tree, start_floor
from lib.statements import statement_counts
from lib.suite import bench_database
from lib.targets import targets_table
from lib.tools import ensure_tools, ensure_tools_venv, package_versions, tool_versions

from spur_runs.config import Config

BASELINE = "528c7ea"  # the last landed main before issue 17's work


def chart(tools_python: Path, out: Path) -> None:
    if not json.loads((out / "results.json").read_text())["datasets"]:
        log("no database measured: no chart")
        return
    subprocess.run(
        [
            str(tools_python),
            str(LIB / "chart.py"),
            str(out / "results.json"),
            str(out / "throughput.png"),
        ],
        check=True,
    )


def report_only(source: Path, out: Path) -> int:
    """--report: rewrite RESULTS.md and the chart from a results.json."""
    results = json.loads(source.read_text())
    results["targets"] = targets_table(results)
    out.mkdir(parents=True, exist_ok=True)
    if source.resolve() != (out / "results.json").resolve():
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_markdown(results, out / "RESULTS.md")
    chart(ensure_tools_venv(), out)
    return 0


def postgres_version() -> str:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    except Exception:
        return "?"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="10,000 runs only, shorter cases (a few minutes)"
    )
    parser.add_argument(
        "--seconds", type=float, default=3, help="seconds per case per round (default 3)"
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 5; quick 2)")
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql"
    )
    parser.add_argument(
        "--sizes", help="comma-separated run counts (default 10000,1000000; quick 10000)"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="results folder (default bench/results)"
    )
    parser.add_argument(
        "--max-minutes", type=float, default=35, help="skip databases not started by then"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also install py-spy into the bench venv"
    )
    parser.add_argument(
        "--baseline",
        default=BASELINE,
        metavar="REF",
        help=f"git ref served side by side for the A/B rows (default {BASELINE}); 'none' to skip",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: rewrite RESULTS.md and the chart in --out from a results.json",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.report:
        return report_only(args.report, args.out)
    rounds = args.rounds or (2 if args.quick else 5)
    sizes = [
        int(x) for x in (args.sizes or ("10000" if args.quick else "10000,1000000")).split(",")
    ]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    settings = Settings(
        seconds=args.seconds, rounds=rounds, segments=max(1, int(args.seconds)), warmup=1.0
    )
    command = "python bench/run.py" + "".join(f" {a}" for a in sys.argv[1:])
    started, load_start = time.monotonic(), os.getloadavg()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks

    DATA.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    ensure_tools()
    tools_python = ensure_tools_venv(args.profile)
    baseline = None if args.baseline.lower() == "none" else baseline_tree(args.baseline)
    baseline_meta = None
    if baseline:
        commit = subprocess.run(
            ["git", "-C", str(baseline), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        baseline_meta = {"ref": args.baseline, "commit": commit, "tree": str(baseline)}
    tag = f"{os.getpid()}"
    procs = Processes()
    results: dict[str, Any] = {"datasets": [], "statements": [], "skipped": []}
    try:
        log("GetRun statement counts")
        for backend in backends:
            results["statements"].append(statement_counts(backend, tag))
            counted = results["statements"][-1]["runs"].items()
            log(f"  {backend}: " + ", ".join(f"{n} tasks: {v['statements']}" for n, v in counted))
        floors = {mode: start_floor(procs, mode) for mode in ("sync", "aio")}
        for runs in sizes:
            for backend in backends:
                if (time.monotonic() - started) / 60 > args.max_minutes:
                    results["skipped"].append(f"{backend} {runs}: over --max-minutes")
                    log(f"skipping {backend} {runs}: over {args.max_minutes} minutes")
                    continue
                db = create_database(backend, runs, tag)
                try:
                    log(f"=== {db.name}")
                    with_workers = backend == backends[0] and runs == sizes[0]
                    dataset = bench_database(
                        db, procs, tools_python, floors, settings, with_workers, baseline
                    )
                    if baseline_meta:
                        dataset["baseline"] = f"{args.baseline} ({baseline_meta['commit'][:9]})"
                    results["datasets"].append(dataset)
                except Exception as error:  # report the others; say what this one could not do
                    log(f"{db.name} FAILED: {error}")
                    results["skipped"].append(f"{db.name}: failed: {str(error)[:500]}")
                finally:
                    drop_database(db)
                partial = dict(results, meta={}, settings=asdict(settings))
                (args.out / "results.partial.json").write_text(
                    json.dumps(partial, indent=1, default=str)
                )
    finally:
        procs.stop_all()

    defaults = Config()
    results["meta"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine(),
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "wall_minutes": (time.monotonic() - started) / 60,
        "versions": {
            "ours": package_versions(
                Path(sys.executable), ["spur-runs", "grpcio", "SQLAlchemy", "protobuf", "psycopg"]
            ),
            "peer": package_versions(
                tools_python,
                ["pyspur", "fastapi", "pydantic", "SQLAlchemy", "uvicorn", "uvloop", "httptools"],
            ),
        },
        "postgres": postgres_version(),
        "tools": tool_versions(),
        "baseline": baseline_meta,
    }
    results["settings"] = {
        **asdict(settings),
        "quick": args.quick,
        "sizes": sizes,
        "backends": backends,
    }
    results["targets"] = targets_table(results)
    results["notes"] = notes(settings.segments, defaults.max_workers, defaults.max_concurrent_rpcs)
    if results["skipped"]:
        results["notes"].append("Skipped: " + "; ".join(results["skipped"]))
    results["commands"] = commands(
        GrpcLoad(0, GET_RUN_PATH, [Path("x")] * settings.segments, [0]).describe(),
        HttpLoad(0, "/run/{id}/", Path("ids")).describe(),
    )
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (args.out / "results.partial.json").unlink(missing_ok=True)
    write_markdown(results, args.out / "RESULTS.md")
    chart(tools_python, args.out)
    log(
        f"wrote {args.out / 'RESULTS.md'} and {args.out / 'throughput.png'} in {(time.monotonic() - started) / 60:.1f} minutes"
    )
    for row in results["targets"]["issue17"] + results["targets"]["kept"]:
        log(f"{row['verdict']:<5} {row['target']} [{row['where']}]: {row['ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
