"""Smooth weighted round robin (nginx, ngx_http_upstream_round_robin.c, 2012).

Each pick: every server's current weight grows by its effective weight; the server with the
largest current weight wins and gives back the total. Weights 5,1,1 give a a b a c a a, and
over any full cycle (sum of weights picks) each server is chosen exactly weight times.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from steelyard.core.balancing.base import BalancerSettings, PickContext, ServerState


class SmoothWeightedRoundRobin:
    __slots__ = ("servers", "weights", "current", "total")

    def __init__(
        self,
        servers: Sequence[ServerState],
        weights: Sequence[float],
        settings: BalancerSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.servers = list(servers)
        self.weights = list(weights)
        self.current = [0.0] * len(self.servers)
        self.total = float(sum(self.weights))

    def pick(self, ctx: PickContext) -> ServerState | None:
        servers = self.servers
        if not servers:
            return None
        current = self.current
        weights = self.weights
        exclude = ctx.exclude
        best = -1
        best_value = 0.0
        total = 0.0
        for i in range(len(servers)):
            if exclude and servers[i].name in exclude:
                continue
            value = current[i] + weights[i]
            current[i] = value
            total += weights[i]
            if best < 0 or value > best_value:
                best = i
                best_value = value
        if best < 0:
            return None
        current[best] -= total
        return servers[best]

    def __repr__(self) -> str:
        names = [s.name for s in self.servers]
        return f"SmoothWeightedRoundRobin({names}, current={self.current})"
