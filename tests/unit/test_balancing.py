"""Unit tests for every balancing algorithm (core/balancing): exact sequences and the
properties the literature promises, with plain function calls and seeded random sources."""

from __future__ import annotations

import bisect
import collections
import math
import os
import random
import subprocess
import sys
from collections.abc import Sequence

import pytest

from steelyard.core.balancing import (
    ALGORITHMS,
    HASHING,
    BalancerSettings,
    ConsistentHash,
    IpHash,
    LeastConnections,
    LeastResponseTime,
    Maglev,
    PickContext,
    PowerOfTwo,
    Server,
    ServerState,
    SmoothWeightedRoundRobin,
    WeightedRandom,
    factory_for,
)
from steelyard.core.balancing.hashing import (
    hash64,
    key_position,
    maglev_offset_skip,
    name_hash,
    ring_point_bytes,
)
from steelyard.core.balancing.least_load import in_flight_factor
from steelyard.core.balancing.maglev import is_prime
from steelyard.core.balancing.ring import POINTS_PER_WEIGHT, HashRing, point_counts
from steelyard.core.clock import FakeClock

SPEC_ALGORITHMS = {
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "least_response_time",
    "power_of_two",
    "random",
    "ip_hash",
    "consistent_hash",
    "maglev",
}


def servers(*names: str) -> list[ServerState]:
    return [ServerState(Server(n, "127.0.0.1", 8000 + i)) for i, n in enumerate(names)]


def many(n: int, prefix: str = "10.0.") -> list[ServerState]:
    return servers(*(f"{prefix}{i // 250}.{i % 250 + 1}:8080" for i in range(n)))


def picks(balancer: object, count: int, ctx: PickContext | None = None) -> list[str]:
    ctx = ctx if ctx is not None else PickContext()
    out = []
    for _ in range(count):
        s = balancer.pick(ctx)  # type: ignore[attr-defined]
        assert s is not None
        out.append(s.name)
    return out


def keys(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.getrandbits(64).to_bytes(8, "little") for _ in range(count)]


# -- registry ---------------------------------------------------------------------------------


def test_registry_has_every_spec_algorithm() -> None:
    assert set(ALGORITHMS) >= SPEC_ALGORITHMS
    assert {"ip_hash", "consistent_hash", "maglev"} <= HASHING
    assert factory_for("round_robin") is SmoothWeightedRoundRobin
    with pytest.raises(ValueError):
        factory_for("fastest")


@pytest.mark.parametrize("name", sorted(SPEC_ALGORITHMS))
def test_every_algorithm_empty_and_all_excluded(name: str) -> None:
    factory = factory_for(name)
    rng = random.Random(1)
    settings = BalancerSettings(algorithm=name, table_size=251)
    assert factory([], [], settings, rng).pick(PickContext(hash_key=b"k")) is None
    group = servers("a", "b", "c")
    b = factory(group, [1.0, 2.0, 3.0], settings, rng)
    everyone = frozenset({"a", "b", "c"})
    for key in (None, b"k", b"other"):
        assert b.pick(PickContext(hash_key=key, exclude=everyone)) is None
        s = b.pick(PickContext(hash_key=key, exclude=frozenset({"a", "c"})))
        assert s is not None and s.name == "b"


@pytest.mark.parametrize("name", sorted(SPEC_ALGORITHMS))
def test_every_algorithm_has_a_repr(name: str) -> None:
    b = factory_for(name)(
        servers("a", "b"), [1.0, 1.0], BalancerSettings(table_size=251), random.Random(1)
    )
    assert "a" in repr(b)


# -- smooth weighted round robin ----------------------------------------------------------------


def reference_swrr(weights: Sequence[float], count: int) -> list[int]:
    """The textbook algorithm, written independently of the implementation."""
    current = [0.0] * len(weights)
    total = sum(weights)
    out = []
    for _ in range(count):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= total
        out.append(best)
    return out


def test_swrr_nginx_sequence() -> None:
    b = SmoothWeightedRoundRobin(servers("a", "b", "c"), [5, 1, 1])
    assert "".join(picks(b, 7)) == "aabacaa"
    assert "".join(picks(b, 14)) == "aabacaa" * 2  # replayed from the recorded cycle
    assert "replaying cycle of 7" in repr(b)


@pytest.mark.parametrize(
    "weights", [[1, 1, 1], [3, 2, 1], [10, 1], [7, 7, 3, 1, 1], [2.5, 1.0, 0.5], [0.3, 0.7]]
)
def test_swrr_matches_reference_and_counts_per_cycle(weights: list[float]) -> None:
    names = [f"s{i}" for i in range(len(weights))]
    b = SmoothWeightedRoundRobin(servers(*names), weights)
    got = picks(b, 200)
    assert got == [names[i] for i in reference_swrr(weights, 200)]
    if all(float(w).is_integer() for w in weights):
        cycle = int(sum(weights))
        k = 200 // cycle
        counts = collections.Counter(got[: k * cycle])
        assert counts == {n: int(w) * k for n, w in zip(names, weights, strict=True)}


def test_swrr_exclude_skips_the_excluded_turns() -> None:
    b = SmoothWeightedRoundRobin(servers("a", "b", "c"), [5, 1, 1])
    # sequence a a b a c a a; excluding a on the first pick skips a's two turns -> b
    assert picks(b, 1, PickContext(exclude=frozenset({"a"}))) == ["b"]
    assert picks(b, 4) == ["a", "c", "a", "a"]  # the rotation goes on where it was
    assert picks(b, 7) == list("aabacaa")
    # in replay mode as well
    assert picks(b, 1, PickContext(exclude=frozenset({"a", "b"}))) == ["c"]
    assert picks(b, 3) == list("aaa")


def test_swrr_exclude_heavy_server_peeks_instead_of_stepping_forever() -> None:
    b = SmoothWeightedRoundRobin(servers("heavy", "light"), [1000, 1])
    s = b.pick(PickContext(exclude=frozenset({"heavy"})))
    assert s is not None and s.name == "light"
    for _ in range(1001):  # complete the cycle, then in replay mode
        b.pick(PickContext())
    s = b.pick(PickContext(exclude=frozenset({"heavy"})))
    assert s is not None and s.name == "light"


def test_swrr_ignores_zero_weights() -> None:
    b = SmoothWeightedRoundRobin(servers("a", "b"), [0, 2])
    assert set(picks(b, 10)) == {"b"}


# -- least connections ----------------------------------------------------------------------


def test_least_connections_picks_fewest_per_weight() -> None:
    a, b, c = servers("a", "b", "c")
    a.active, b.active, c.active = 4, 1, 3
    lc = LeastConnections([a, b, c], [1, 1, 1])
    assert lc.pick(PickContext()) is b
    lc = LeastConnections([a, b, c], [8, 1, 1])  # 4/8 < 1/1
    assert lc.pick(PickContext()) is a
    assert lc.pick(PickContext(exclude=frozenset({"a"}))) is b


def test_least_connections_ties_rotate() -> None:
    group = servers("a", "b", "c", "d")
    lc = LeastConnections(group, [1, 1, 1, 1])
    assert picks(lc, 8) == list("abcdabcd")
    group[1].active = 1
    assert picks(lc, 3) == list("acd")  # next after d wraps to a; b is busier


def test_least_connections_spreads_held_requests_by_weight() -> None:
    group = servers("a", "b", "c")
    lc = LeastConnections(group, [3, 2, 1])
    for _ in range(600):
        s = lc.pick(PickContext())
        assert s is not None
        s.active += 1  # never released
    assert [s.active for s in group] == [300, 200, 100]


# -- least response time --------------------------------------------------------------------


def test_least_response_time_cost() -> None:
    a, b = servers("a", "b")
    a.ewma.observe(0.010, 0.0)
    b.ewma.observe(0.030, 0.0)
    lrt = LeastResponseTime([a, b], [1, 1])
    assert lrt.pick(PickContext()) is a
    a.active = 3  # 0.010 * 4 = 0.040 > 0.030 * 1
    assert lrt.pick(PickContext()) is b
    lrt = LeastResponseTime([a, b], [5, 1])  # 0.040 / 5 < 0.030
    assert lrt.pick(PickContext()) is a


def test_least_response_time_unknown_server_is_costed_at_the_mean() -> None:
    a, b, new = servers("a", "b", "new")
    a.ewma.observe(0.010, 0.0)
    b.ewma.observe(0.030, 0.0)
    lrt = LeastResponseTime([a, b, new], [1, 1, 1])
    assert lrt.estimates() == pytest.approx([0.010, 0.030, 0.020])
    assert lrt.pick(PickContext()) is new  # not starved: idle and never sampled, it is free
    new.active = 1  # from its first request on it costs the mean x in-flight: 0.020
    assert lrt.pick(PickContext()) is a  # not flooded: a (0.010 x 1) wins
    a.active = 2  # a costs 0.030, new 0.020
    assert lrt.pick(PickContext()) is new


def test_least_response_time_sequential_requests_reach_every_server() -> None:
    """One request at a time (nothing in flight at a pick): a lighter server with no sample
    must still get traffic, not stay behind the first server that answered."""
    clock = FakeClock(0.0)
    group = servers("a", "b", "c")
    lrt = LeastResponseTime(group, [1, 2, 5], BalancerSettings(extra={"clock": clock}))
    seen = set()
    for _ in range(10):
        s = lrt.pick(PickContext())
        assert s is not None
        seen.add(s.name)
        clock.advance(0.001)
        s.ewma.observe(0.001, clock())
    assert seen == {"a", "b", "c"}


def test_least_response_time_without_samples_is_least_connections() -> None:
    group = servers("a", "b", "c")
    lrt = LeastResponseTime(group, [1, 1, 1])
    assert picks(lrt, 6) == list("abcabc")
    group[0].active = 1
    assert picks(lrt, 2) == list("bc")


def test_least_response_time_a_stale_estimate_fades_towards_the_others() -> None:
    clock = FakeClock(0.0)
    slow, fast = servers("slow", "fast")
    slow.ewma.observe(2.0, 0.0)  # one very slow answer, then no traffic
    fast.ewma.observe(0.010, 0.0)
    lrt = LeastResponseTime([slow, fast], [1, 1], BalancerSettings(extra={"clock": clock}))
    fast.active = 5  # 0.010 x 6 = 0.06 < 2.0
    assert lrt.pick(PickContext()) is fast
    for t in range(1, 61):  # fast keeps answering, slow gets nothing
        clock.now = float(t)
        fast.ewma.observe(0.010, clock.now)
    slow_estimate = lrt.estimates()[0]
    assert slow_estimate == pytest.approx(0.010 + 1.99 * math.exp(-6.0))
    assert lrt.pick(PickContext()) is slow  # ~0.015 x 1 < 0.010 x 6: back in rotation
    fresh = LeastResponseTime([slow, fast], [1, 1], BalancerSettings(extra={"clock": clock}))
    clock.now = 0.2  # within STALE_AFTER of the samples: no fading
    slow.ewma.observe(2.0, 0.0)
    assert fresh.estimates(now=0.2)[0] == 2.0


def test_least_response_time_without_a_clock_uses_the_latest_sample_time() -> None:
    slow, fast = servers("slow", "fast")
    slow.ewma.observe(2.0, 0.0)
    fast.ewma.observe(0.010, 30.0)
    lrt = LeastResponseTime([slow, fast], [1, 1])
    assert lrt.now() == 30.0
    assert lrt.estimates()[0] == pytest.approx(0.010 + 1.99 * math.exp(-3.0))
    fast.active = 9
    assert lrt.pick(PickContext()) is fast  # 0.010 x 10 = 0.100 < slow's ~0.109 x 1
    fast.ewma.observe(0.010, 40.0)  # the next pick sees time move on
    assert lrt.pick(PickContext()) is slow  # slow has faded to ~0.046 < 0.100
    assert lrt.now() == 40.0


# -- power of two choices -------------------------------------------------------------------


def test_power_of_two_with_two_servers_always_takes_the_less_loaded() -> None:
    a, b = servers("a", "b")
    a.active = 5
    p2c = PowerOfTwo([a, b], [1, 1], BalancerSettings(), random.Random(3))
    assert set(picks(p2c, 50)) == {"b"}
    p2c = PowerOfTwo([a, b], [10, 1], BalancerSettings(), random.Random(3))  # 5/10 < 0/1? no
    assert set(picks(p2c, 50)) == {"b"}
    b.active = 1  # 0.5 < 1.0
    assert set(picks(p2c, 50)) == {"a"}


def test_power_of_two_tie_goes_to_first_drawn_so_shares_follow_weights() -> None:
    group = servers("a", "b", "c")
    p2c = PowerOfTwo(group, [6, 3, 1], BalancerSettings(), random.Random(5))
    counts = collections.Counter(picks(p2c, 20000))
    assert counts["a"] / 20000 == pytest.approx(0.6, abs=0.02)
    assert counts["b"] / 20000 == pytest.approx(0.3, abs=0.02)


def test_power_of_two_draws_are_distinct() -> None:
    p2c = PowerOfTwo(servers("a", "b", "c"), [100, 1, 1], BalancerSettings(), random.Random(9))
    for _ in range(2000):
        i, j = p2c._draw_two(p2c.cum, p2c.total)
        assert i != j


# -- random ---------------------------------------------------------------------------------


def test_random_shares_follow_weights() -> None:
    wr = WeightedRandom(
        servers("a", "b", "c"), [0.5, 0.25, 0.25], BalancerSettings(), random.Random(2)
    )
    counts = collections.Counter(picks(wr, 20000))
    assert counts["a"] / 20000 == pytest.approx(0.5, abs=0.02)
    assert counts["c"] / 20000 == pytest.approx(0.25, abs=0.02)


def test_random_with_exclusions_falls_back_to_the_rest() -> None:
    wr = WeightedRandom(
        servers("a", "b", "c"), [1000, 1000, 1], BalancerSettings(), random.Random(2)
    )
    assert set(picks(wr, 50, PickContext(exclude=frozenset({"a", "b"})))) == {"c"}


# -- hashing --------------------------------------------------------------------------------


def test_hashes_are_pinned() -> None:
    # golden values: a change here re-routes every client of every deployed instance, and
    # these values must be the same on every machine and in every process
    assert hash64(b"10.1.2.3") == 0xA6F6A744DBD042DD
    assert hash64(b"") == 0x5E316B969D8E1487
    assert maglev_offset_skip("10.0.0.1:8080", 65537) == (29103, 42875)
    assert ring_point_bytes("a", 2, 1).hex() == "010000dbe3a3fa3f010067a61feef13f"
    assert name_hash("a", b"maglev-offset") != name_hash("a", b"maglev-skip")
    group = servers(*(f"s{i}" for i in range(5)))
    settings = BalancerSettings(table_size=1009)
    expected = {
        "ip_hash": "013203220001113301104223030044",
        "consistent_hash": "013203220001113301104223030044",
        "maglev": "104141121342341100233334303013",
    }
    for name, sequence in expected.items():
        b = factory_for(name)(group, [1.0] * 5, settings, random.Random(0))
        got = "".join(b.pick(PickContext(hash_key=str(k).encode())).name[1] for k in range(30))  # type: ignore[union-attr]
        assert got == sequence, name


HASH_SCRIPT = """
import sys
from steelyard.core.balancing import factory_for, BalancerSettings, PickContext, Server, ServerState
group = [ServerState(Server(f"s{i}", "127.0.0.1", 8000 + i)) for i in range(7)]
for name in ("ip_hash", "consistent_hash", "maglev"):
    b = factory_for(name)(group, [1.0] * 7, BalancerSettings(table_size=1009), None)
    print(name, " ".join(b.pick(PickContext(hash_key=str(k).encode())).name for k in range(40)))
"""


def test_hash_algorithms_agree_across_processes_with_different_hash_seeds() -> None:
    outputs = []
    for seed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        done = subprocess.run(
            [sys.executable, "-c", HASH_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0].count("\n") == 3
    assert len(set(outputs[0].split())) > 5  # keys spread over several servers


# -- ketama ring: consistent_hash and ip_hash ---------------------------------------------------


def owner_map(balancer: object, ks: list[bytes]) -> dict[bytes, str]:
    out = {}
    for k in ks:
        s = balancer.pick(PickContext(hash_key=k))  # type: ignore[attr-defined]
        assert s is not None
        out[k] = s.name
    return out


@pytest.mark.parametrize("cls", [ConsistentHash, IpHash])
def test_ring_removal_moves_only_the_removed_servers_keys(cls: type[ConsistentHash]) -> None:
    group = many(20)
    ks = keys(4000)
    before = owner_map(cls(group, [1.0] * 20), ks)
    gone = group[7].name
    after = owner_map(cls(group[:7] + group[8:], [1.0] * 19), ks)
    moved = [k for k in ks if before[k] != after[k]]
    assert all(before[k] == gone for k in moved)
    assert len(moved) == sum(1 for k in ks if before[k] == gone)
    assert 0.5 / 20 < len(moved) / len(ks) < 2 / 20


def test_ring_is_independent_of_server_order() -> None:
    group = many(10)
    ks = keys(500)
    assert owner_map(ConsistentHash(group, [1.0] * 10), ks) == owner_map(
        ConsistentHash(group[::-1], [1.0] * 10), ks
    )


@pytest.mark.parametrize("prefix", ["10.0.", "backend-", "192.168."])
def test_ring_balance_at_100_servers(prefix: str) -> None:
    b = ConsistentHash(many(100, prefix), [1.0] * 100)
    shares = b.ring.shares()
    assert len(b.ring) == 100 * POINTS_PER_WEIGHT
    assert sum(shares) == pytest.approx(1.0)
    assert max(shares) * 100 <= 1.10


def test_ring_weights_and_growing_weight_only_pulls_keys_in() -> None:
    group = many(5)
    ks = keys(3000)
    weights = [1.0, 1.0, 1.0, 1.0, 4.0]
    counts = collections.Counter(owner_map(ConsistentHash(group, weights), ks).values())
    assert counts[group[4].name] / 3000 == pytest.approx(0.5, abs=0.05)
    slow = owner_map(ConsistentHash(group, [1.0, 1.0, 1.0, 1.0, 0.2]), ks)  # slow start
    full = owner_map(ConsistentHash(group, [1.0, 1.0, 1.0, 1.0, 1.0]), ks)
    moved = [k for k in ks if slow[k] != full[k]]
    assert moved and all(full[k] == group[4].name for k in moved)


@pytest.mark.parametrize("n", [1, 2, 40])
def test_ring_bucket_index_agrees_with_a_plain_binary_search(n: int) -> None:
    ring = ConsistentHash(many(n), [1.0] * n).ring
    rng = random.Random(n)
    probes = [rng.getrandbits(64) for _ in range(3000)] + [0, 2**64 - 1]
    probes += [int((p - 1.0) * 2**52) << 12 for p in ring.positions[:50]]  # exactly on points
    for h in probes:
        plain = bisect.bisect_left(ring.positions, key_position(h))
        assert ring.locate(h) == (plain if plain < len(ring) else 0)


def test_point_counts_are_capped() -> None:
    assert point_counts([1.0, 2.0], 100, 10_000) == [100, 200]
    assert point_counts([500.0, 500.0], 100, 10_000) == [5000, 5000]
    assert point_counts([0.0001], 100, 10_000) == [1]


def test_ring_exclusion_walks_to_the_next_server_deterministically() -> None:
    group = many(6)
    b = ConsistentHash(group, [1.0] * 6)
    without = {s.name: ConsistentHash([o for o in group if o is not s], [1.0] * 5) for s in group}
    for k in keys(200):
        first = b.pick(PickContext(hash_key=k))
        assert first is not None
        retry = PickContext(hash_key=k, exclude=frozenset({first.name}))
        second = b.pick(retry)
        assert second is not None and second is not first
        assert b.pick(retry) is second
        # the fall-through server is where the key goes once `first` is removed
        assert without[first.name].pick(PickContext(hash_key=k)) is second


def test_ring_without_key_falls_back_to_weighted_random() -> None:
    b = ConsistentHash(servers("a", "b"), [3.0, 1.0], BalancerSettings(), random.Random(4))
    counts = collections.Counter(picks(b, 4000))
    assert counts["a"] / 4000 == pytest.approx(0.75, abs=0.04)


def test_bounded_loads_cap_every_server() -> None:
    group = many(8)
    b = ConsistentHash(group, [1.0] * 8, BalancerSettings(hash_balance_factor=125))
    hot = b"the-one-hot-key"
    for _ in range(200):
        placing = sum(s.active for s in group) + 1
        cap = -(-125 * placing // (100 * 8))
        s = b.pick(PickContext(hash_key=hot))
        assert s is not None
        assert s.active < cap
        s.active += 1
    assert max(s.active for s in group) <= -(-125 * 200 // 800)
    assert "factor=1.25" in repr(b)


def test_bounded_loads_keep_a_key_home_while_there_is_room() -> None:
    group = many(8)
    b = ConsistentHash(group, [1.0] * 8, BalancerSettings(hash_balance_factor=150))
    plain = ConsistentHash(group, [1.0] * 8)
    for k in keys(100):
        assert b.pick(PickContext(hash_key=k)) is plain.pick(PickContext(hash_key=k))


def test_ip_hash_is_never_bounded() -> None:
    group = many(4)
    b = IpHash(group, [1.0] * 4, BalancerSettings(hash_balance_factor=100))
    first = b.pick(PickContext(hash_key=b"\x7f\x00\x00\x01"))
    assert first is not None
    first.active = 100
    assert b.pick(PickContext(hash_key=b"\x7f\x00\x00\x01")) is first


# -- maglev ---------------------------------------------------------------------------------


def test_maglev_refuses_non_prime_table() -> None:
    assert is_prime(65537) and is_prime(2) and not is_prime(65536) and not is_prime(1)
    with pytest.raises(ValueError, match="prime"):
        Maglev(servers("a"), [1.0], BalancerSettings(table_size=1000))


@pytest.mark.parametrize("n", [1, 3, 7, 100])
def test_maglev_entries_are_floor_or_ceil(n: int) -> None:
    m = Maglev(many(n), [1.0] * n)
    counts = m.slot_counts()
    assert sum(counts.values()) == 65537
    assert set(counts.values()) <= {65537 // n, math.ceil(65537 / n)}


@pytest.mark.parametrize("prefix", ["10.0.", "backend-", "192.168."])
def test_maglev_removing_one_of_100_changes_under_2_percent(prefix: str) -> None:
    group = many(100, prefix)
    m = Maglev(group, [1.0] * 100)
    gone = group[42]
    m2 = Maglev([s for s in group if s is not gone], [1.0] * 99)
    changed = sum(1 for x, y in zip(m.table, m2.table, strict=True) if x is not y)
    own = sum(1 for x in m.table if x is gone)
    assert changed >= own
    assert changed / 65537 < 0.02


def test_maglev_is_independent_of_server_order() -> None:
    group = many(30)
    shuffled = group[:]
    random.Random(3).shuffle(shuffled)
    a = Maglev(group, [1.0] * 30, BalancerSettings(table_size=4099))
    b = Maglev(shuffled, [1.0] * 30, BalancerSettings(table_size=4099))
    assert [s.name for s in a.table] == [s.name for s in b.table]


def test_maglev_weights() -> None:
    group = many(4)
    m = Maglev(group, [1.0, 1.0, 2.0, 4.0])
    counts = m.slot_counts()
    for s, w in zip(group, [1.0, 1.0, 2.0, 4.0], strict=True):
        assert counts[s.name] / 65537 == pytest.approx(w / 8, rel=0.01)
    fractional = Maglev(group, [0.1, 0.1, 0.1, 0.1], BalancerSettings(table_size=101))
    assert set(fractional.slot_counts().values()) <= {25, 26}


def test_maglev_exclusion_takes_the_next_entry() -> None:
    group = servers("a", "b", "c")
    m = Maglev(group, [1.0] * 3, BalancerSettings(table_size=13))
    for k in keys(50):
        i = hash64(k) % 13
        first = m.table[i]
        assert m.pick(PickContext(hash_key=k)) is first
        nxt = next(
            m.table[(i + d) % 13] for d in range(1, 13) if m.table[(i + d) % 13] is not first
        )
        assert m.pick(PickContext(hash_key=k, exclude=frozenset({first.name}))) is nxt


def test_maglev_without_key_falls_back_to_weighted_random() -> None:
    m = Maglev(servers("a", "b"), [1.0, 3.0], BalancerSettings(table_size=101), random.Random(8))
    counts = collections.Counter(picks(m, 4000))
    assert counts["b"] / 4000 == pytest.approx(0.75, abs=0.04)


# -- load hooks: the backend keeps least-load indexes in step ---------------------------------


def test_backend_feeds_least_connections_through_its_load_hooks() -> None:
    from steelyard.core.backend import Backend
    from steelyard.core.load import Outcome

    group = [Server(f"s{i}", "127.0.0.1", 8000 + i) for i in range(4)]
    backend = Backend(
        "b",
        group,
        BalancerSettings(algorithm="least_connections"),
        clock=FakeClock(0.0),
        rng=random.Random(1),
    )
    lc = backend.balancer
    assert isinstance(lc, LeastConnections) and lc.loads is not None  # tracked on install
    assert backend.on_acquire is None and backend.on_release == lc.on_release
    leases = [backend.acquire(PickContext()) for _ in range(6)]
    assert [lease.server.name for lease in leases if lease] == [
        "s0", "s1", "s2", "s3", "s0", "s1"
    ]  # fmt: skip
    # acquires are not reported: s0 and s1 (2 in flight each) are keyed stale low at 1
    assert lc.loads.keys == [1.0, 1.0, 1.0, 1.0]
    for lease in leases[:2]:  # s0 and s1 back to one each
        assert lease is not None
        lease.release(Outcome.OK)
    assert lc.loads.keys[:2] == [1.0, 1.0]
    nxt = backend.acquire(PickContext())
    assert nxt is not None and nxt.server.name == "s2"  # ties in turn: after s1 comes s2
    backend.set_weight("s3", 2)  # a new snapshot: tracked again from the live counts
    lc2 = backend.balancer
    assert isinstance(lc2, LeastConnections) and lc2 is not lc
    assert lc2.loads is not None and lc2.loads.keys == [1.0, 1.0, 2.0, 0.5]
    assert "RotatingMinIndex(size=4" in repr(lc2.loads)


def test_untracked_least_connections_scans_live_counts() -> None:
    group = servers("a", "b")
    lc = LeastConnections(group, [1.0, 1.0])
    assert lc.loads is None
    group[0].active = 3  # a change nobody reports: the scan still sees it
    assert picks(lc, 3) == ["b", "b", "b"]


def test_backend_feeds_least_response_time_through_its_release_hook() -> None:
    from steelyard.core.backend import Backend
    from steelyard.core.load import Outcome

    clock = FakeClock(100.0)
    group = [Server(n, "127.0.0.1", 8000 + i) for i, n in enumerate(("a", "b", "c"))]
    backend = Backend(
        "b",
        group,
        BalancerSettings(algorithm="least_response_time", extra={"clock": clock}),
        clock=clock,
        rng=random.Random(1),
    )
    lrt = backend.balancer
    assert isinstance(lrt, LeastResponseTime) and lrt.view is not None
    assert backend.on_acquire == lrt.on_acquire and backend.on_release == lrt.on_release
    first = [backend.acquire(PickContext()) for _ in range(3)]  # no samples: in turn
    assert [lease.server.name for lease in first if lease] == ["a", "b", "c"]
    clock.now = 100.010
    first[0].release(Outcome.OK)  # type: ignore[union-attr]  # a: 10 ms
    clock.now = 100.050
    first[1].release(Outcome.OK)  # type: ignore[union-attr]  # b: 50 ms
    assert "fresh=2, idle=1, stale=0" in repr(lrt.view)
    # c (one in flight, no sample) costs the mean 30 ms x 1; a 10 ms x 1 wins, then a again
    # (10 ms x 2 = 20 ms < b's 50 ms and c's 30 ms): the acquire hook re-keyed a
    lease = backend.acquire(PickContext())
    assert lease is not None and lease.server.name == "a"
    lease2 = backend.acquire(PickContext())
    assert lease2 is not None and lease2.server.name == "a"
    clock.now = 101.0  # a and b answered more than STALE_AFTER ago: stale, fading
    lease3 = backend.acquire(PickContext())
    assert lease3 is not None
    assert "fresh=0, idle=1, stale=2" in repr(lrt.view)
    estimates = lrt.estimates()
    costs = [
        e * (in_flight_factor(s) - (1 if s is lease3.server else 0))
        for e, s in zip(estimates, lrt.servers, strict=True)
    ]
    assert costs[lrt.servers.index(lease3.server)] == min(costs)


def test_tracked_least_response_time_survives_index_compaction() -> None:
    # every release re-keys a float cost, so stale heap keys pile up and the index compacts
    # itself every few dozen requests; pick() must keep working on the compacted index
    clock = FakeClock(0.0)
    group = servers("a", "b", "c")
    lrt = LeastResponseTime(group, [1.0, 2.0, 1.0], BalancerSettings(extra={"clock": clock}))
    lrt.track_load()
    assert lrt.view is not None
    rng = random.Random(5)
    held: collections.deque[ServerState] = collections.deque()
    compactions = 0
    for _ in range(3000):
        heap = lrt.view.fresh.heap
        before = len(heap)
        costs = [
            e * in_flight_factor(g) / w
            for e, g, w in zip(lrt.estimates(), group, [1.0, 2.0, 1.0], strict=True)
        ]
        s = lrt.pick(PickContext())
        assert s is not None
        assert costs[group.index(s)] <= min(costs) * (1 + 1e-9)
        s.active += 1
        held.append(s)
        if len(held) > 4:
            o = held.popleft()
            clock.now += 0.001
            o.active -= 1
            o.ewma.observe(rng.uniform(0.001, 0.050), clock.now)
            lrt.on_release(o)
        compactions += len(heap) < before - 8
    assert compactions > 10


def test_ring_owner_array_matches_the_tag_in_each_position() -> None:
    # the owners array is split out of the doubles' bytes; the tag is also the low 16 bits of
    # each position's 52-bit mantissa, which is how it was read before
    names = [f"srv-{i}" for i in range(300)]
    ring = HashRing(names, [3] * 299 + [70000])  # tags up to 299: both bytes are used
    assert len(ring.owners) == len(ring.positions) == 299 * 3 + 70000
    decoded = [int((p - 1.0) * 2.0**52) & 0xFFFF for p in ring.positions]
    assert list(ring.owners) == decoded
    assert set(decoded) == set(range(300))
