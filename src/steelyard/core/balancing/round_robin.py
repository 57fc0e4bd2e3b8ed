"""Smooth weighted round robin (nginx, ngx_http_upstream_round_robin.c, 2012).

How this works: each pick, every server's current weight grows by its effective weight; the
server with the largest current weight wins (the first one on a tie) and gives back the total.
Weights 5,1,1 give a a b a c a a, and over any full cycle (sum of weights picks) each server is
chosen exactly weight times, spread out rather than in bursts.

Speed: a scan is O(n) per pick. With integer weights the sequence is periodic with period
W = sum(weights) (after a full cycle every current weight is back to 0), so the first cycle is
recorded while it is scanned and later picks replay it in O(1). Fractional weights (slow start)
keep scanning.

Retries (``ctx.exclude``): the rotation goes on; the turns of excluded servers are skipped (they
just had their chance) and the next server due that is not excluded gets the request, so the
sequence itself, and its exact counts per cycle, never change. After a few skipped turns we stop
stepping and take the non-excluded server with the largest current weight instead (a peek, so
that a heavy excluded server cannot make one retry cost many steps).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from operator import add

from steelyard.core.balancing.base import BalancerSettings, PickContext, ServerState

MAX_CYCLE = 1 << 16  # longest recorded cycle (entries); longer ones keep scanning
_SKIP_LIMIT = 8  # turns of excluded servers skipped before peeking instead


class SmoothWeightedRoundRobin:
    __slots__ = ("servers", "weights", "current", "total", "cycle", "cycle_len", "cursor")

    def __init__(
        self,
        servers: Sequence[ServerState],
        weights: Sequence[float],
        settings: BalancerSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if len(servers) != len(weights):
            raise ValueError(f"{len(servers)} servers but {len(weights)} weights")
        kept = [(s, float(w)) for s, w in zip(servers, weights, strict=True) if w > 0]
        self.servers = [s for s, _ in kept]
        self.weights = [w for _, w in kept]
        self.current = [0.0] * len(self.servers)
        self.total = float(sum(self.weights))
        integral = all(w.is_integer() for w in self.weights)
        self.cycle_len = int(self.total) if integral and self.total <= MAX_CYCLE else 0
        # the recorded sequence; complete (replayed) once len(cycle) == cycle_len
        self.cycle: list[ServerState] | None = [] if self.cycle_len else None
        self.cursor = 0

    def pick(self, ctx: PickContext) -> ServerState | None:
        servers = self.servers
        if not servers:
            return None
        exclude = ctx.exclude
        cycle = self.cycle
        if cycle is not None and len(cycle) == self.cycle_len:
            cursor = self.cursor
            s = cycle[cursor]
            cursor += 1
            if cursor == self.cycle_len:
                cursor = 0
            self.cursor = cursor
            if not exclude or s.name not in exclude:
                return s
            return self._retry_replay(exclude)
        s = self._step()
        if not exclude or s.name not in exclude:
            return s
        for _ in range(_SKIP_LIMIT):
            s = self._step()
            if s.name not in exclude:
                return s
        return self._peek(exclude)

    def _step(self) -> ServerState:
        """One step of the scan: the textbook algorithm (and recording of the cycle)."""
        current = list(map(add, self.current, self.weights))  # C-level passes, no Python loop
        best_value = max(current)
        best = current.index(best_value)  # the first maximum, as in nginx
        current[best] = best_value - self.total
        self.current = current
        s = self.servers[best]
        cycle = self.cycle
        if cycle is not None:
            cycle.append(s)
        return s

    def _retry_replay(self, exclude: frozenset[str]) -> ServerState | None:
        cycle = self.cycle
        assert cycle is not None
        n = self.cycle_len
        cursor = self.cursor
        for _ in range(min(_SKIP_LIMIT, n)):
            s = cycle[cursor]
            cursor += 1
            if cursor == n:
                cursor = 0
            if s.name not in exclude:
                self.cursor = cursor
                return s
        self.cursor = cursor
        # peek: the next non-excluded server in the cycle, without consuming turns
        for k in range(n):
            s = cycle[(cursor + k) % n]
            if s.name not in exclude:
                return s
        return None

    def _peek(self, exclude: frozenset[str]) -> ServerState | None:
        best: ServerState | None = None
        best_value = 0.0
        for s, c, w in zip(self.servers, self.current, self.weights, strict=True):
            if s.name in exclude:
                continue
            if best is None or c + w > best_value:
                best = s
                best_value = c + w
        return best

    def __repr__(self) -> str:
        names = [s.name for s in self.servers]
        if self.cycle is not None and len(self.cycle) == self.cycle_len:
            return f"SmoothWeightedRoundRobin({names}, replaying cycle of {self.cycle_len} at {self.cursor})"
        return f"SmoothWeightedRoundRobin({names}, current={self.current})"
