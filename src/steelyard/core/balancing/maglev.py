"""Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
Load Balancer", NSDI 2016, §3.4).

How this works: a lookup table of M slots (M prime, default 65537) maps hash(key) % M to a
server, so a pick is O(1). Each server has a preference list, the permutation
offset + j x skip (mod M) from two independent stable hashes of its name (hashing.py; M prime
makes every skip coprime to M, so the list visits every slot once). Servers take turns; on its
turn a server claims the next slot of its preference list that is still free, until the table
is full. With equal weights every server gets floor(M/N) or ceil(M/N) slots, and when one of N
servers goes the others mostly keep their slots (the paper measures a small extra churn; at 100
servers and M = 65537 it stays well under 2% of the table beyond the removed server's 1%).

Servers are sorted by name before the turns are taken, so the table does not depend on the
order servers are listed in. Weights: each round a server earns w / mean(w) turns (credit
carried over between rounds), so slot counts follow the weights; at equal weights that is
exactly one turn per round, the paper's algorithm.

Retries take the next table entry whose server is not excluded (deterministic), and a request
without a hash key falls back to weighted random. Building is O(M log M) probes in pure Python
(tens of milliseconds at M = 65537): the backend builds it off the event loop (SLOW_BUILD).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final

from steelyard.core.balancing.base import BalancerSettings, PickContext, ServerState
from steelyard.core.balancing.hashing import hash64, maglev_offset_skip
from steelyard.core.balancing.random_choice import WeightedRandom, positive
from steelyard.core.balancing.ring import _names

DEFAULT_TABLE_SIZE: Final = 65537
# float credit sums (e.g. 0.1 * 10) may fall short of 1 by an ulp or two
_CREDIT_SLACK: Final = 1e-9


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def populate(
    offsets: Sequence[int], skips: Sequence[int], turns: Sequence[float], size: int
) -> list[int]:
    """The Maglev table: slot -> server index. ``turns`` = slots claimed per round per server."""
    n = len(offsets)
    table = [-1] * size
    if n == 0:
        return table
    pos = list(offsets)
    filled = 0
    if all(t == 1.0 for t in turns):
        # the paper's loop: one slot per server per round
        skip_list = list(skips)
        while True:
            for i in range(n):
                c = pos[i]
                s = skip_list[i]
                while table[c] >= 0:
                    c += s
                    if c >= size:
                        c -= size
                table[c] = i
                c += s
                if c >= size:
                    c -= size
                pos[i] = c
                filled += 1
                if filled == size:
                    return table
    credit = [0.0] * n
    threshold = 1.0 - _CREDIT_SLACK
    while True:
        for i in range(n):
            have = credit[i] + turns[i]
            if have < threshold:
                credit[i] = have
                continue
            c = pos[i]
            s = skips[i]
            while have >= threshold:
                while table[c] >= 0:
                    c += s
                    if c >= size:
                        c -= size
                table[c] = i
                c += s
                if c >= size:
                    c -= size
                have -= 1.0
                filled += 1
                if filled == size:
                    return table
            pos[i] = c
            credit[i] = have


class Maglev:
    """The ``maglev`` algorithm."""

    __slots__ = ("servers", "weights", "size", "table", "names", "fallback")

    def __init__(
        self,
        servers: Sequence[ServerState],
        weights: Sequence[float],
        settings: BalancerSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        settings = settings if settings is not None else BalancerSettings()
        size = settings.table_size
        if not is_prime(size):
            raise ValueError(f"maglev table_size must be prime, not {size}")
        kept, kept_weights = positive(servers, weights)
        order = sorted(range(len(kept)), key=lambda i: kept[i].name)
        self.servers = [kept[i] for i in order]
        self.weights = [kept_weights[i] for i in order]
        self.names = frozenset(s.name for s in self.servers)
        self.size = size
        n = len(self.servers)
        if n:
            pairs = [maglev_offset_skip(s.name, size) for s in self.servers]
            if len(set(self.weights)) == 1:
                turns = [1.0] * n
            else:
                total = sum(self.weights)
                turns = [w * n / total for w in self.weights]
            slots = populate([p[0] for p in pairs], [p[1] for p in pairs], turns, size)
            self.table: list[ServerState] = list(map(self.servers.__getitem__, slots))
        else:
            self.table = []
        self.fallback = WeightedRandom(self.servers, self.weights, settings, rng)

    def pick(self, ctx: PickContext) -> ServerState | None:
        key = ctx.hash_key
        if key is None:
            return self.fallback.pick(ctx)
        table = self.table
        if not table:
            return None
        i = hash64(key) % self.size
        s = table[i]
        exclude = ctx.exclude
        if not exclude or s.name not in exclude:
            return s
        if len(exclude & self.names) == len(self.servers):
            return None
        size = self.size
        for _ in range(size):
            i += 1
            if i == size:
                i = 0
            s = table[i]
            if s.name not in exclude:
                return s
        # the servers left own no slot (tiny weights): choose among them by weight
        return self.fallback.pick(ctx)

    def slot_counts(self) -> dict[str, int]:
        """Slots per server name (for tests and tooling)."""
        counts = dict.fromkeys((s.name for s in self.servers), 0)
        for s in self.table:
            counts[s.name] += 1
        return counts

    def __repr__(self) -> str:
        return f"Maglev({_names(self.servers)}, table_size={self.size})"
