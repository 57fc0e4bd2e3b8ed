"""The built-in scenarios reproduce the standard advice (fixed seeds).

Each `check_*` states one rule of thumb as an assertion over a scenario result. They run at
20k requests over every algorithm entry of the scenario, and once more at the shipped default
size (100k) over just the entries the rule is about, so the numbers in
docs/which-algorithm.md are covered too.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from steelyard.core.balancing import ALGORITHMS
from steelyard.simulate.baselines import BASELINES
from steelyard.simulate.engine import EntryResult
from steelyard.simulate.runner import ScenarioResult, run_scenario
from steelyard.simulate.scenario import BUILTIN_NAMES, builtin_text, load_scenario

SMALL = 20_000


def p99(r: EntryResult) -> float:
    return r.percentiles_ms()["p99"]


def hottest(r: EntryResult) -> int:
    return max(r.peak_in_flight.values())


def check_homogeneous(res: ScenarioResult) -> None:
    # identical servers: every algorithm within a modest factor at p99
    values = {name: p99(r) for name, r in res.entries.items()}
    assert max(values.values()) < 1.5 * min(values.values()), values
    for r in res.entries.values():
        assert all(0.17 < s < 0.23 for s in r.share.values()), (r.name, r.share)


def check_slow_server(res: ScenarioResult) -> None:
    e = res.entries
    rr = p99(e["round_robin"])
    for name in ("least_connections", "least_response_time"):
        assert p99(e[name]) * 5 < rr, (name, p99(e[name]), rr)
        # they steer around s5: it gets far less than its 20% share
        assert e[name].share["s5"] < 0.15
    if "power_of_two" in e:  # load-aware too: two choices are enough to avoid s5
        assert p99(e["power_of_two"]) * 5 < rr
    assert e["round_robin"].share["s5"] == pytest.approx(0.2, abs=0.001)
    assert hottest(e["round_robin"]) > 10 * hottest(e["least_connections"])


def check_mixed_capacity(res: ScenarioResult) -> None:
    e = res.entries
    plain, weighted = e["round_robin"], e["weighted_round_robin"]
    assert p99(weighted) * 5 < p99(plain)
    assert weighted.share == pytest.approx(
        {"small-1": 0.1, "small-2": 0.1, "big-1": 0.4, "big-2": 0.4}, abs=0.005
    )
    assert plain.share["small-1"] == pytest.approx(0.25, abs=0.005)
    # plain round robin overloads the small servers: their queue is where the peak is
    assert plain.peak_in_flight["small-1"] > 10 * weighted.peak_in_flight["small-1"]


def check_long_lived(res: ScenarioResult) -> None:
    e = res.entries
    lc, rr = e["least_connections"], e["round_robin"]
    assert p99(lc) * 3 < p99(rr), (p99(lc), p99(rr))
    assert hottest(lc) < hottest(rr)
    # the server that joined late gets more of the new connections under least connections
    assert lc.share["s6"] > rr.share["s6"]


def check_scale_out(res: ScenarioResult) -> None:
    e = res.entries
    assert 0.85 <= e["modulo"].moved_keys <= 0.95  # type: ignore[operator]
    for name in ("consistent_hash", "maglev", "ip_hash"):
        if name in e:
            assert 0.06 <= e[name].moved_keys <= 0.15, name  # type: ignore[operator]
    if "round_robin" in e:
        assert e["round_robin"].moved_keys is None


def check_hot_key(res: ScenarioResult) -> None:
    e = res.entries
    plain, bounded = e["consistent_hash"], e["consistent_hash_bounded"]
    assert hottest(bounded) * 5 < hottest(plain)
    assert p99(bounded) * 5 < p99(plain)
    assert max(plain.share.values()) > 0.25  # the hot key's server
    assert max(bounded.share.values()) < 0.2
    # three instances: plain hashing needs no coordination, bounded loads disagree
    assert plain.instance_disagreement == 0.0
    assert bounded.instance_disagreement is not None and bounded.instance_disagreement > 0.05


def check_canary(res: ScenarioResult) -> None:
    for name in ("round_robin", "random", "power_of_two"):
        if name in res.entries:
            assert res.entries[name].share["canary"] == pytest.approx(0.10, abs=0.01), name


CHECKS: dict[str, tuple[Callable[[ScenarioResult], None], list[str]]] = {
    "homogeneous": (check_homogeneous, ["round_robin", "least_connections", "maglev"]),
    "slow-server": (
        check_slow_server,
        ["round_robin", "least_connections", "least_response_time"],
    ),
    "mixed-capacity": (check_mixed_capacity, ["round_robin", "weighted_round_robin"]),
    "long-lived": (check_long_lived, ["round_robin", "least_connections"]),
    "scale-out": (check_scale_out, ["modulo", "consistent_hash", "maglev"]),
    "hot-key": (check_hot_key, ["consistent_hash", "consistent_hash_bounded"]),
    "canary": (check_canary, ["round_robin", "random", "power_of_two"]),
}


def test_every_builtin_has_a_check() -> None:
    assert set(CHECKS) == set(BUILTIN_NAMES)


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_scenario_reproduces_the_advice(name: str) -> None:
    check, _ = CHECKS[name]
    result = run_scenario(load_scenario(name), requests=SMALL, jobs=1)
    assert result.requests == SMALL and result.seed == 1
    assert set(result.entries) == {e.name for e in load_scenario(name).algorithms}
    check(result)


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_shipped_defaults_reproduce_the_advice(name: str) -> None:
    scenario = load_scenario(name)
    assert scenario.requests == 100_000 and scenario.seed == 1
    assert scenario.description and scenario.advice and scenario.rule
    assert builtin_text(name).startswith(f"name: {name}\n")
    for entry in scenario.algorithms:
        assert entry.algorithm in ALGORITHMS or entry.algorithm in BASELINES
    check, decisive = CHECKS[name]
    check(run_scenario(scenario, algorithms=decisive, jobs=1))
