"""Terminal table and results.json for a scenario run."""

from __future__ import annotations

import json
from pathlib import Path

from steelyard.simulate.runner import ScenarioResult


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "-"
    if pct:
        return f"{value * 100:.1f}%"
    return f"{value:.1f}"


def table(result: ScenarioResult) -> str:
    """A readable table: one row per algorithm entry. Columns that say nothing for this run
    (no failures, no hashing, one instance) are left out."""
    entries = list(result.entries.values())
    failures = any(r.failed_hits or r.errors for r in entries)
    hashing = any(r.moved_keys is not None for r in entries)
    instances = any(r.instance_disagreement is not None for r in entries)
    head = ["algorithm", "p50 ms", "p90 ms", "p99 ms", "max ms", "share min..max", "peak in-flight"]
    if failures:
        head += ["failed hits", "errors"]
    if hashing:
        head.append("moved keys")
    if instances:
        head.append("disagree")
    rows: list[list[str]] = []
    for r in entries:
        pct = r.percentiles_ms()
        shares = list(r.share.values()) or [0.0]
        peaks = r.peak_in_flight
        busiest = max(peaks, key=lambda k: peaks[k]) if peaks else "-"
        row = [
            r.name,
            _fmt(pct["p50"]),
            _fmt(pct["p90"]),
            _fmt(pct["p99"]),
            _fmt(pct["max"]),
            f"{min(shares) * 100:.1f}..{max(shares) * 100:.1f}%",
            f"{peaks.get(busiest, 0)} ({busiest})",
        ]
        if failures:
            row += [_fmt(r.failed_hits, pct=True), _fmt(r.errors, pct=True)]
        if hashing:
            row.append(_fmt(r.moved_keys, pct=True))
        if instances:
            row.append(_fmt(r.instance_disagreement, pct=True))
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    sc = result.scenario
    out = [
        f"scenario {sc.name}: {result.requests} requests, seed {result.seed}",
        "",
        line(head),
        line(["-" * w for w in widths]),
    ]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def write_json(result: ScenarioResult, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    return path
