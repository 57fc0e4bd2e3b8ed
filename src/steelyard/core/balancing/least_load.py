"""Load-aware balancers: least connections, least response time (peak EWMA), power of two.

They read the live ``active`` count (and latency estimate) of the ServerState objects they were
built with; leases keep those up to date, so a snapshot stays correct between rebuilds.

least_connections: the server with the fewest in-flight requests (HTTP) or open connections
(TCP) per unit of weight (HAProxy ``leastconn``, nginx ``least_conn``). Exact, so O(n) per pick:
the scan runs in C (``map`` over attribute getters, ``min``, ``list.index``). Ties are broken in
turn: the search for the minimum starts just after the previous winner, so idle servers share
evenly instead of the first one taking everything.

least_response_time: cost = peak-EWMA latency x (in-flight + 1) / weight (Finagle's and
Linkerd's peak EWMA load metric; the estimate lives in core/load.PeakEwma). A server with no
sample yet is costed at the mean estimate of the servers that have one, so it is neither starved
(cost infinity) nor flooded (cost 0); with no samples anywhere this is least connections on
(in-flight + 1) / weight. Estimates are floored at 1 microsecond so that a zero estimate (fake
clocks, instant answers) does not make in-flight counts irrelevant. Ties rotate as above.

power_of_two: two *distinct* candidates drawn with probability proportional to weight; the one
with less in-flight per weight wins, a tie goes to the first drawn (Mitzenmacher, "The Power of
Two Choices in Randomized Load Balancing", 2001; Envoy ``LEAST_REQUEST`` with choice_count 2).
The second draw samples the weight line with the first server's interval cut out, so it is
exact sampling without replacement in O(log n), no rejection loop.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from operator import add, attrgetter, mul, truediv

from steelyard.core.balancing.base import BalancerSettings, PickContext, ServerState
from steelyard.core.balancing.random_choice import positive, weighted_index

_active = attrgetter("active")
_ewma_value = attrgetter("ewma.value")
_ewma_samples = attrgetter("ewma.samples")
_INF = float("inf")
MIN_ESTIMATE = 1e-6  # seconds


class LeastConnections:
    __slots__ = ("servers", "weights", "uniform", "index", "next")

    def __init__(
        self,
        servers: Sequence[ServerState],
        weights: Sequence[float],
        settings: BalancerSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.servers, self.weights = positive(servers, weights)
        # with equal weights, active counts order servers exactly as active / weight does
        self.uniform = len(set(self.weights)) <= 1
        self.index = {s.name: i for i, s in enumerate(self.servers)}
        self.next = 0

    def pick(self, ctx: PickContext) -> ServerState | None:
        servers = self.servers
        if not servers:
            return None
        if self.uniform:
            loads: list[float] = list(map(_active, servers))
        else:
            loads = list(map(truediv, map(_active, servers), self.weights))
        if ctx.exclude:
            index = self.index
            for name in ctx.exclude:
                i = index.get(name)
                if i is not None:
                    loads[i] = _INF
        least = min(loads)
        if least == _INF:
            return None
        try:
            i = loads.index(least, self.next)
        except ValueError:
            i = loads.index(least)
        self.next = i + 1 if i + 1 < len(servers) else 0
        return servers[i]

    def __repr__(self) -> str:
        state = ", ".join(
            f"{s.name}={s.active}/{w:g}" for s, w in zip(self.servers, self.weights, strict=True)
        )
        return f"LeastConnections({state}, next={self.next})"


class LeastResponseTime:
    __slots__ = ("servers", "weights", "inverse", "ones", "index", "next")

    def __init__(
        self,
        servers: Sequence[ServerState],
        weights: Sequence[float],
        settings: BalancerSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.servers, self.weights = positive(servers, weights)
        self.inverse = [1.0 / w for w in self.weights]
        self.ones = [1] * len(self.servers)
        self.index = {s.name: i for i, s in enumerate(self.servers)}
        self.next = 0

    def estimates(self) -> list[float]:
        """The latency estimate used for each server (seconds), unknowns filled in."""
        servers = self.servers
        values: list[float] = list(map(_ewma_value, servers))
        samples: list[int] = list(map(_ewma_samples, servers))
        unknown = samples.count(0)
        if unknown:
            known = len(servers) - unknown
            if known:
                fill = sum(v for v, k in zip(values, samples, strict=True) if k) / known
            else:
                fill = 1.0  # nobody measured yet: all equal, cost ~ (in-flight + 1) / weight
            values = [v if k else fill for v, k in zip(values, samples, strict=True)]
        if min(values) < MIN_ESTIMATE:
            values = [v if v > MIN_ESTIMATE else MIN_ESTIMATE for v in values]
        return values

    def pick(self, ctx: PickContext) -> ServerState | None:
        servers = self.servers
        if not servers:
            return None
        values = self.estimates()
        pending = map(add, map(_active, servers), self.ones)
        costs = list(map(mul, map(mul, values, pending), self.inverse))
        if ctx.exclude:
            index = self.index
            for name in ctx.exclude:
                i = index.get(name)
                if i is not None:
                    costs[i] = _INF
        least = min(costs)
        if least == _INF:
            return None
        try:
            i = costs.index(least, self.next)
        except ValueError:
            i = costs.index(least)
        self.next = i + 1 if i + 1 < len(servers) else 0
        return servers[i]

    def __repr__(self) -> str:
        state = ", ".join(
            f"{s.name}={s.ewma.value * 1000:.3f}ms x {s.active + 1} / {w:g}"
            for s, w in zip(self.servers, self.weights, strict=True)
        )
        return f"LeastResponseTime({state}, next={self.next})"


class PowerOfTwo:
    __slots__ = ("servers", "weights", "cum", "total", "rng")

    def __init__(
        self,
        servers: Sequence[ServerState],
        weights: Sequence[float],
        settings: BalancerSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.servers, self.weights = positive(servers, weights)
        self.cum = list(accumulate(self.weights))
        self.total = self.cum[-1] if self.cum else 0.0
        self.rng = rng if rng is not None else random.Random()

    def pick(self, ctx: PickContext) -> ServerState | None:
        servers = self.servers
        if ctx.exclude:
            return self._pick_with_exclusions(ctx.exclude)
        if len(servers) < 2:
            return servers[0] if servers else None
        i, j = self._draw_two(self.cum, self.total)
        a = servers[i]
        b = servers[j]
        weights = self.weights
        return b if b.active / weights[j] < a.active / weights[i] else a

    def _draw_two(self, cum: list[float], total: float) -> tuple[int, int]:
        """Two distinct indices, each drawn in proportion to weight (without replacement)."""
        rnd = self.rng.random
        i = weighted_index(cum, rnd() * total)
        lo = cum[i - 1] if i else 0.0
        width = cum[i] - lo
        v = rnd() * (total - width)
        if v >= lo:
            v += width
        j = bisect_right(cum, v)
        last = len(cum) - 1
        if j > last:
            j = last
        if j == i:  # only by rounding at an interval edge
            j = i + 1 if i < last else i - 1
        return i, j

    def _pick_with_exclusions(self, exclude: frozenset[str]) -> ServerState | None:
        rest = [i for i, s in enumerate(self.servers) if s.name not in exclude]
        if len(rest) < 2:
            return self.servers[rest[0]] if rest else None
        cum = list(accumulate(self.weights[i] for i in rest))
        x, y = self._draw_two(cum, cum[-1])
        i, j = rest[x], rest[y]
        a, b = self.servers[i], self.servers[j]
        return b if b.active / self.weights[j] < a.active / self.weights[i] else a

    def __repr__(self) -> str:
        state = ", ".join(
            f"{s.name}={s.active}/{w:g}" for s, w in zip(self.servers, self.weights, strict=True)
        )
        return f"PowerOfTwo({state})"
