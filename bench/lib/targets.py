# ruff: noqa: E501  (table cells read better unbroken)
"""The targets, each a ratio measured side by side in one run, with PASS/MISS.

Issue 17 sets a "must reach" bound and an "aim" for four ratios; the targets
issue 5 passed (HTTP ÷ gRPC, the deep keyset page, the statement count, RSS,
seed time, --workers scaling) are kept as "keeps passing" rows.
"""

from __future__ import annotations

import statistics
from typing import Any

# Issue 17: (must reach, aim); None: no aim given.
GET_FLOOR = (0.35, 0.50)  # GetRun req/s ÷ the sync empty-RPC floor's
LIST_CPU_VS_BASELINE = (0.5, None)  # ListRuns FULL page server CPU, ours ÷ the baseline's (at most)
HTTP_GET_VS_PYSPUR = (4.0, 10.0)  # HTTP GET /run/{id}/ ÷ PySpur's, with the tasks.run_id index
LIST_VS_PYSPUR = (8.0, 20.0)  # gRPC ListRuns page of 10 ÷ PySpur's GET /run/ page of 10
# Issue 5, kept.
HTTP_VS_GRPC = 1.5  # HTTP GET costs at most 1.5x GetRun over gRPC (server CPU/req)
DEEP = 1.3  # keyset page at depth ~1M within 1.3x of page 1
RSS_MB = 150.0
SEED_S = 60.0


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def graded(value: float, bounds: tuple[float, float | None], at_least: bool = True) -> str:
    """PASS or MISS against "must reach", and whether the aim is reached too."""
    must, aim = bounds

    def reached(bound: float) -> bool:
        return value >= bound if at_least else value <= bound

    if not reached(must):
        return "MISS"
    return (
        "PASS"
        if aim is None
        else ("PASS, aim reached" if reached(aim) else "PASS (aim not reached)")
    )


def _bounds(bounds: tuple[float, float | None], fmt: str, at_least: bool = True) -> tuple[str, str]:
    sign = "≥" if at_least else "≤"
    must, aim = bounds
    return f"{sign} {fmt.format(must)}", (f"{sign} {fmt.format(aim)}" if aim is not None else "—")


def _row(
    target: str, where: str, measured: str, ratio: str, must: str, aim: str, verdict: str
) -> dict[str, Any]:
    return {"target": target, "where": where, "measured": measured, "ratio": ratio,
            "must": must, "aim": aim, "verdict": verdict}  # fmt: skip


def issue17_rows(d: dict[str, Any]) -> list[dict[str, Any]]:
    r, c, n = d["ratios"], d["cases"], d["name"]
    rows = []
    must, aim = _bounds(GET_FLOOR, "{:.0%}")
    rows.append(_row(
        "GetRun (random run), share of the sync empty-RPC floor (req/s)", n,
        f"{c['grpc_get']['rps']:,.0f} vs {c['floor_sync']['rps']:,.0f} req/s; "
        f"server CPU/call {c['grpc_get']['cpu_us']:,.0f} vs {c['floor_sync']['cpu_us']:,.0f} µs",
        f"{r['get_vs_floor_sync']:.1%} (CPU/call: the floor's is {r['floor_cpu_share']:.1%} of GetRun's)",
        must, aim, graded(r["get_vs_floor_sync"], GET_FLOOR),
    ))  # fmt: skip
    must, aim = _bounds(LIST_CPU_VS_BASELINE, "{:.1f}x", at_least=False)
    if "base_list" in c:
        rows.append(_row(
            f"ListRuns page of 10, FULL view, server CPU per page, A/B against {d.get('baseline', 'the baseline')}", n,
            f"{c['grpc_list']['cpu_us']:,.0f} vs {c['base_list']['cpu_us']:,.0f} µs/page "
            f"({c['grpc_list']['rps']:,.0f} vs {c['base_list']['rps']:,.0f} req/s)",
            f"{r['list_cpu_vs_baseline']:.2f}x (req/s {r['list_vs_baseline']:.2f}x)",
            must, aim, graded(r["list_cpu_vs_baseline"], LIST_CPU_VS_BASELINE, at_least=False),
        ))  # fmt: skip
        rows.append(_row(
            f"GetRun (random run), A/B against {d.get('baseline', 'the baseline')} (report)", n,
            f"{c['grpc_get']['rps']:,.0f} vs {c['base_get']['rps']:,.0f} req/s; "
            f"{c['grpc_get']['cpu_us']:,.0f} vs {c['base_get']['cpu_us']:,.0f} µs/call",
            f"req/s {r['get_vs_baseline']:.2f}x, server CPU/call {r['get_cpu_vs_baseline']:.2f}x",
            "—", "—", "report",
        ))  # fmt: skip
        rows.append(_row(
            f"HTTP GET /run/{{id}}/, A/B against {d.get('baseline', 'the baseline')} (report)", n,
            f"{c['http_get']['rps']:,.0f} vs {c['base_http_get']['rps']:,.0f} req/s; "
            f"{c['http_get']['cpu_us']:,.0f} vs {c['base_http_get']['cpu_us']:,.0f} µs/req",
            f"req/s {r['http_get_vs_baseline']:.2f}x, server CPU/req {r['http_get_cpu_vs_baseline']:.2f}x",
            "—", "—", "report",
        ))  # fmt: skip
    else:
        rows.append(_row("ListRuns page of 10, FULL view, server CPU per page, A/B against the baseline",
                         n, "not measured (--baseline none)", "—", must, aim, "n/a"))  # fmt: skip
    must, aim = _bounds(HTTP_GET_VS_PYSPUR, "{:g}x")
    rows.append(_row(
        "HTTP GET /run/{id}/ against PySpur's GET of the same runs, PySpur with the tasks.run_id index", n,
        f"{c['http_get']['rps']:,.0f} vs {c['pyspur_get']['rps']:,.0f} req/s",
        f"{r['http_get_vs_pyspur']:.1f}x (server CPU/req: PySpur's is {r['http_get_vs_pyspur_cpu']:.1f}x ours)",
        must, aim, graded(r["http_get_vs_pyspur"], HTTP_GET_VS_PYSPUR),
    ))  # fmt: skip
    must, aim = _bounds(LIST_VS_PYSPUR, "{:g}x")
    for side, key, ratio, label in (
        ("gRPC", "grpc_list", "grpc_list_vs_pyspur", "the target"),
        ("HTTP", "http_list", "http_list_vs_pyspur", "shown beside it"),
    ):
        rows.append(_row(
            f"ListRuns page of 10 over {side} against PySpur's GET /run/?page=1&page_size=10 ({label})", n,
            f"{c[key]['rps']:,.0f} vs {c['pyspur_list']['rps']:,.0f} req/s",
            f"{r[ratio]:.1f}x (server CPU/req: PySpur's is {r[ratio + '_cpu']:.1f}x ours)",
            must, aim, graded(r[ratio], LIST_VS_PYSPUR) if side == "gRPC" else "info: " + graded(r[ratio], LIST_VS_PYSPUR),
        ))  # fmt: skip
    return rows


def kept_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's targets, which must keep passing."""
    rows: list[dict[str, Any]] = []
    for d in results["datasets"]:
        r, c, n = d["ratios"], d["cases"], d["name"]
        http_cost = statistics.median(
            h["cpu_us"] / g["cpu_us"]
            for h, g in zip(c["http_get"]["rounds"], c["grpc_get"]["rounds"], strict=True)
        )
        rows.append(_row(
            "HTTP GET /run/{id}/ costs at most 1.5x GetRun over gRPC (server CPU/req)", n,
            f"{c['http_get']['cpu_us']:,.0f} vs {c['grpc_get']['cpu_us']:,.0f} us/req "
            f"({c['http_get']['rps']:,.0f} vs {c['grpc_get']['rps']:,.0f} req/s)",
            f"{http_cost:.2f}x (median of the per-round ratios)",
            f"≤ {HTTP_VS_GRPC}x", "—", verdict(http_cost <= HTTP_VS_GRPC),
        ))  # fmt: skip
        rows.append(_row(
            f"keyset page at depth {d['deep']['depth']:,} within 1.3x of page 1", n,
            f"{c['grpc_keyset']['rps']:,.0f} vs {c['grpc_list']['rps']:,.0f} req/s; "
            f"page-number at the same depth {c['grpc_pagenum']['rps']:,.1f} req/s",
            f"{r['page1_vs_keyset']:.2f}x slower (p50 {r['keyset_vs_page1_p50']:.2f}x, CPU {r['keyset_vs_page1_cpu']:.2f}x); "
            f"page-number: {r['page1_vs_pagenum']:.1f}x slower",
            f"≤ {DEEP}x", "—",
            verdict(r["page1_vs_keyset"] <= DEEP) if d["runs"] >= 1_000_000 else "info (target at 1M)",
        ))  # fmt: skip
    for s in results["statements"]:
        counts = {int(k): v["statements"] for k, v in s["runs"].items()}
        rows.append(_row(
            "GetRun SQL statements constant in tasks (10 vs 1,000)", s["database"],
            ", ".join(f"{k:,} tasks: {v}" for k, v in sorted(counts.items())),
            f"{counts[1000]} vs {counts[10]}", "equal", "—", verdict(counts[1000] == counts[10]),
        ))  # fmt: skip
    big = [d for d in results["datasets"] if d["runs"] >= 1_000_000]
    for d in big or results["datasets"]:
        rss = d["memory"]["spur-runs"]
        rows.append(_row(
            "server RSS after the whole bench", d["name"],
            f"VmRSS {rss['VmRSS']:.0f} MB (peak {rss['VmHWM']:.0f} MB)",
            f"{rss['VmRSS'] / RSS_MB:.2f}x the bound", f"≤ {RSS_MB:g} MB", "—",
            verdict(rss["VmRSS"] <= RSS_MB) + ("" if big else " (10k only: target is on 1M)"),
        ))  # fmt: skip
    sqlite_big = [d for d in big if d["backend"] == "sqlite"]
    for d in sqlite_big or [d for d in results["datasets"] if d["backend"] == "sqlite"]:
        rows.append(_row(
            f"spur-runs seed --runs {d['runs']:,} on SQLite", d["name"],
            f"{d['seed_s']:.1f} s wall (the command says {d['seed_reported_s']} s)",
            f"{d['seed_s'] / SEED_S:.2f}x the bound", f"≤ {SEED_S:g} s", "—",
            verdict(d["seed_s"] <= SEED_S) if sqlite_big else "n/a (1M not seeded)",
        ))  # fmt: skip
    for d in results["datasets"]:
        if "workers" in d:
            w = d["workers"]
            rows.append(_row(
                "--workers 2 vs 1 under the same load", d["name"],
                f"gRPC GetRun {w['cases']['w2_grpc']['rps']:,.0f} vs {w['cases']['w1_grpc']['rps']:,.0f} req/s; "
                f"HTTP GET {w['cases']['w2_http']['rps']:,.0f} vs {w['cases']['w1_http']['rps']:,.0f} req/s",
                f"gRPC {w['grpc_ratio']:.2f}x, HTTP {w['http_ratio']:.2f}x", "report", "—", "report",
            ))  # fmt: skip
    return rows


def targets_table(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """{"issue17": rows, "kept": rows}; each row: target, where, measured,
    ratio, must, aim, verdict."""
    return {
        "issue17": [row for d in results["datasets"] for row in issue17_rows(d)],
        "kept": kept_rows(results),
    }
