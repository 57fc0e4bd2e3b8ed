"""Smooth weighted round robin (nginx, ngx_http_upstream_round_robin.c, 2012).

How this works: each pick, every server's current weight grows by its effective weight; the
server with the largest current weight wins (the first one on a tie) and gives back the total.
Weights 5,1,1 give a a b a c a a, and over any full cycle (sum of weights picks) each server is
chosen exactly weight times, spread out rather than in bursts.

Speed: servers of equal weight take their turns in index order, so a step compares one
candidate per distinct weight (see _Groups), in integer arithmetic when the weights are
multiples of 1/64 (integers, and slow start's ramps in steps of 1/32): exactly the scan's
sequence. That sequence is periodic with period W = sum of the weights in integer units (after
a full cycle every current weight is back to 0), so the first cycle is recorded while it is
stepped through and later picks replay it in O(1). Other fractions keep the O(n) float scan.

Slow start: a step of _Groups is O(distinct weights), and while many servers are in slow
start at different points of their ramps there can be ~100 of them (up to 32 ramp levels times
the configured weights): ~4 us per pick at 300 servers until the cycle is recorded, and the
backend rebuilds the balancer every ramp step (up to once a second), so with a long cycle most
picks are first-cycle picks. A snapshot built while servers ramp (settings.ramping) with more
than GROUPS_LIMIT distinct weights therefore steps its cycle in Webster's order instead
(_Webster: the Sainte-Lague highest-averages sequence, a heap, O(log distinct weights)): the
same exact counts per cycle and evenly spread, but not nginx's order pick for pick. Configured
weights alone, however many distinct, always give nginx's order.

Retries (``ctx.exclude``): the rotation goes on; the turns of excluded servers are skipped (they
just had their chance) and the next server due that is not excluded gets the request, so the
sequence itself, and its exact counts per cycle, never change. After a few skipped turns we stop
stepping and take the non-excluded server with the largest current weight instead (a peek, so
that a heavy excluded server cannot make one retry cost many steps).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from operator import add
from typing import Final

from steelyard.core.balancing.base import BalancerSettings, PickContext, ServerState

MAX_CYCLE: Final = 1 << 16  # longest recorded cycle (entries); longer ones keep stepping
_SKIP_LIMIT: Final = 8  # turns of excluded servers skipped before peeking instead
_SCALES: Final = (1, 2, 4, 8, 16, 32, 64)
GROUPS_LIMIT: Final = 16  # distinct weights up to which a cycle follows nginx's order (_Groups)
_WEBSTER_MAX_UNIT: Final = 1 << 24  # keys are exact enough in floating point below this


def integer_units(weights: Sequence[float]) -> list[int] | None:
    """The weights as integers in the same proportions, when they are multiples of 1/64 (slow
    start ramps in steps of 1/32 of a weight): scaling by a power of two and dividing by the
    common divisor are exact in floating point, so the sequence is the textbook one. None for
    other fractions (those keep the float scan)."""
    for scale in _SCALES:
        scaled = [w * scale for w in weights]
        if all(x.is_integer() for x in scaled):
            units = [int(x) for x in scaled]
            common = math.gcd(*units)
            return [u // common for u in units] if common > 1 else units
    return None


def weight_classes(units: Sequence[int]) -> dict[int, list[int]]:
    """Weight -> the indices of the servers with that weight, ascending (first seen first)."""
    classes: dict[int, list[int]] = {}
    for i, u in enumerate(units):
        classes.setdefault(u, []).append(i)
    return classes


class _Groups:
    """Smooth weighted round robin over integer weights in O(distinct weights) per step.

    After t steps a server of weight w picked k times has current weight t*w - W*k. Among
    servers of equal weight the largest current is the one picked least often, the first such
    on a tie, so a weight class is served in index order, one turn per member in rotation; its
    best current is that of the member whose turn it is. So a step need only compare one
    candidate per class: key = current*scale - index (scale > every index, so the largest key
    is the largest current, the lowest index on a tie, as nginx breaks ties). All integers, so
    exactly the scan's sequence.
    """

    __slots__ = ("units", "members", "steps", "keys", "turns", "wrap", "scale", "class_of")

    def __init__(self, units: Sequence[int]) -> None:
        self.units = list(units)
        classes = weight_classes(units)
        self.scale = scale = len(units) + 1
        self.members = list(classes.values())  # ascending indices per class
        self.class_of = [0] * len(units)
        for g, members in enumerate(self.members):
            for i in members:
                self.class_of[i] = g
        self.steps = [u * scale for u in classes]  # each step adds the weight to every current
        self.keys = [-m[0] for m in self.members]  # current 0, the first member's turn
        self.turns = [0] * len(self.members)  # picks per class
        self.wrap = sum(units) * scale  # what a full round of a class takes back

    def step(self) -> int:
        keys = list(map(add, self.keys, self.steps))
        best = max(keys)
        picked: int = -best % self.scale  # the key is current x scale - index
        g = self.class_of[picked]
        members = self.members[g]
        turn = self.turns[g]
        self.turns[g] = turn + 1
        nxt = (turn + 1) % len(members)
        # the picked member gives back W; the next member (same picks so far) has the current
        # the class had, unless the round is over: then every member has given back W
        keys[g] = best + picked - members[nxt] - (self.wrap if nxt == 0 else 0)
        self.keys = keys
        return picked

    def currents(self) -> list[int]:
        """Every server's current weight (integer units)."""
        steps = sum(self.turns)
        total = sum(self.units)
        out = [0] * len(self.units)
        for members, turns in zip(self.members, self.turns, strict=True):
            rounds, turn = divmod(turns, len(members))
            for j, i in enumerate(members):
                picked = rounds + (1 if j < turn else 0)
                out[i] = steps * self.units[i] - total * picked
        return out


class _Webster:
    """Webster's (Sainte-Lague) highest-averages sequence over integer weights, by weight class.

    Server i with weight w that has been picked k times has the priority (2k + 1) / 2w; the
    lowest priority is picked next, the lowest index on a tie. Over W = sum of the weights picks
    every server is picked exactly w times: with k_i = w_i each priority is 1 + 1/2w_i, and any
    other split of W picks would leave an overserved server (k >= w + 1, priority above 1) picked
    while an underserved one (k <= w - 1, priority below 1) waited, which the rule never does.
    The picks after a full cycle are the cycle again (every priority grew by exactly 1).

    Servers of equal weight take their turns in index order, as in _Groups, so the heap holds
    one entry per class: (priority of the member whose turn it is, its index, class). The
    priorities are floats; equal fractions round to the same float and, with weights below
    2**24 and k <= w within a cycle, different ones stay apart, so the order is exact.
    """

    __slots__ = ("units", "members", "heap", "start", "turns", "doubled", "cycle", "done")

    def __init__(self, units: Sequence[int]) -> None:
        self.units = list(units)
        classes = weight_classes(units)
        self.members = list(classes.values())
        self.doubled = [2.0 * u for u in classes]
        self.start = [
            (1 / d, m[0], g)
            for g, (d, m) in enumerate(zip(self.doubled, self.members, strict=True))
        ]
        heapq.heapify(self.start)
        self.cycle = sum(units)
        self.heap: list[tuple[float, int, int]] = []
        self.turns: list[int] = []
        self.done = 0
        self._restart()

    def _restart(self) -> None:
        self.heap = list(self.start)
        self.turns = [0] * len(self.members)
        self.done = 0

    def step(self) -> int:
        heap = self.heap
        _, picked, g = heap[0]
        turn = self.turns[g] + 1
        self.turns[g] = turn
        members = self.members[g]
        rounds, nxt = divmod(turn, len(members))
        heapq.heapreplace(heap, ((2 * rounds + 1) / self.doubled[g], members[nxt], g))
        done = self.done + 1
        if done == self.cycle:  # every priority is 1 higher than at the start: start again
            self._restart()
        else:
            self.done = done
        return picked

    def priorities(self) -> list[float]:
        """Every server's urgency now (larger = due sooner): minus its priority."""
        out = [0.0] * len(self.units)
        for members, turns in zip(self.members, self.turns, strict=True):
            rounds, turn = divmod(turns, len(members))
            for j, i in enumerate(members):
                picked = rounds + (1 if j < turn else 0)
                out[i] = -(2 * picked + 1) / (2.0 * self.units[i])
        return out


class SmoothWeightedRoundRobin:
    __slots__ = (
        "servers",
        "weights",
        "current",
        "total",
        "cycle",
        "cycle_len",
        "cursor",
        "groups",
    )

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
        units = integer_units(self.weights)
        self.groups: _Groups | _Webster | None = None
        if units is not None:
            ramping = settings is not None and settings.ramping
            if ramping and len(set(units)) > GROUPS_LIMIT and max(units) < _WEBSTER_MAX_UNIT:
                self.groups = _Webster(units)
            else:
                self.groups = _Groups(units)
        cycle_len = sum(units) if units is not None else 0
        self.cycle_len = cycle_len if cycle_len <= MAX_CYCLE else 0
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
        """One step of the sequence (recording the cycle while it is not complete)."""
        groups = self.groups
        if groups is not None:
            s = self.servers[groups.step()]
        else:  # arbitrary float weights: the textbook scan
            current = list(map(add, self.current, self.weights))  # C-level passes
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
        """The non-excluded server that is due soonest, without taking a turn."""
        best: ServerState | None = None
        best_value = 0.0
        for s, due in zip(self.servers, self._due(), strict=True):
            if s.name in exclude:
                continue
            if best is None or due > best_value:
                best = s
                best_value = due
        return best

    def _due(self) -> list[float]:
        """Per server: larger = due sooner (the current weight the next step would compare)."""
        groups = self.groups
        if isinstance(groups, _Webster):
            return groups.priorities()
        weights = self.weights if groups is None else groups.units
        return [c + w for c, w in zip(self._currents(), weights, strict=True)]

    def _currents(self) -> list[float]:
        """Every server's current weight (in weight units, or integer units when grouped)."""
        groups = self.groups
        if groups is None:
            return self.current
        if isinstance(groups, _Webster):
            raise TypeError("Webster's order has no current weights")
        return [float(c) for c in groups.currents()]

    def __repr__(self) -> str:
        names = [s.name for s in self.servers]
        if self.cycle is not None and len(self.cycle) == self.cycle_len:
            return f"SmoothWeightedRoundRobin({names}, replaying cycle of {self.cycle_len} at {self.cursor})"
        if isinstance(self.groups, _Webster):
            return f"SmoothWeightedRoundRobin({names}, Webster's order, due={self._due()})"
        return f"SmoothWeightedRoundRobin({names}, current={self._currents()})"
