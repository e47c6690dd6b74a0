# ruff: noqa: E501  (case tables read better one case a line)
"""run.py's cases for one database: spur-runs (this tree, and the --baseline
ref's when given) side by side with PySpur and the floor, in rounds."""

from __future__ import annotations

import statistics
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub

from .common import DATA, GET_RUN_PATH, LIST_RUNS_PATH, log
from .data import Database, deep_cursor, sample_runs, seed_database
from .load import (
    Case,
    GrpcLoad,
    HttpLoad,
    Settings,
    floor_load,
    grpc_body,
    per_round_ratio,
    run_rounds,
)
from .procs import Processes, cpu_seconds, descendants, http_get, memory
from .servers import Servers

Floors = dict[str, tuple[subprocess.Popen[bytes], int]]

# ListRuns of issue 17: a page of 10 in the FULL view (tasks, workflow
# version), top-level runs. The baseline's request has the same fields and
# numbers (page_size and parent_only are not `optional` there, which encodes
# 10 and true the same way); parent_only is set because the baseline's
# default lists child runs too, ours (and PySpur's) does not.
LIST_PAGE = pb.ListRunsRequest(page_size=10, view=run_pb2.RUN_VIEW_FULL, parent_only=True)


def _answers(port: int, requests: list[Any], method: str) -> list[int]:
    """Call each request once (it must succeed): the DATA bytes of each answer,
    the least a successful h2load call must receive."""
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        call = getattr(RunServiceStub(channel), method)
        return [len(call(r, timeout=120).SerializeToString()) + 5 for r in requests]


def bench_database(
    db: Database,
    procs: Processes,
    tools_python: Path,
    floors: Floors,
    settings: Settings,
    with_workers: bool,
    baseline: Path | None = None,
) -> dict[str, Any]:
    work = DATA / "work" / db.slug
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"name": db.name, "backend": db.backend, "runs": db.runs}
    out.update(seed_database(db))
    servers = Servers(procs, tools_python, db)
    ours, grpc_port, http_port = servers.start_ours()
    peer, peer_port = servers.start_peer()
    base = servers.start_ours(name="baseline", tree=baseline) if baseline else None
    try:
        # Random runs: for h2load, one body per segment; for wrk, a list.
        needed = settings.rounds * settings.segments + 1
        ids = sample_runs(db, max(1000, needed))
        ids_file = work / "run_ids.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        grpc_ids = ids[:needed]
        token, page, depth = deep_cursor(db)  # ~the whole listing deep
        out["deep"] = {"depth": depth, "page": page}

        requests: dict[str, list[Any]] = {
            "get": [pb.GetRunRequest(run_id=i) for i in grpc_ids],
            "page1": [LIST_PAGE],
            "keyset": [pb.ListRunsRequest(page_size=10, page_token=token)],
            "pagenum": [pb.ListRunsRequest(page_size=10, page=page)],
        }
        bodies = {
            key: [grpc_body(work, f"{key}-{n}", r) for n, r in enumerate(rs)]
            for key, rs in requests.items()
        }
        method = {"get": "GetRun", "page1": "ListRuns", "keyset": "ListRuns", "pagenum": "ListRuns"}
        min_data = {k: _answers(grpc_port, rs, method[k]) for k, rs in requests.items()}
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = RunServiceStub(channel)
            got = stub.GetRun(requests["get"][0])
            assert got.run.id == grpc_ids[0]
            first, keyset, numbered = (
                stub.ListRuns(requests[k][0]) for k in ("page1", "keyset", "pagenum")
            )
            assert len(first.runs) == 10 and len(keyset.runs) == 10
            if [r.id for r in keyset.runs] != [r.id for r in numbered.runs]:
                raise RuntimeError(
                    f"keyset page after depth {depth} and page {page} differ: "
                    f"{[r.id for r in keyset.runs]} vs {[r.id for r in numbered.runs]}"
                )
            out["sizes"] = {
                "get_run_bytes": statistics.median(min_data["get"]) - 5,
                "list_page_bytes": min_data["page1"][0] - 5,
                "keyset_page_bytes": min_data["keyset"][0] - 5,
                "pagenum_page_bytes": min_data["pagenum"][0] - 5,
                "tasks_per_run": statistics.median(
                    len(stub.GetRun(pb.GetRunRequest(run_id=i)).run.tasks) for i in grpc_ids[:10]
                ),
            }
        sides = [(http_port, "spur-runs"), (peer_port, "PySpur")]
        if base:
            sides.append((base[2], "baseline"))
            base_min = {k: _answers(base[1], requests[k], method[k]) for k in ("get", "page1")}
            out["sizes"]["baseline_get_run_bytes"] = statistics.median(base_min["get"]) - 5
            out["sizes"]["baseline_list_page_bytes"] = base_min["page1"][0] - 5
        for path in (f"/run/{ids[0]}/", "/run/?page=1&page_size=10"):
            for port, who in sides:
                status, data = http_get(port, path)
                if status != 200:
                    raise RuntimeError(f"{who} GET {path}: HTTP {status}: {data[:300]!r}")
                out["sizes"][f"{who} GET {path.replace(ids[0], '{id}')} bytes"] = len(data)

        floor_sync, floor_aio = floors["sync"], floors["aio"]
        seg = settings.segments
        ours_pid, peer_pid = (lambda: ours.pid), (lambda: peer.pid)

        def grpc_load(
            port: int, path: str, key: str, sizes: dict[str, list[int]] = min_data
        ) -> GrpcLoad:
            return GrpcLoad(port, path, bodies[key][:seg], sizes[key][:seg])

        cases = {
            "floor_sync": Case("floor_sync", "floor: empty unary, sync grpcio", "floor",
                               floor_load(floor_sync[1], DATA / "work", seg), lambda: floor_sync[0].pid),
            "grpc_get": Case("grpc_get", "GetRun, random run (gRPC)", "spur-runs gRPC",
                             grpc_load(grpc_port, GET_RUN_PATH, "get"), ours_pid),
            "floor_aio": Case("floor_aio", "floor: empty unary, aio grpcio", "floor",
                              floor_load(floor_aio[1], DATA / "work", seg), lambda: floor_aio[0].pid),
            "http_get": Case("http_get", "GET /run/{id}/, random run (HTTP)", "spur-runs HTTP",
                             HttpLoad(http_port, "/run/{id}/", ids_file), ours_pid),
            "pyspur_get": Case("pyspur_get", "PySpur GET /run/{id}/, random run", "PySpur",
                               HttpLoad(peer_port, "/run/{id}/", ids_file), peer_pid),
            "grpc_list": Case("grpc_list", "ListRuns page 1, page_size 10, FULL (gRPC)", "spur-runs gRPC",
                              grpc_load(grpc_port, LIST_RUNS_PATH, "page1"), ours_pid),
            "http_list": Case("http_list", "GET /run/?page=1&page_size=10 (HTTP)", "spur-runs HTTP",
                              HttpLoad(http_port, "/run/?page=1&page_size=10", None), ours_pid),
            "pyspur_list": Case("pyspur_list", "PySpur GET /run/?page=1&page_size=10", "PySpur",
                                HttpLoad(peer_port, "/run/?page=1&page_size=10", None), peer_pid),
            "grpc_keyset": Case("grpc_keyset", f"ListRuns keyset token, depth {depth:,} (gRPC)", "spur-runs gRPC",
                                grpc_load(grpc_port, LIST_RUNS_PATH, "keyset"), ours_pid),
            # 2 in flight: the server reads at most half its 4 RPC threads'
            # worth of page-number pages this deep at once, and refuses more
            # (api/service.py HEAVY_OFFSET).
            "grpc_pagenum": Case("grpc_pagenum", f"ListRuns page={page:,}, same depth (gRPC), 2 in flight", "spur-runs gRPC",
                                 replace(grpc_load(grpc_port, LIST_RUNS_PATH, "pagenum"), clients=1, streams=2), ours_pid),
        }  # fmt: skip
        # Grouped so that each comparison is measured back to back.
        order = ["floor_sync", "grpc_get", "floor_aio", "http_get", "pyspur_get",
                 "grpc_list", "http_list", "pyspur_list", "grpc_keyset", "grpc_pagenum"]  # fmt: skip
        if base:
            base_process, base_grpc, base_http = base
            base_pid = lambda: base_process.pid  # noqa: E731
            cases |= {
                "base_get": Case("base_get", "GetRun, random run (gRPC), baseline", "baseline gRPC",
                                 grpc_load(base_grpc, GET_RUN_PATH, "get", base_min), base_pid),
                "base_http_get": Case("base_http_get", "GET /run/{id}/, random run (HTTP), baseline", "baseline HTTP",
                                      HttpLoad(base_http, "/run/{id}/", ids_file), base_pid),
                "base_list": Case("base_list", "ListRuns page 1, page_size 10, FULL (gRPC), baseline", "baseline gRPC",
                                  grpc_load(base_grpc, LIST_RUNS_PATH, "page1", base_min), base_pid),
            }  # fmt: skip
            # Each A/B pair next to each other in every round.
            order.insert(order.index("grpc_get") + 1, "base_get")
            order.insert(order.index("http_get") + 1, "base_http_get")
            order.insert(order.index("grpc_list") + 1, "base_list")
        # The HTTP GETs of a round all draw the same random sequence.
        for key in ("pyspur_get", "base_http_get"):
            if key in cases:
                cases[key].load.seed = cases["http_get"].load.seed  # type: ignore[union-attr]
        run_rounds([cases[k] for k in order], settings, work, db.name)
        c = cases
        out["cases"] = {k: c[k].summary() for k in order}
        out["ratios"] = {
            "get_vs_floor_sync": per_round_ratio(c["grpc_get"], c["floor_sync"]),
            "get_vs_floor_aio": per_round_ratio(c["grpc_get"], c["floor_aio"]),
            "floor_cpu_share": per_round_ratio(c["floor_sync"], c["grpc_get"], "cpu_us"),
            "http_get_vs_pyspur": per_round_ratio(c["http_get"], c["pyspur_get"]),
            "http_get_vs_pyspur_cpu": per_round_ratio(c["pyspur_get"], c["http_get"], "cpu_us"),
            "grpc_list_vs_pyspur": per_round_ratio(c["grpc_list"], c["pyspur_list"]),
            "grpc_list_vs_pyspur_cpu": per_round_ratio(c["pyspur_list"], c["grpc_list"], "cpu_us"),
            "http_list_vs_pyspur": per_round_ratio(c["http_list"], c["pyspur_list"]),
            "http_list_vs_pyspur_cpu": per_round_ratio(c["pyspur_list"], c["http_list"], "cpu_us"),
            "page1_vs_keyset": per_round_ratio(c["grpc_list"], c["grpc_keyset"]),
            "keyset_vs_page1_p50": per_round_ratio(c["grpc_keyset"], c["grpc_list"], "p50_ms"),
            "keyset_vs_page1_cpu": per_round_ratio(c["grpc_keyset"], c["grpc_list"], "cpu_us"),
            "page1_vs_pagenum": per_round_ratio(c["grpc_list"], c["grpc_pagenum"]),
            "floor_aio_vs_sync": per_round_ratio(c["floor_aio"], c["floor_sync"]),
        }
        if base:
            out["ratios"] |= {
                "list_cpu_vs_baseline": per_round_ratio(c["grpc_list"], c["base_list"], "cpu_us"),
                "list_vs_baseline": per_round_ratio(c["grpc_list"], c["base_list"]),
                "get_cpu_vs_baseline": per_round_ratio(c["grpc_get"], c["base_get"], "cpu_us"),
                "get_vs_baseline": per_round_ratio(c["grpc_get"], c["base_get"]),
                "http_get_cpu_vs_baseline": per_round_ratio(
                    c["http_get"], c["base_http_get"], "cpu_us"
                ),
                "http_get_vs_baseline": per_round_ratio(c["http_get"], c["base_http_get"]),
            }
        if with_workers:
            out["workers"] = bench_workers(servers, cases, settings, work, db)
        out["memory"] = {"spur-runs": memory(ours.pid), "PySpur": memory(peer.pid)}
        if base:
            out["memory"]["baseline"] = memory(base[0].pid)
        log(f"{db.name}: spur-runs RSS {out['memory']['spur-runs']}")
        return out
    finally:
        if base:
            procs.stop(base[0])
        procs.stop(peer)
        procs.stop(ours)


def bench_workers(
    servers: Servers, cases: dict[str, Case], settings: Settings, work: Path, db: Database
) -> dict[str, Any]:
    """--workers 2 against the single server already running, same loads."""
    two, grpc_port, http_port = servers.start_ours(workers=2, name="spur-runs-workers2")
    try:
        one_get, one_http = cases["grpc_get"], cases["http_get"]
        assert isinstance(one_get.load, GrpcLoad) and isinstance(one_http.load, HttpLoad)
        two_pid: Callable[[], int] = lambda: two.pid  # noqa: E731
        g1 = Case(
            "w1_grpc", "GetRun random, 1 process", "spur-runs gRPC", one_get.load, one_get.pid
        )
        g2 = Case("w2_grpc", "GetRun random, --workers 2", "spur-runs gRPC",
                  GrpcLoad(grpc_port, GET_RUN_PATH, one_get.load.bodies, one_get.load.min_data), two_pid)  # fmt: skip
        h1 = Case("w1_http", "GET /run/{id}/ random, 1 process", "spur-runs HTTP",
                  HttpLoad(one_http.load.port, "/run/{id}/", one_http.load.ids), one_http.pid)  # fmt: skip
        h2 = Case("w2_http", "GET /run/{id}/ random, --workers 2", "spur-runs HTTP",
                  HttpLoad(http_port, "/run/{id}/", one_http.load.ids), two_pid)  # fmt: skip
        all_cases = [g1, g2, h1, h2]
        pids = [
            p
            for p in descendants(two.pid)
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()  # not the resource tracker
        ]
        before = [cpu_seconds(p) for p in pids]
        run_rounds(all_cases, settings, work, f"{db.name} workers")
        after = [cpu_seconds(p) for p in pids]
        return {
            "cases": {c.key: c.summary() for c in all_cases},
            "grpc_ratio": per_round_ratio(g2, g1),
            "http_ratio": per_round_ratio(h2, h1),
            "worker_cpu_split_s": [a - b for a, b in zip(after, before, strict=True)],
            "memory": {str(p): memory(p) for p in [two.pid, *pids]},
        }
    finally:
        servers.procs.stop(two)
