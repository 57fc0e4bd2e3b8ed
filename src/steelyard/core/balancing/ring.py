"""Consistent hashing on a ketama ring: ``consistent_hash`` and ``ip_hash``.

How this works (Karger et al., "Consistent Hashing and Random Trees", STOC 1997; the ketama
library, last.fm 2007): every server puts points on a circle, round(POINTS_PER_WEIGHT x weight)
of them, at stable hashes of its name (hashing.ring_point_bytes). A key hashes to a position
and belongs to the first point at or after it (binary search, O(log n); a bucket index on the
top bits of the position narrows it to a few points, held in flat arrays for cache locality). Removing a server
removes only its points, so only its own keys move, each to the next point on the ring; the
other keys stay where they were. A server's points are a prefix of one stream per name, so a
weight change (slow start) only adds or removes that server's points.

Balance: a server with P points owns a share with relative standard deviation about 1/sqrt(P).
With 1600 points per weight unit the busiest of 100 equal servers measured below 1.08x the
average share (tests/unit/test_balancing.py checks <= 1.10). To bound memory and build time a
ring has at most MAX_POINTS points; above that every server's count is scaled down in the same
proportion (then removing a server also rescales the others, moving a few extra keys).

Bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads",
SODA 2018; Envoy/HAProxy ``hash-balance-factor``): with factor c (125 = 1.25) a server may hold
at most ceil(c x (in-flight + 1) x w / W) requests, the +1 being the request being placed (for
equal weights: ceil(c x average)). A key whose server is full walks on along the ring to the
first server with room. Some server always has room (the capacities sum to more than the
in-flight total), unless retries excluded them: then the bound is ignored rather than fail.

The in-flight total is a sum over every server; once the backend tracks the snapshot's load
(base.LoadTracking) the hooks keep it as a running total, so a bounded pick stays O(log n).

Retries walk the ring the same way past excluded servers, deterministically. A request without
a hash key falls back to weighted random.
"""

from __future__ import annotations

import random
import sys
from array import array
from bisect import bisect_left
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import attrgetter
from typing import Final

from steelyard.core.balancing.base import BalancerSettings, PickContext, ServerState
from steelyard.core.balancing.hashing import (
    KEY_HASHER,
    doubles_from_le,
    key_position,
    ring_point_bytes,
)
from steelyard.core.balancing.random_choice import WeightedRandom, positive

POINTS_PER_WEIGHT: Final = 1600
MAX_POINTS: Final = 1 << 20
MAX_SERVERS: Final = 1 << 16  # the owner tag is 16 bits
BUCKET_POINTS: Final = 16  # points per bucket of the ring's bucket index, about
_INLINE_STEPS: Final = 8  # walk steps a bounded pick takes before the general walk
_active = attrgetter("active")
_from_bytes = int.from_bytes
_TWO_POW_M52: Final = 2.0**-52


def point_counts(weights: Sequence[float], per_weight: int, max_points: int) -> list[int]:
    """Points per server: round(per_weight x weight), scaled down to fit max_points in all."""
    total = per_weight * sum(weights, 0.0)  # a float (mypyc: sum() of floats may be int 0)
    scale = 1.0 if total <= max_points else max_points / total
    return [max(1, round(per_weight * w * scale)) for w in weights]


class HashRing:
    """The ring itself: sorted positions in [1, 2); a position's low 16 mantissa bits are the
    index of the server that owns it (see hashing.ring_point_bytes)."""

    __slots__ = ("positions", "owners", "shift", "starts", "n_points")

    def __init__(self, names: Sequence[str], counts: Sequence[int]) -> None:
        if len(names) > MAX_SERVERS:
            raise ValueError(f"a hash ring holds at most {MAX_SERVERS} servers")
        raw = b"".join(
            ring_point_bytes(name, count, tag)
            for tag, (name, count) in enumerate(zip(names, counts, strict=True))
        )
        points = doubles_from_le(raw).tolist()
        points.sort()  # ties (same 36-bit position) are ordered by owner tag
        # Flat arrays, not lists: a ring of 300 servers has ~500k points, far more than the CPU
        # caches hold, and a list of floats is a pointer per point plus a float object
        # elsewhere in memory (two cache misses per probe). An array('d') keeps a bucket's few
        # points in one or two cache lines; boxing the probed values costs less than the misses.
        self.positions: array[float] = array("d", points)
        self.n_points = len(points)
        del points
        # the owner tags again as an array('H') beside the positions: one subscript per lookup
        # instead of decoding the mantissa (measured ~0.09 us less per owner, cache miss
        # included); split out of the doubles' bytes by C-level slicing, no Python loop
        raw_sorted = self.positions.tobytes()
        lo, hi = (0, 1) if sys.byteorder == "little" else (7, 6)
        tags = bytearray(2 * len(self.positions))
        tags[0::2] = raw_sorted[lo::8]
        tags[1::2] = raw_sorted[hi::8]
        self.owners: array[int] = array("H")
        self.owners.frombytes(bytes(tags))
        if sys.byteorder != "little":
            self.owners.byteswap()
        # A bucket index on the top bits of the position (about BUCKET_POINTS points per
        # bucket): a lookup bisects one bucket instead of the whole ring.
        bits = max(1, min(20, (len(self.positions) // BUCKET_POINTS).bit_length()))
        self.shift = 64 - bits
        step = 2.0**-bits
        bounds = [1.0 + b * step for b in range(1 << bits)]
        self.starts: array[int] = array("l", map(bisect_left, repeat(self.positions), bounds))
        self.starts.append(len(self.positions))

    def __len__(self) -> int:
        return len(self.positions)

    def locate(self, h: int) -> int:
        """Index of the point that owns the 64-bit key hash ``h``."""
        b = h >> self.shift
        i = bisect_left(self.positions, key_position(h), self.starts[b], self.starts[b + 1])
        return i if i < len(self.positions) else 0

    def owner(self, i: int) -> int:
        """Server index of point i: the low 16 bits of its 52-bit mantissa (exact)."""
        return self.owners[i]

    def shares(self) -> list[float]:
        """Fraction of the hash space owned by each server index (for tests and tooling)."""
        positions = self.positions
        owners = [self.owner(i) for i in range(len(positions))]
        out = [0.0] * (max(owners) + 1 if owners else 0)
        previous = positions[-1] - 1.0 if positions else 0.0
        for p, o in zip(positions, owners, strict=True):
            out[o] += p - previous
            previous = p
        return out


class ConsistentHash:
    """The ``consistent_hash`` algorithm (ketama ring, optional bounded loads)."""

    __slots__ = (
        "servers",
        "weights",
        "ring",
        "factor",
        "capacity",
        "fallback",
        "names",
        "total",
        "counted",
        "position",
        "on_acquire",
        "on_release",
    )

    def __init__(
        self,
        servers: Sequence[ServerState],
        weights: Sequence[float],
        settings: BalancerSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        settings = settings if settings is not None else BalancerSettings()
        kept, kept_weights = positive(servers, weights)
        # order by name: the ring does not depend on the order servers are listed in
        order = sorted(range(len(kept)), key=lambda i: kept[i].name)
        self.servers = [kept[i] for i in order]
        self.weights = [kept_weights[i] for i in order]
        self.names = frozenset(s.name for s in self.servers)
        raw = settings.extra.get("ring_points_per_weight", POINTS_PER_WEIGHT)
        per_weight = raw if isinstance(raw, int) and raw > 0 else POINTS_PER_WEIGHT
        counts = point_counts(self.weights, per_weight, MAX_POINTS)
        self.ring = HashRing([s.name for s in self.servers], counts)
        self.factor = self._factor(settings)
        total = sum(self.weights)
        # capacity_i = ceil(factor * (in-flight + 1) * share_i), share_i = w_i / W
        self.capacity = [self.factor * w / total for w in self.weights] if self.factor else []
        self.fallback = WeightedRandom(self.servers, self.weights, settings, rng)
        # bounded loads, once tracked: the in-flight total of the members, kept by the hooks
        # (base.LoadTracking) instead of summing every server's count on every pick
        self.total: int | None = None
        self.counted: list[int] = []
        self.position: dict[ServerState, int] = {}
        # the hooks exist only where they are needed (bounded loads): the backend finds None
        # otherwise and calls nothing
        self.on_acquire: Callable[[ServerState], None] | None = None
        self.on_release: Callable[[ServerState], None] | None = None

    def track_load(self) -> None:
        """Bounded loads: from now on the backend reports every change of ``active``."""
        if not self.capacity:
            return
        self.position = {s: i for i, s in enumerate(self.servers)}
        self.counted = [s.active for s in self.servers]
        self.total = sum(self.counted)
        self.on_acquire = self.on_release = self._recount

    def _recount(self, state: ServerState) -> None:
        # re-read rather than +-1: an increment nobody reported (a sticky lease) is made
        # good at that server's next acquire or release
        i = self.position.get(state)
        if i is not None and self.total is not None:
            active = state.active
            self.total += active - self.counted[i]
            self.counted[i] = active

    @staticmethod
    def _factor(settings: BalancerSettings) -> float | None:
        if settings.hash_balance_factor is None:
            return None
        return max(float(settings.hash_balance_factor), 100.0) / 100.0

    def pick(self, ctx: PickContext) -> ServerState | None:
        key = ctx.hash_key
        if key is None:
            return self.fallback.pick(ctx)
        ring = self.ring
        positions = ring.positions
        if not positions:
            return None
        # ring.locate(hash64(key)), inlined: this is the hot path
        hasher = KEY_HASHER.copy()
        hasher.update(key)
        h = _from_bytes(hasher.digest(), "little")
        b = h >> ring.shift
        starts = ring.starts
        i = bisect_left(positions, 1.0 + (h >> 12) * _TWO_POW_M52, starts[b], starts[b + 1])
        if i == ring.n_points:
            i = 0
        if not ctx.exclude:
            owners = ring.owners
            o = owners[i]
            servers = self.servers
            s = servers[o]
            if self.factor is None:
                return s
            total = self.total
            if total is not None:
                # bounded and tracked: active < ceil(x) is active < x for an integer count
                placing = total + 1
                capacity = self.capacity
                if s.active < capacity[o] * placing - 1e-9:
                    return s  # the key's own server has room
                # the first few steps of the walk, inlined (a full server stays full, so
                # meeting one again changes nothing); the general walk after that
                n_points = ring.n_points
                j = i
                for _ in range(_INLINE_STEPS):
                    j += 1
                    if j == n_points:
                        j = 0
                    o = owners[j]
                    s = servers[o]
                    if s.active < capacity[o] * placing - 1e-9:
                        return s
        return self._walk(i, ctx.exclude)

    def _walk(self, i: int, exclude: frozenset[str]) -> ServerState | None:
        """From point i onwards: the first server not excluded and (if bounded) with room."""
        servers = self.servers
        ring = self.ring
        n_points = len(ring)
        capacity = self.capacity
        bounded = bool(capacity)
        if not bounded:
            placing = 0
        elif self.total is not None:
            placing = self.total + 1
        else:
            placing = sum(map(_active, servers)) + 1
        if exclude and len(exclude & self.names) == len(servers):
            return None
        first_allowed: ServerState | None = None
        seen: set[int] = set()
        owners = ring.owners
        for _ in range(n_points):
            o = owners[i]
            i += 1
            if i == n_points:
                i = 0
            if o in seen:
                continue
            seen.add(o)
            s = servers[o]
            if exclude and s.name in exclude:
                pass
            elif not bounded or s.active < capacity[o] * placing - 1e-9:  # < its ceil
                return s
            elif first_allowed is None:
                first_allowed = s
            if len(seen) == len(servers):
                break
        return first_allowed

    def __repr__(self) -> str:
        bound = f", factor={self.factor:g}" if self.factor else ""
        return f"{type(self).__name__}({_names(self.servers)}, points={len(self.ring)}{bound})"


class IpHash(ConsistentHash):
    """The ``ip_hash`` algorithm: the same ring, keyed on the client's IP address bytes.

    The caller passes the peer (or PROXY-protocol) address as ``ctx.hash_key``; it must use one
    representation everywhere (the HTTP and TCP listeners both pass the ASCII text form, so a
    client lands on the same server through either). Never bounded: a client always
    reaches its own server while that server is eligible.
    """

    __slots__ = ()

    @staticmethod
    def _factor(settings: BalancerSettings) -> float | None:
        return None


def _names(servers: Sequence[ServerState], limit: int = 8) -> str:
    names = [s.name for s in servers[:limit]]
    more = f" +{len(servers) - limit}" if len(servers) > limit else ""
    return "[" + ", ".join(names) + more + "]"
