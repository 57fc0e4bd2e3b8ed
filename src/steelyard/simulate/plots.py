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


def _save(fig: Any, path: Path) -> None:
    """PNG with a 128-colour palette: a third of the size, no visible difference."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    with Image.open(buf) as image:
        image.convert("RGB").quantize(colors=128).save(path, format="PNG", optimize=True)


def latency_cdf(result: ScenarioResult, path: Path) -> Path:
    """Latency CDF per algorithm: log time axis, logit probability axis (the tail visible)."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=80)
    low = math.inf
    for name, r in result.entries.items():
        if not r.latencies:
            continue
        arr = np.sort(np.asarray(r.latencies) * 1000.0)
        p = (np.arange(len(arr)) + 0.5) / len(arr)
        low = min(low, float(arr[int(len(arr) * 0.001)]))
        if len(arr) > 3000:  # thin out, keeping every point of the last 1%
            head = np.linspace(0, len(arr) * 0.99, 2000).astype(int)
            tail = np.arange(int(len(arr) * 0.99), len(arr), max(1, len(arr) // 100000))
            idx = np.unique(np.concatenate([head, tail]))
            arr, p = arr[idx], p[idx]
        ax.plot(np.maximum(arr, 1e-3), p, label=name, linewidth=1.4)
    ax.set_xscale("log")
    ax.set_yscale("logit")
    ax.set_ylim(0.01, 0.9999)
    if math.isfinite(low):
        ax.set_xlim(left=max(low, 1e-3))
    ax.set_yticks([0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999])
    ax.set_yticklabels(["1%", "10%", "50%", "90%", "99%", "99.9%", "99.99%"])
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("requests at most this slow")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"{result.scenario.name}: latency CDF ({result.requests} requests)")
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.92)
    _save(fig, path)
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
    # fixed margins: tight_layout costs more than the whole simulation of a small run
    top = 1 - 0.75 / (2.3 * rows)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.35 / rows, top=top, hspace=0.35)
    _save(fig, path)
    plt.close(fig)
    return path


def write_plots(result: ScenarioResult, out_dir: Path, prefix: str = "") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        latency_cdf(result, out_dir / f"{prefix}latency_cdf.png"),
        in_flight(result, out_dir / f"{prefix}in_flight.png"),
    ]
