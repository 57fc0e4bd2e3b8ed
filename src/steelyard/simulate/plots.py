"""PNG plots with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from steelyard.simulate.runner import ScenarioResult


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def latency_cdf(result: ScenarioResult, path: Path) -> Path:
    """Latency CDF per algorithm, log-scaled time axis, the tail stretched (1 - p on log)."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=80)
    for name, r in result.entries.items():
        if not r.latencies:
            continue
        arr = np.sort(np.asarray(r.latencies) * 1000.0)
        arr = np.maximum(arr, 1e-3)
        p = np.arange(1, len(arr) + 1) / len(arr)
        # thin to ~2000 points, keeping the tail
        if len(arr) > 2000:
            idx = np.unique(
                np.concatenate(
                    [
                        np.linspace(0, len(arr) - 1, 1500).astype(int),
                        np.arange(len(arr) - 500, len(arr)),
                    ]
                )
            )
            arr, p = arr[idx], p[idx]
        ax.plot(arr, p, label=name, linewidth=1.4)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.0)
    ax.axhline(0.99, color="grey", linewidth=0.6, linestyle=":")
    ax.text(ax.get_xlim()[0], 0.99, " p99", va="bottom", fontsize=8, color="grey")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{result.scenario.name}: latency CDF ({result.requests} requests)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def in_flight(result: ScenarioResult, path: Path) -> Path:
    """In-flight requests per server over virtual time, one panel per algorithm."""
    plt = _pyplot()
    entries = list(result.entries.values())
    cols = 2 if len(entries) > 1 else 1
    rows = math.ceil(len(entries) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(5.5 * cols, 2.3 * rows), dpi=80, sharex=True, squeeze=False
    )
    for k, r in enumerate(entries):
        ax = axes[k // cols][k % cols]
        if r.samples:
            for j, name in enumerate(r.server_names):
                ax.plot(r.sample_times, [row[j] for row in r.samples], label=name, linewidth=1)
        ax.set_title(r.name, fontsize=10)
        ax.set_ylabel("in flight")
        ax.grid(True, alpha=0.25)
    for k in range(len(entries), rows * cols):
        axes[k // cols][k % cols].axis("off")
    for c in range(cols):
        axes[rows - 1][c].set_xlabel("virtual time (s)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=min(len(labels), 10))
    fig.suptitle(f"{result.scenario.name}: in-flight requests per server", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(result: ScenarioResult, out_dir: Path, prefix: str = "") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        latency_cdf(result, out_dir / f"{prefix}latency_cdf.png"),
        in_flight(result, out_dir / f"{prefix}in_flight.png"),
    ]
