"""Throughput per case, from bench/results/results.json, as a PNG.

    python bench/lib/chart.py bench/results/results.json bench/results/throughput.png

Run by bench/run.py with bench/.data/venv's python (matplotlib lives there).
One panel per database; a horizontal bar per case (median req/s over the
rounds, log scale), the whisker spanning the slowest to the fastest round;
colours by side: floor, spur-runs gRPC, spur-runs HTTP, the baseline's, PySpur.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

COLOURS = {
    "floor": "#9e9e9e",
    "spur-runs gRPC": "#1f77b4",
    "spur-runs HTTP": "#2ca02c",
    "PySpur": "#d62728",
    "baseline gRPC": "#aec7e8",  # the --baseline ref's server, lighter than ours
    "baseline HTTP": "#98df8a",
}


def main(source: Path, target: Path) -> None:
    results = json.loads(source.read_text())
    panels = []
    for d in results["datasets"]:
        panels.append((f"{d['name']} runs", list(d["cases"].values())))
        if "workers" in d:
            panels.append(
                (f"{d['name']} runs: --workers 2 vs 1", list(d["workers"]["cases"].values()))
            )
    rows = sum(len(cases) for _, cases in panels)
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(11, 1.0 + 0.42 * rows + 0.9 * len(panels)),
        gridspec_kw={"height_ratios": [len(c) for _, c in panels]},
        squeeze=False,
    )
    everything = [c for _, cases in panels for c in cases]
    low = min(c["rps_min"] for c in everything) / 2
    high = max(c["rps_max"] for c in everything) * 8
    for ax, (title, cases) in zip(axes[:, 0], panels, strict=True):
        labels = [c["label"] for c in cases]
        values = [c["rps"] for c in cases]
        spans = [
            [c["rps"] - c["rps_min"] for c in cases],
            [c["rps_max"] - c["rps"] for c in cases],
        ]
        y = range(len(cases))
        ax.barh(
            y,
            values,
            xerr=spans,
            color=[COLOURS.get(c["side"], "#555555") for c in cases],
            error_kw={"ecolor": "#333333", "capsize": 2, "lw": 0.8},
        )
        for i, c in enumerate(cases):
            text = f"{c['rps']:,.0f}" if c["rps"] >= 100 else f"{c['rps']:,.1f}"
            ax.text(
                c["rps_max"] * 1.08,
                i,
                f"{text} req/s  (p50 {c['p50_ms']:.1f} ms)",
                va="center",
                fontsize=8,
            )
        ax.set_yticks(list(y), labels, fontsize=8.5)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        ax.set_title(title, fontsize=10, loc="left", fontweight="bold")
        ax.grid(axis="x", which="major", alpha=0.3)
    axes[-1, 0].set_xlabel(
        "requests per second (log scale; median of rounds, whisker: slowest–fastest round)"
    )
    meta = results.get("meta", {})
    fig.suptitle(
        "spur-runs vs PySpur vs the grpcio floor: throughput per case, 16 requests in flight\n"
        f"{meta.get('date', '')}, {meta.get('machine', {}).get('cores', '?')} cores "
        "shared with the load generators",
        fontsize=11,
        y=1 - 0.05 / fig.get_figheight(),
        va="top",
    )
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.85 / height))
    fig.legend(
        handles=[Patch(color=colour, label=side) for side, colour in COLOURS.items()],
        loc="upper center",
        fontsize=8.5,
        ncol=4,
        bbox_to_anchor=(0.5, 1 - 0.55 / height),
        frameon=False,
    )
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
