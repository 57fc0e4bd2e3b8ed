"""Weighted random choice: server i is picked with probability w_i / sum(w).

One uniform draw u in [0, W) and a binary search over the cumulative weights (inverse
transform sampling): O(log n) per pick, exact for float weights. Retries (``ctx.exclude``)
redraw a few times, then sample among the servers that are left.

Also the fallback of the hash balancers when a request has no hash key.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from typing import Final

from steelyard.core.balancing.base import BalancerSettings, PickContext, ServerState

_REDRAWS: Final = 4


def positive(
    servers: Sequence[ServerState], weights: Sequence[float]
) -> tuple[list[ServerState], list[float]]:
    """The servers that may take traffic (weight > 0), with their weights as floats."""
    if len(servers) != len(weights):
        raise ValueError(f"{len(servers)} servers but {len(weights)} weights")
    kept = [(s, float(w)) for s, w in zip(servers, weights, strict=True) if w > 0]
    return [s for s, _ in kept], [w for _, w in kept]


def weighted_index(cum: Sequence[float], u: float) -> int:
    """Index i with cum[i-1] <= u < cum[i] (clamped to the last index against rounding)."""
    i = bisect_right(cum, u)
    last = len(cum) - 1
    return i if i < last else last


class WeightedRandom:
    """The ``random`` algorithm."""

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
        if not servers:
            return None
        rnd = self.rng.random
        s = servers[weighted_index(self.cum, rnd() * self.total)]
        exclude = ctx.exclude
        if not exclude or s.name not in exclude:
            return s
        for _ in range(_REDRAWS):
            s = servers[weighted_index(self.cum, rnd() * self.total)]
            if s.name not in exclude:
                return s
        return self._pick_among_rest(exclude)

    def _pick_among_rest(self, exclude: frozenset[str]) -> ServerState | None:
        rest = [
            (s, w) for s, w in zip(self.servers, self.weights, strict=True) if s.name not in exclude
        ]
        if not rest:
            return None
        cum = list(accumulate(w for _, w in rest))
        return rest[weighted_index(cum, self.rng.random() * cum[-1])][0]

    def __repr__(self) -> str:
        shares = ", ".join(
            f"{s.name}={w:g}" for s, w in zip(self.servers, self.weights, strict=True)
        )
        return f"WeightedRandom({shares})"
