"""The benchmark scripts share code: what one script's helpers read from `args`, every script
that calls them must define (make bench's L4 part once failed on a missing --max-steal)."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module(name: str) -> ModuleType:
    """A script of bench/ as a module (bench/ is not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def test_tcp_bench_defines_every_option_the_shared_helpers_read() -> None:
    http_bench = bench_module("http_bench")
    tcp_bench = bench_module("tcp_bench")
    shared = [http_bench.measure_quiet, http_bench.disturbed]
    read = {name for fn in shared for name in re.findall(r"\bargs\.(\w+)", inspect.getsource(fn))}
    assert {"max_others", "max_steal", "duration"} <= read  # (the scan finds them)
    tcp_args = vars(tcp_bench.parse_args([]))
    http_args = vars(http_bench.parse_args([]))
    assert read <= set(http_args)
    assert read <= set(tcp_args), sorted(read - set(tcp_args))


def _summary(http_bench: object, target: str, mode: str, rps: float, steal: float) -> object:
    return http_bench.Summary(  # type: ignore[attr-defined]
        target=target, mode=mode, runs=5, rps_median=rps, rps_min=rps, rps_max=rps,
        p50_ms=1.0, p99_ms=2.0, cpu_us_per_req=1e6 / rps, lb_core_busy=1.0, others=0.0,
        client_core_busy=0.5, errors=0, steal=steal,
    )  # fmt: skip


def test_a_verdict_under_heavy_steal_is_void() -> None:
    http_bench = bench_module("http_bench")
    args = http_bench.parse_args([])

    def verdicts(steal_sy: float, steal_ha: float) -> list[str]:
        rows = [
            _summary(http_bench, "haproxy", "close", 10_000, steal_ha),
            _summary(http_bench, "nginx", "close", 10_000, 0.0),
            _summary(http_bench, "steelyard", "close", 8_000, steal_sy),
        ]
        text = http_bench.markdown(rows, {}, args, [])
        return [
            line
            for line in text.splitlines()
            if line.startswith(("| req/s | close", "| p99 latency | close"))
        ]

    quiet = verdicts(0.01, 0.02)
    assert quiet and all(line.endswith("| meets |") for line in quiet), quiet
    for noisy in (verdicts(0.30, 0.0), verdicts(0.0, 0.95)):
        assert noisy and all("| void: steal" in line for line in noisy), noisy
        assert "(would be: meets)" in noisy[0]
