# ruff: noqa: E501  (report strings read better unbroken)
"""RESULTS.md: the machine, the method, the targets, every case, the notes."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from .common import H2LOAD_CLIENTS, H2LOAD_STREAMS, WRK_CONNECTIONS


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(
        next(
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": next(
            (
                line.split("=", 1)[1].strip('"')
                for line in Path("/etc/os-release").read_text().splitlines()
                if line.startswith("PRETTY_NAME")
            ),
            "",
        ),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def _fmt_case(case: dict[str, Any]) -> str:
    rps = case["rps"]
    spread = (
        f"{case['rps_min']:,.0f}–{case['rps_max']:,.0f}"
        if rps >= 100
        else f"{case['rps_min']:,.1f}–{case['rps_max']:,.1f}"
    )
    value = f"{rps:,.0f}" if rps >= 100 else f"{rps:,.1f}"
    return (
        f"| {case['label']} | {case['side']} | **{value}** | {spread} | {case['p50_ms']:.2f} | "
        f"{case['p99_ms']:.2f} | {case['cpu_us']:,.0f} | {case['requests']:,} |"
    )


def _target_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| target | database | measured | ratio | must reach | aim | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['target']} | {row['where']} | {row['measured']} | {row['ratio']} "
            f"| {row['must']} | {row['aim']} | **{row['verdict']}** |"
        )
    return lines


def write_markdown(results: dict[str, Any], path: Path) -> None:
    m, s = results["meta"], results["settings"]
    lines = [
        "# spur-runs benchmark results",
        "",
        f"Measured {m['date']} with `{m['command']}` ({'quick mode: 10,000 runs only' if s['quick'] else 'full mode'}), "
        f"{m['wall_minutes']:.1f} minutes wall. Produced by [bench/run.py](../run.py) (its cases: [bench/lib/suite.py](../lib/suite.py)); raw numbers in "
        "[results.json](results.json), chart [throughput.png](throughput.png).",
        ""
        + (
            f"Plus a second invocation, `{m['second_invocation']['command']}`, at {m['second_invocation']['date']} "
            f"({m['second_invocation']['wall_minutes']:.1f} minutes): see the PostgreSQL 1M section.\n"
            if m.get("second_invocation")
            else ""
        ),
        f"**Machine**: {m['machine']['cpu']}, {m['machine']['cores']} cores, {m['machine']['memory_gb']} GB, "
        f"{m['machine']['os']}, Linux {m['machine']['kernel']}, Python {m['machine']['python']}; "
        f"load average at start {m['load_start'][0]:.1f}, at end {m['load_end'][0]:.1f} (a shared machine: "
        "other jobs ran during the bench; absolute numbers drift, ratios are measured back to back). "
        "Load generators, servers and databases all on this machine, over loopback.",
        "",
        f"**Versions**: spur-runs {m['versions']['ours'].get('spur-runs')}, grpcio {m['versions']['ours'].get('grpcio')}, "
        f"SQLAlchemy {m['versions']['ours'].get('SQLAlchemy')}, protobuf {m['versions']['ours'].get('protobuf')}; "
        "peer: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"]["peer"].items())
        + f"; PostgreSQL {m.get('postgres', '?')}; "
        f"{m['tools']['h2load']}, {m['tools']['wrk']}.",
        "",
        f"**Method**: each case {s['seconds']:g} s × {s['rounds']} rounds after a {s['warmup']:g} s warm-up; "
        "the cases of a comparison run back to back in every round (order reversed every other round); "
        "req/s, p50 and p99 are medians over rounds (spread: slowest–fastest round); a ratio is the median of "
        "the per-round ratios. 16 requests in flight on every side: "
        f"`h2load -t1 -c{H2LOAD_CLIENTS} -m{H2LOAD_STREAMS}` for gRPC, `wrk -t1 -c{WRK_CONNECTIONS}` for HTTP. "
        "Server CPU/req is user+system time of the server's process(es) over the window divided by requests: "
        "the figure the noise moves least. On PostgreSQL it leaves out the database's own backends (another process); "
        "on SQLite the database work is in it.",
        "",
        "## Targets of issue 17",
        "",
        "Each a ratio of two cases measured back to back in every round of this run. "
        + (
            f"A/B: this tree against `{m['baseline']['ref']}` ({m['baseline']['commit'][:9]}), "
            "a detached worktree of it served from the same venv, on the same database, rounds alternating. "
            if m.get("baseline")
            else "No A/B (run without --baseline). "
        )
        + "PySpur has the `tasks.run_id` index in every case (`spur-runs migrate` adds it; PySpur as it ships "
        "has none, and is not measured here). The ListRuns target against PySpur is the gRPC one: ListRuns "
        "page_size 10 against PySpur's `GET /run/?page=1&page_size=10`; the HTTP row beside it is information.",
        "",
        *_target_rows(results["targets"]["issue17"]),
        "",
        "## Targets of issue 5 (keep passing)",
        "",
        *_target_rows(results["targets"]["kept"]),
    ]
    lines += ["", "## Every case", ""]
    header = [
        "| case | side | req/s | spread | p50 ms | p99 ms | server CPU µs/req | requests |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d in results["datasets"]:
        sizes = d.get("sizes", {})
        lines += [
            f"### {d['name']} runs",
            "",
            f"`spur-runs migrate` {d['migrate_s']:.1f} s, `spur-runs seed --runs {d['runs']:,}` {d['seed_s']:.1f} s. "
            f"A GetRun answer is ~{sizes.get('get_run_bytes', 0):,.0f} bytes of protobuf ({sizes.get('tasks_per_run', 0):g} tasks), "
            f"a list page {sizes.get('list_page_bytes', 0):,} bytes (page 1; the deep page "
            f"{sizes.get('keyset_page_bytes', 0):,} bytes: other runs, older ones). Deep page: depth {d['deep']['depth']:,} "
            f"(keyset token of the row there; page-number paging: page={d['deep']['page']:,})."
            + (
                f" The baseline's answers to the same requests: GetRun ~{sizes['baseline_get_run_bytes']:,.0f} bytes, "
                f"the list page {sizes['baseline_list_page_bytes']:,} bytes."
                if "baseline_get_run_bytes" in sizes
                else ""
            )
            + (
                f" Then `ANALYZE` ({d['analyze']['analyze_s']:.1f} s): the seed leaves no planner statistics, "
                f"and one ListRuns page 1 took **{d['analyze']['list_ms_before']:,.0f} ms** before it, "
                f"{d['analyze']['list_ms_after']:,.0f} ms after."
                if "analyze" in d
                else ""
            )
            + (
                f" Measured by a separate invocation: {d['run_note']}." if d.get("run_note") else ""
            ),
            "",
            *header,
        ]
        lines += [_fmt_case(c) for c in d["cases"].values()]
        mem = d["memory"]
        lines += [
            "",
            f"RSS at the end: spur-runs {mem['spur-runs']['VmRSS']:.0f} MB (peak {mem['spur-runs']['VmHWM']:.0f} MB), "
            f"PySpur {mem['PySpur']['VmRSS']:.0f} MB (peak {mem['PySpur']['VmHWM']:.0f} MB)"
            + (
                f", the baseline {mem['baseline']['VmRSS']:.0f} MB (peak {mem['baseline']['VmHWM']:.0f} MB)."
                if "baseline" in mem
                else "."
            ),
            "",
        ]
        if "workers" in d:
            w = d["workers"]
            lines += [f"#### `--workers 2` vs 1 ({d['name']})", "", *header]
            lines += [_fmt_case(c) for c in w["cases"].values()]
            split = ", ".join(f"{x:.1f} s" for x in w["worker_cpu_split_s"])
            lines += [
                "",
                f"Ratio (2 workers / 1): gRPC {w['grpc_ratio']:.2f}x, HTTP {w['http_ratio']:.2f}x. CPU of each "
                f"worker process over those rounds: {split} (h2load's 4 connections are spread over the workers "
                "by the kernel's SO_REUSEPORT hash, which need not be even). The machine has 2 cores, shared "
                "with the load generator and the other jobs.",
                "",
            ]
    lines += ["## GetRun's SQL statements", ""]
    for st in results["statements"]:
        lines.append(f"{st['database']}:")
        lines.append("")
        for n, v in sorted(st["runs"].items(), key=lambda kv: int(kv[0])):
            lines.append(
                f"- run with {int(n):,} tasks: **{v['statements']}** statements per GetRun "
                f"({v['first_call']} on the first call, which also reads the workflow version into the cache); "
                f"{v['tasks_embedded']:,} tasks embedded, task_count {v['task_count']:,}"
            )
        last = st["runs"][max(st["runs"], key=int)]
        lines += [
            "",
            "  the statements (largest run): " + "; ".join(f"`{q}`" for q in last["sql"]),
            "",
        ]
    lines += ["## How each case is loaded", ""]
    for note in results["notes"]:
        lines.append(f"- {note}")
    lines += ["", "## Commands", "", "```sh", results["meta"]["command"], "```", ""]
    for c in results["commands"]:
        lines.append(f"- {c}")
    lines.append("")
    path.write_text("\n".join(lines))


def notes(segments: int, max_workers: int, max_concurrent_rpcs: int | None) -> list[str]:
    """How each case is loaded (RESULTS.md's last section)."""
    return [
        "gRPC GetRun of a random run: h2load sends one body file for every request, so each round is cut into "
        f"{segments} equal segments, each posting the GetRunRequest of another run drawn at random "
        "(uniformly over all runs); the floor (and the baseline) are loaded with exactly the same segments (same "
        "durations, same h2load flags), so the ratio compares like with like.",
        "HTTP GETs of a random run: wrk_paths.lua draws a run per request from 1,000 run ids drawn uniformly "
        "over all runs; spur-runs, the baseline and PySpur get the same ids and the same random seed each round.",
        "Lists: ListRuns page_size 10, view RUN_VIEW_FULL, parent_only true (the baseline's default is false, "
        "so it is sent; it is ours and PySpur's default): top-level runs, newest first; PySpur's `GET /run/` "
        "lists its top-level runs too. Every side answers 10 runs with their tasks and workflow version.",
        "Deep pages: the keyset token is `spur_runs.api.paging.encode_run_cursor(scope, start_time, _intid)` (scope: "
        "the unfiltered listing's, `list_query(ListRunsRequest()).scope`) of "
        "the row at that depth in ListRuns' order (top-level runs, start_time DESC, _intid DESC); the bench checks that the "
        "token's page and page-number paging at the same depth return the same 10 runs before loading them.",
        "gRPC answers failures with HTTP 200: every request body is called once with a gRPC client first (it "
        "must succeed), and every h2load segment must receive at least 90% of the DATA bytes of a successful "
        "answer per request (errors carry none), else the bench stops.",
        "The floor: bench/lib/floor_server.py, a generic handler returning empty bytes (no protobuf, no "
        f"interceptors, no database) with spur-runs' default thread pool ({max_workers}), "
        f"maximum_concurrent_rpcs ({max_concurrent_rpcs}) and channel options; its aio twin for the aio figure. "
        "spur-runs is a sync grpcio server, so its target is the sync floor.",
        "The baseline (--baseline REF): `git worktree add --detach bench/.data/baseline-<commit> REF` (reused "
        "when present), served by `python -m spur_runs serve` from the same venv with "
        "PYTHONPATH=<tree>/server:<tree>/generated, on the same database as ours, with the same flags; its "
        "cases sit next to ours in every round. Its ListRuns and GetRun requests are the very same bytes.",
        "PySpur: its Runs router (pyspur.api.run_management) mounted at /run in bench/lib/pyspur_peer.py, "
        "uvicorn with uvloop and httptools (what a full PySpur install brings), access log off, log level "
        "warning; spur-runs serves with --log-level WARNING (no access lines). Both read the same database, "
        "after `spur-runs migrate` (PySpur gets the tasks.run_id index too).",
        "Server CPU on PostgreSQL leaves out the database's own backends (other processes); on SQLite the "
        "database work is in it.",
        "Server RSS: VmRSS (and VmHWM, the peak) from /proc/PID/status of the `spur-runs serve` process at the "
        "end of all cases of its database.",
    ]


def commands(grpc_load: str, http_load: str) -> list[str]:
    return sorted(
        {
            "`python -m spur_runs migrate --database-url URL` then `python -m spur_runs seed --database-url URL --runs N`",
            "`python -m spur_runs serve --database-url URL --grpc-address 127.0.0.1:P --http-address 127.0.0.1:Q --log-level WARNING` (and `--workers 2`; the baseline's with PYTHONPATH=<tree>/server:<tree>/generated)",
            "`SQLITE_OVERRIDE_DATABASE_URL=URL python -m uvicorn pyspur_peer:app --app-dir bench/lib --port R --log-level warning --no-access-log` (bench/.data/venv; PostgreSQL: POSTGRES_* variables)",
            "`python bench/lib/floor_server.py --mode sync|aio --port F`",
            grpc_load.replace("PORT", "P"),
            http_load.replace("PORT", "P"),
        }
    )
