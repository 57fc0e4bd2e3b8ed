"""Workload generation: every random number of a run, drawn once per scenario.

All algorithms of a comparison see the very same arrivals, keys, service demands and
connection durations ("common random numbers"), so a difference between them comes from the
balancing, not from the dice. A request's service demand is one uniform/normal/exponential
draw that each server maps through its own distribution: a big request is big everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steelyard.simulate.scenario import Distribution, Scenario, ScenarioError


@dataclass(slots=True)
class Workload:
    """The arrays one run replays (plain lists: indexing them is what the event loop does)."""

    times: list[float]  # arrival times, non-decreasing, seconds
    key_ids: list[int]  # index into `keys`
    keys: list[bytes]  # distinct keys
    long: list[bool] | None  # None: no long-lived connections
    durations: list[float] | None  # long-lived connection durations
    service: dict[str, list[float]]  # server name -> service time of request i on it
    expected_length: float  # seconds the arrivals span (for `at: 50%`)

    def __len__(self) -> int:
        return len(self.times)


def _draw(dist: Distribution, u: np.ndarray, z: np.ndarray, e: np.ndarray) -> np.ndarray:
    if dist.kind == "constant":
        return np.full(len(u), dist.value)
    if dist.kind == "exponential":
        return e * dist.value
    if dist.kind == "lognormal":
        return np.exp(math.log(max(dist.value, 1e-12)) + dist.sigma * z)
    samples = np.asarray(dist.samples, dtype=float)
    idx = np.minimum((u * len(samples)).astype(np.int64), len(samples) - 1)
    return samples[idx]


def read_trace(path: Path, limit: int) -> tuple[list[float], list[str], list[float]]:
    """`time,key,service_time` per line (seconds); `#` comments and a header line skipped."""
    times: list[float] = []
    keys: list[str] = []
    service: list[float] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the trace: {exc.strerror}") from None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            raise ScenarioError(f"{path}:{lineno}: expected time,key,service_time")
        try:
            t, s = float(parts[0]), float(parts[2])
        except ValueError:
            if not times:  # a header line
                continue
            raise ScenarioError(f"{path}:{lineno}: time and service_time are seconds") from None
        if s < 0 or (times and t < times[-1]):
            raise ScenarioError(f"{path}:{lineno}: times must not decrease; service >= 0")
        times.append(t)
        keys.append(parts[1])
        service.append(s)
        if len(times) >= limit:
            break
    if not times:
        raise ScenarioError(f"{path}: the trace has no requests")
    return times, keys, service


def _arrival_times(scenario: Scenario, n: int, rng: np.random.Generator) -> np.ndarray:
    a = scenario.workload.arrivals
    if a.kind == "poisson":
        return np.cumsum(rng.exponential(1.0 / a.rate, n))
    # bursts: thinning of a Poisson process at the peak rate
    peak = max(a.rate, a.burst_rate)
    out: list[np.ndarray] = []
    got = 0
    t0 = 0.0
    while got < n:
        chunk = max(1024, int((n - got) * peak / max(a.rate, 1e-9) * 1.2))
        cand = t0 + np.cumsum(rng.exponential(1.0 / peak, chunk))
        t0 = float(cand[-1])
        in_burst = np.mod(cand, a.burst_every) < a.burst_length if a.burst_every > 0 else False
        rate = np.where(in_burst, a.burst_rate, a.rate)
        keep = cand[rng.random(chunk) < rate / peak]
        out.append(keep)
        got += len(keep)
    return np.concatenate(out)[:n]


def generate(scenario: Scenario, n: int, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    wl = scenario.workload
    specs = scenario.all_servers()
    trace_keys: list[str] | None = None
    trace_service: list[float] | None = None
    if wl.arrivals.kind == "trace":
        assert wl.arrivals.trace is not None
        t_list, trace_keys, trace_service = read_trace(wl.arrivals.trace, n)
        n = len(t_list)
        times = np.asarray(t_list, dtype=float)
    else:
        times = _arrival_times(scenario, n, rng)
    # keys
    if trace_keys is not None:
        distinct: dict[str, int] = {}
        key_ids = [distinct.setdefault(k, len(distinct)) for k in trace_keys]
        keys = [k.encode() for k in distinct]
    else:
        kc = wl.keys
        if kc.distribution == "zipf" and kc.count > 1:
            ranks = np.arange(1, kc.count + 1, dtype=float)
            p = ranks ** (-kc.exponent)
            ids = rng.choice(kc.count, size=n, p=p / p.sum())
        else:
            ids = rng.integers(0, kc.count, size=n)
        if kc.hot_fraction > 0:
            hot = rng.random(n) < kc.hot_fraction
            if kc.count > 1 and kc.distribution == "uniform":
                ids = np.where(ids == 0, rng.integers(1, kc.count, size=n), ids)
            ids = np.where(hot, 0, ids)
        key_ids = ids.astype(np.int64).tolist()
        keys = [b"key-%d" % i for i in range(kc.count)]
    # service demands: one set of draws, mapped through each server's distribution
    u = rng.random(n)
    z = rng.standard_normal(n)
    e = rng.standard_exponential(n)
    service: dict[str, list[float]] = {}
    for spec in specs:
        if trace_service is not None:
            service[spec.name] = trace_service
        else:
            service[spec.name] = _draw(spec.service_time, u, z, e).tolist()
    long: list[bool] | None = None
    durations: list[float] | None = None
    ll = wl.long_lived
    if ll.fraction > 0:
        flags = rng.random(n) < ll.fraction
        long = flags.tolist()
        u2 = rng.random(n)
        drawn = _draw(ll.duration, u2, rng.standard_normal(n), rng.standard_exponential(n))
        durations = drawn.tolist()
    length = float(times[-1]) if n else 0.0
    return Workload(
        times=times.tolist(),
        key_ids=key_ids,
        keys=keys,
        long=long,
        durations=durations,
        service=service,
        expected_length=length,
    )
