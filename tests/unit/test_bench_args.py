"""The benchmark scripts share code: what one script's helpers read from `args`, every script
that calls them must define (make bench's L4 part once failed on a missing --max-steal)."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_tcp_bench_defines_every_option_the_shared_helpers_read() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import http_bench
        import tcp_bench
    finally:
        sys.path.remove(str(BENCH))
    shared = [http_bench.measure_quiet, http_bench.disturbed]
    read = {name for fn in shared for name in re.findall(r"\bargs\.(\w+)", inspect.getsource(fn))}
    assert {"max_others", "max_steal", "duration"} <= read  # (the scan finds them)
    tcp_args = vars(tcp_bench.parse_args([]))
    http_args = vars(http_bench.parse_args([]))
    assert read <= set(http_args)
    assert read <= set(tcp_args), sorted(read - set(tcp_args))
