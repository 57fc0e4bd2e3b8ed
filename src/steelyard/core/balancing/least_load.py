"""Load-aware balancers: least connections, least response time (peak EWMA), power of two.

They read the live ``active`` count (and latency estimate) of the ServerState objects they were
built with; leases keep those up to date, so a snapshot stays correct between rebuilds.

least_connections: the server with the fewest in-flight requests (HTTP) or open connections
(TCP) per unit of weight (HAProxy ``leastconn``, nginx ``least_conn``). Exact, so O(n) per
pick (the live counts change under us, so there is nothing to keep sorted); an idle server ends
the scan early. Ties are broken in turn: the scan starts just after the previous winner and keeps the first minimum,
so idle servers share evenly instead of the first one taking everything.

least_response_time: cost = peak-EWMA latency x (in-flight + 1) / weight (Finagle's and
Linkerd's peak EWMA load metric; the estimate lives in core/load.PeakEwma). A server with no
sample yet is costed at the mean estimate of the servers sampled recently times its in-flight
count (not in-flight + 1): while idle it costs nothing, so it gets a request and with it a first
sample (never starved, even under one-at-a-time traffic, where the (in-flight + 1) cost would
leave a lighter server forever behind the first sampled one), and from its first in-flight
request on it is costed like a sampled server at the mean (never flooded). An estimate also fades with time when no sample comes in (Finagle
and Linkerd decay it on read): after STALE_AFTER seconds without a sample it moves towards that
same mean with the EWMA's time constant, est = mean + (est - mean) x exp(-age / tau). Without
this a server that was slow once would get no traffic, hence no new sample, and stay starved
for good. "Now" is ``settings.extra["clock"]()`` when the backend passes its clock, otherwise
the latest sample time seen in the backend. Estimates are floored at 1 microsecond so that a
zero estimate (fake clocks, instant answers) does not make in-flight counts irrelevant. Ties
rotate as above.

power_of_two: two *distinct* candidates drawn with probability proportional to weight; the one
with less in-flight per weight wins, a tie goes to the first drawn (Mitzenmacher, "The Power of
Two Choices in Randomized Load Balancing", 2001; Envoy ``LEAST_REQUEST`` with choice_count 2).
The second draw samples the weight line with the first server's interval cut out, so it is
exact sampling without replacement in O(log n), no rejection loop.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from heapq import heappop, heappush, heapreplace
from itertools import accumulate
from typing import Final

from steelyard.core.balancing.base import BalancerSettings, PickContext, ServerState
from steelyard.core.balancing.load_index import FloatMinIndex, RotatingMinIndex
from steelyard.core.balancing.random_choice import WeightedRandom, positive, weighted_index

_INF: Final = float("inf")
MIN_ESTIMATE: Final = 1e-6  # seconds
STALE_AFTER: Final = 0.5  # seconds without a sample before an estimate starts to fade
MAX_WEIGHT_CLASSES: Final = 8


def in_flight_factor(state: ServerState) -> int:
    """What least_response_time multiplies a server's estimate by: in-flight + 1 once it has a
    sample, in-flight before (so an idle never-sampled server costs nothing)."""
    return state.active + 1 if state.ewma.samples else state.active


class LeastConnections:
    __slots__ = ("servers", "weights", "uniform", "classes", "index", "next", "loads", "position")

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
        # with a few distinct weights (typical, and slow start adds a few ramping ones), scan
        # each weight class on integer counts and divide once per class
        groups: dict[float, list[int]] = {}
        for i, w in enumerate(self.weights):
            groups.setdefault(w, []).append(i)
        self.classes: list[tuple[float, list[int], list[ServerState]]] = []
        if not self.uniform and len(groups) <= MAX_WEIGHT_CLASSES:
            self.classes = [(w, ix, [self.servers[i] for i in ix]) for w, ix in groups.items()]
        self.index = {s.name: i for i, s in enumerate(self.servers)}
        self.next = 0
        # set by track_load(): active / weight of every member, kept in step by the hooks
        self.loads: RotatingMinIndex | None = None
        self.position: dict[ServerState, int] = {}

    def track_load(self) -> None:
        """From now on the backend reports every change of a member's ``active`` count."""
        self.position = {s: i for i, s in enumerate(self.servers)}
        self.loads = RotatingMinIndex(
            [s.active / w for s, w in zip(self.servers, self.weights, strict=True)]
        )

    # No on_acquire: an increment only makes a key stale *low*, which pick() detects when that
    # key comes to the top and repairs then. Most requests are released before their server's
    # turn comes round again, and then the release finds the key unchanged: one hook, no move.

    def on_release(self, state: ServerState) -> None:
        loads = self.loads
        i = self.position.get(state)
        if loads is not None and i is not None:
            loads.update(i, state.active / self.weights[i])

    def pick(self, ctx: PickContext) -> ServerState | None:
        servers = self.servers
        if not servers:
            return None
        if ctx.exclude:
            return self._pick_excluding(ctx.exclude)
        loads = self.loads
        if loads is not None:
            # Tracked: the least key, first at or after `next`. Keys are only ever stale low
            # (an increment nobody reported, e.g. a sticky lease): the winner is checked
            # against its live count, re-keyed and the search repeated if it is stale, so the
            # answer is the one a full scan would give.
            weights = self.weights
            heap = loads.heap
            levels = loads.levels
            start = self.next
            repairs = 0
            while True:
                key = heap[0]  # loads.first(start), inlined: this is the hot path
                members = levels.get(key)
                while not members:
                    heappop(heap)
                    if members is not None:
                        del levels[key]
                    key = heap[0]
                    members = levels.get(key)
                k = bisect_left(members, start)
                i = members[k] if k < len(members) else members[0]
                s = servers[i]
                live = s.active / weights[i]
                if live == key:
                    i += 1
                    self.next = i if i < len(servers) else 0
                    return s
                repairs += 1  # each member is repaired at most once
                if repairs > len(servers):
                    break
                loads.update(i, live)
            # keys stale high (a decrement nobody reported): index afresh, answer by a scan
            self.track_load()
            return self._pick_excluding(frozenset())
        # A plain loop over list slices (rotated to start after the previous winner) measured
        # faster than C-level map/min/index chains; an idle server ends the scan early.
        start = self.next
        best = servers[start]
        if self.uniform:
            least = best.active
            if least:
                for part in (servers[start + 1 :], servers[:start]):
                    for s in part:
                        a = s.active
                        if a < least:
                            least = a
                            best = s
                            if not a:
                                break
                    if not least:
                        break
        elif self.classes:
            best = self._pick_by_class(start)
        else:
            weights = self.weights
            low = best.active / weights[start]
            if low:
                for lo, hi in ((start + 1, len(servers)), (0, start)):
                    for s, w in zip(servers[lo:hi], weights[lo:hi], strict=True):
                        load = s.active / w
                        if load < low:
                            low = load
                            best = s
                            if not load:
                                break
                    if not low:
                        break
        i = self.index[best.name] + 1
        self.next = i if i < len(servers) else 0
        return best

    def _pick_by_class(self, start: int) -> ServerState:
        """The least loaded per weight, scanning each weight class in rotation order."""
        n = len(self.servers)
        index = self.index
        best = self.servers[start]
        best_load = _INF
        best_distance = n
        for w, ix, members in self.classes:
            k = bisect_left(ix, start)
            rotated = members[k:] + members[:k] if k else members
            cand = rotated[0]
            least = cand.active
            if least:
                for s in rotated:
                    a = s.active
                    if a < least:
                        least = a
                        cand = s
                        if not a:
                            break
            load = least / w
            if load <= best_load:
                distance = index[cand.name] - start
                if distance < 0:
                    distance += n
                if load < best_load or distance < best_distance:
                    best = cand
                    best_load = load
                    best_distance = distance
        return best

    def _pick_excluding(self, exclude: frozenset[str]) -> ServerState | None:
        servers = self.servers
        n = len(servers)
        start = self.next
        best = -1
        low = _INF
        for k in range(n):
            i = start + k
            if i >= n:
                i -= n
            s = servers[i]
            if s.name in exclude:
                continue
            load = s.active / self.weights[i]
            if load < low:
                low = load
                best = i
        if best < 0:
            return None
        self.next = best + 1 if best + 1 < n else 0
        return servers[best]

    def __repr__(self) -> str:
        state = ", ".join(
            f"{s.name}={s.active}/{w:g}" for s, w in zip(self.servers, self.weights, strict=True)
        )
        return f"LeastConnections({state}, next={self.next})"


# where a tracked least_response_time member is
_IDLE: Final = 0  # no latency sample yet: costed at the fill estimate
_FRESH: Final = 1  # a sample within STALE_AFTER: costed at its own estimate
_STALE: Final = 2  # samples, none within STALE_AFTER: its estimate fades towards the fill
RESUM_EVERY: Final = 4096  # hook calls between exact re-summations of the running estimate sums


class _LatencyView:
    """The indexes a tracked LeastResponseTime keeps (see LeastResponseTime.track_load)."""

    __slots__ = (
        "fresh",
        "idle",
        "stale",
        "where",
        "value",
        "queued",
        "expiry",
        "fresh_sum",
        "fresh_count",
        "stale_sum",
        "stale_count",
        "updates",
    )

    def __init__(self, n: int) -> None:
        self.fresh = FloatMinIndex([None] * n)  # cost = estimate x (active + 1) / weight
        self.idle = RotatingMinIndex([None] * n)  # active / weight (no sample yet)
        self.stale: set[int] = set()
        self.where = [_IDLE] * n
        self.value = [0.0] * n  # the estimate counted in the sums below
        self.queued = [False] * n  # has an entry in `expiry`
        self.expiry: list[tuple[float, int]] = []  # heap of (sample time, member)
        self.fresh_sum = 0.0
        self.fresh_count = 0
        self.stale_sum = 0.0
        self.stale_count = 0
        self.updates = 0

    def resum(self) -> None:
        """Exact sums again (running float sums drift by an ulp now and then)."""
        where, value = self.where, self.value
        self.fresh_sum = sum(v for v, w in zip(value, where, strict=True) if w == _FRESH)
        self.stale_sum = sum(v for v, w in zip(value, where, strict=True) if w == _STALE)
        self.updates = 0

    def fill(self) -> float:
        """The estimate of a server without a recent sample: the mean of the fresh ones, else
        of all sampled ones, else 1 s (as LeastResponseTime.estimates)."""
        if self.fresh_count:
            return self.fresh_sum / self.fresh_count
        if self.stale_count:  # no fresh one: the sampled ones are the stale ones
            return self.stale_sum / self.stale_count
        return 1.0

    def __repr__(self) -> str:
        return (
            f"LatencyView(fresh={len(self.fresh)}, idle={len(self.idle)}, "
            f"stale={len(self.stale)}, fill={self.fill() * 1000:.3f}ms)"
        )


class LeastResponseTime:
    __slots__ = (
        "servers",
        "weights",
        "inverse",
        "index",
        "next",
        "clock",
        "latest",
        "view",
        "position",
    )

    def __init__(
        self,
        servers: Sequence[ServerState],
        weights: Sequence[float],
        settings: BalancerSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.servers, self.weights = positive(servers, weights)
        self.inverse = [1.0 / w for w in self.weights]
        self.index = {s.name: i for i, s in enumerate(self.servers)}
        self.next = 0
        clock = settings.extra.get("clock") if settings is not None else None
        self.clock: Callable[[], float] | None = clock if callable(clock) else None
        # without a clock, "now" is the latest sample time seen in this backend
        self.latest = max((s.ewma.stamp for s in self.servers if s.ewma.samples), default=0.0)
        self.view: _LatencyView | None = None  # set by track_load()
        self.position: dict[ServerState, int] = {}

    def now(self) -> float:
        return self.clock() if self.clock is not None else self.latest

    # -- tracked: indexes kept in step by the release hook ------------------------------------
    #
    # Members with a recent sample sit in `fresh`, a FloatMinIndex on their cost; members
    # without a sample in `idle`, on (active + 1) / weight (they all cost fill x that, so
    # their order does not depend on the fill); members whose samples are all older than
    # STALE_AFTER in `stale`, costed on every pick (their faded estimate depends on the time
    # and the fill). A heap of sample times moves members from fresh to stale as time passes;
    # only a new sample (a release) moves them back. Running sums of the fresh and of all
    # estimates give the fill without a pass. Unlike least_connections, acquires are reported
    # too (a float cost never comes back to the same key, so there is nothing to save by
    # waiting, and the just-picked member is on top of the heap: one sift re-keys it). An
    # increment nobody reported (a sticky lease) leaves a key stale low, and pick() re-checks
    # the winner. So a pick is O(log n) plus the stale members: none while every server has
    # answered within STALE_AFTER, which is when picks are frequent enough to matter.

    def track_load(self) -> None:
        """From now on the backend reports every acquire and release (the in-flight count, a
        new sample)."""
        servers = self.servers
        self.position = {s: i for i, s in enumerate(servers)}
        view = _LatencyView(len(servers))
        self.view = view
        for s in servers:
            if s.ewma.samples and s.ewma.stamp > self.latest:
                self.latest = s.ewma.stamp
        for s in servers:
            self.on_release(s)
        view.resum()

    def on_acquire(self, state: ServerState) -> None:
        """Re-key a member whose in-flight count went up (so pick() finds its key current)."""
        view = self.view
        i = self.position.get(state)
        if view is None or i is None:
            return
        where = view.where[i]
        if where == _FRESH:
            v = state.ewma.value
            floor = MIN_ESTIMATE
            cost = (v if v > floor else floor) * (state.active + 1) * self.inverse[i]
            fresh = view.fresh  # fresh.update(i, cost), inlined: i is a member already
            if fresh.keys[i] != cost:
                fresh.keys[i] = cost
                heap = fresh.heap
                if heap[0][1] == i:  # it was just picked, so usually on top: one sift
                    heapreplace(heap, (cost, i))
                else:
                    heappush(heap, (cost, i))
                    if len(heap) > fresh.limit:
                        fresh.compact()
        elif where == _IDLE:
            view.idle.update(i, state.active * self.inverse[i])

    def on_release(self, state: ServerState) -> None:
        view = self.view
        i = self.position.get(state)
        if view is None or i is None:
            return
        e = state.ewma
        if not e.samples:  # a failure before any sample: still idle
            view.idle.update(i, state.active * self.inverse[i])
            return
        stamp = e.stamp
        latest = self.latest
        if stamp > latest:
            self.latest = latest = stamp
        clock = self.clock
        fresh_now = stamp >= (clock() if clock is not None else latest) - STALE_AFTER
        old = view.where[i]
        v = e.value
        floor = MIN_ESTIMATE
        if fresh_now and old == _FRESH:  # the common case: a busy server answered again
            d = v - view.value[i]
            if d:
                view.value[i] = v
                view.fresh_sum += d
                view.updates += 1
                if view.updates >= RESUM_EVERY:
                    view.resum()
            cost = (v if v > floor else floor) * (state.active + 1) * self.inverse[i]
            fresh = view.fresh  # fresh.update(i, cost), inlined: i is a member already
            if fresh.keys[i] != cost:
                fresh.keys[i] = cost
                heap = fresh.heap
                heappush(heap, (cost, i))
                if len(heap) > fresh.limit:
                    fresh.compact()
            return
        if old == _IDLE:
            view.idle.update(i, None)
        elif old == _FRESH:
            view.fresh_sum -= view.value[i]
            view.fresh_count -= 1
            view.fresh.update(i, None)
        else:
            view.stale_sum -= view.value[i]
            view.stale_count -= 1
            view.stale.discard(i)
        view.value[i] = v
        if fresh_now:
            view.where[i] = _FRESH
            view.fresh_sum += v
            view.fresh_count += 1
            view.fresh.update(i, (v if v > floor else floor) * (state.active + 1) * self.inverse[i])
            if not view.queued[i]:
                heappush(view.expiry, (stamp, i))
                view.queued[i] = True
        else:
            view.where[i] = _STALE
            view.stale_sum += v
            view.stale_count += 1
            view.stale.add(i)
        view.updates += 1
        if view.updates >= RESUM_EVERY:
            view.resum()

    def _expire(self, view: _LatencyView, cutoff: float) -> None:
        """Fresh members whose latest sample is now older than STALE_AFTER become stale."""
        expiry = view.expiry
        servers = self.servers
        while expiry and expiry[0][0] < cutoff:
            _, i = heappop(expiry)
            if view.where[i] != _FRESH:
                view.queued[i] = False
                continue
            stamp = servers[i].ewma.stamp
            if stamp >= cutoff:  # sampled again since it was queued
                heappush(expiry, (stamp, i))
                continue
            view.queued[i] = False
            view.where[i] = _STALE
            view.fresh.update(i, None)
            view.fresh_sum -= view.value[i]
            view.fresh_count -= 1
            view.stale_sum += view.value[i]
            view.stale_count += 1
            view.stale.add(i)

    def pick(self, ctx: PickContext) -> ServerState | None:
        view = self.view
        if view is None or ctx.exclude:
            return self._scan(ctx.exclude)
        # tracked (see track_load): the least key of `fresh`, then the members aside
        servers = self.servers
        n = len(servers)
        if not n:
            return None
        inverse = self.inverse
        clock = self.clock
        now = clock() if clock is not None else self.latest
        expiry = view.expiry
        if expiry and expiry[0][0] < now - STALE_AFTER:
            self._expire(view, now - STALE_AFTER)
        floor = MIN_ESTIMATE
        best = -1
        best_cost = _INF
        fresh = view.fresh
        if fresh.size:
            heap = fresh.heap
            keys = fresh.keys
            repairs = 0
            while True:
                key, i = heap[0]  # fresh.first(self.next), inlined: this is the hot path
                while keys[i] != key:
                    heappop(heap)
                    key, i = heap[0]
                if heap[1][0] == key or heap[2][0] == key:
                    i = fresh.tied(key, self.next)
                s = servers[i]
                v = s.ewma.value
                live = (v if v > floor else floor) * (s.active + 1) * inverse[i]
                if live == key:
                    break
                # an acquire nobody reported (a sticky lease): repair, look again; each
                # member at most once, or the index is inconsistent
                repairs += 1
                if repairs > n:
                    return self._reindex()
                fresh.update(i, live)
            if not view.idle.size and not view.stale:
                i += 1
                self.next = i if i < n else 0
                return s
            best = i
            best_cost = key
        best = self._pick_aside_tracked(view, best, best_cost, now)
        if best < 0:
            return self._reindex()
        i = best + 1
        self.next = i if i < n else 0
        return servers[best]

    def _pick_aside_tracked(
        self, view: _LatencyView, best: int, best_cost: float, now: float
    ) -> int:
        """The members without a recent sample, in rotation order with the first minimum kept;
        one of them wins only when strictly cheaper than the best fresh one (as the scan does).
        -1 if the index was inconsistent."""
        servers = self.servers
        n = len(servers)
        inverse = self.inverse
        start = self.next
        floor = MIN_ESTIMATE
        fill = view.fill()
        aside = -1
        aside_cost = _INF
        aside_distance = n
        idle = view.idle
        if idle.size:
            for _ in range(n + 1):
                key, i = idle.first(start)
                live = servers[i].active * inverse[i]
                if live == key:
                    break
                idle.update(i, live)
            else:
                return -1
            aside = i
            aside_cost = (fill if fill > floor else floor) * key
            aside_distance = i - start if i >= start else i - start + n
        for i in view.stale:
            s = servers[i]
            e = s.ewma
            v = fill + (e.value - fill) * math.exp(-(now - e.stamp) / e.tau)
            cost = (v if v > floor else floor) * (s.active + 1) * inverse[i]
            if cost <= aside_cost:
                distance = i - start if i >= start else i - start + n
                if cost < aside_cost or distance < aside_distance:
                    aside = i
                    aside_cost = cost
                    aside_distance = distance
        if aside >= 0 and aside_cost < best_cost:
            return aside
        return best

    def estimates(self, now: float | None = None) -> list[float]:
        """The latency estimate each server is costed at (seconds): the pick's view."""
        now = self.now() if now is None else now
        cutoff = now - STALE_AFTER
        known = [s.ewma for s in self.servers if s.ewma.samples]
        fresh = [e.value for e in known if e.stamp >= cutoff]
        pool = fresh or [e.value for e in known]
        fill = sum(pool) / len(pool) if pool else 1.0
        out = []
        for s in self.servers:
            e = s.ewma
            if not e.samples:
                v = fill
            elif e.stamp < cutoff:
                v = fill + (e.value - fill) * math.exp(-(now - e.stamp) / e.tau)
            else:
                v = e.value
            out.append(max(v, MIN_ESTIMATE))
        return out

    def _reindex(self) -> ServerState | None:
        """The index was inconsistent: index afresh, answer by a scan."""
        self.track_load()
        return self._scan(frozenset())

    def _scan(self, exclude: frozenset[str]) -> ServerState | None:
        # one pass in Python, rotated to start after the previous winner (ties go in turn)
        servers = self.servers
        n = len(servers)
        if not n:
            return None
        inverse = self.inverse
        clock = self.clock
        latest = self.latest
        now = clock() if clock is not None else latest
        cutoff = now - STALE_AFTER
        start = self.next
        best: ServerState | None = None
        best_cost = _INF
        aside: list[tuple[ServerState, float]] = []  # no sample yet, or none for a while
        floor = MIN_ESTIMATE
        for lo, hi in ((start, n), (0, start)):
            for s, iw in zip(servers[lo:hi], inverse[lo:hi], strict=True):
                ewma = s.ewma
                stamp = ewma.stamp
                if stamp < cutoff or not ewma.samples:
                    aside.append((s, iw))
                    continue
                if stamp > latest:
                    latest = stamp
                v = ewma.value
                cost = (v if v > floor else floor) * (s.active + 1) * iw
                if cost < best_cost and not (exclude and s.name in exclude):
                    best_cost = cost
                    best = s
        self.latest = latest
        if aside:
            best = self._pick_aside(aside, best, best_cost, cutoff, exclude)
        if best is None:
            return None
        i = self.index[best.name] + 1
        self.next = i if i < n else 0
        return best

    def _pick_aside(
        self,
        aside: list[tuple[ServerState, float]],
        best: ServerState | None,
        best_cost: float,
        cutoff: float,
        exclude: frozenset[str],
    ) -> ServerState | None:
        """Servers without a recent sample, costed as estimates() explains."""
        now = self.clock() if self.clock is not None else self.latest
        known = [s.ewma for s in self.servers if s.ewma.samples]
        fresh = [e.value for e in known if e.stamp >= cutoff]
        pool = fresh or [e.value for e in known]
        fill = sum(pool) / len(pool) if pool else 1.0
        floor = MIN_ESTIMATE
        for s, iw in aside:
            e = s.ewma
            if e.samples:
                v = fill + (e.value - fill) * math.exp(-(now - e.stamp) / e.tau)
                cost = (v if v > floor else floor) * (s.active + 1) * iw
            else:  # never sampled: free while idle, so it gets its first sample
                cost = (fill if fill > floor else floor) * s.active * iw
            if cost < best_cost and not (exclude and s.name in exclude):
                best_cost = cost
                best = s
        return best

    def __repr__(self) -> str:
        state = ", ".join(
            f"{s.name}={s.ewma.value * 1000:.3f}ms x {s.active + 1} / {w:g}"
            for s, w in zip(self.servers, self.weights, strict=True)
        )
        return f"LeastResponseTime({state}, next={self.next})"


class PowerOfTwo(WeightedRandom):
    """Two candidates drawn on the same cumulative weight line as ``random``."""

    __slots__ = ()

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
