"""core.backend.Backend with a FakeClock: eligibility, health, ejection, panic, slow start,
admin operations, drain/removal, connection caps and the wait queue, reload carry-over."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pytest

from steelyard.core.backend import EMPTY, Backend, BackendError
from steelyard.core.balancing.base import (
    AdminState,
    BalancerSettings,
    Health,
    PickContext,
    Server,
    ServerState,
)
from steelyard.core.clock import FakeClock
from steelyard.core.events import Event, EventBus
from steelyard.core.load import Lease, Outcome

CTX = PickContext()


def servers(*names: str, weight: int = 1) -> list[Server]:
    return [Server(n, "127.0.0.1", 8000 + i, weight) for i, n in enumerate(names)]


def make(
    names: tuple[str, ...] = ("a", "b", "c", "d"),
    clock: FakeClock | None = None,
    algorithm: str = "round_robin",
    **kw: Any,
) -> Backend:
    return Backend(
        "api",
        servers(*names),
        BalancerSettings(algorithm=algorithm),
        clock=clock or FakeClock(),
        rng=random.Random(1),
        **kw,
    )


def picks(backend: Backend, n: int = 100, ctx: PickContext = CTX) -> Counter[str]:
    got: Counter[str] = Counter()
    for _ in range(n):
        lease = backend.acquire(ctx)
        if lease is None:
            got["<none>"] += 1
            continue
        got[lease.server.name] += 1
        lease.release(Outcome.OK)
    return got


def pass_all(backend: Backend, ok: bool = True) -> None:
    for name in list(backend.servers):
        backend.observe_check(name, ok, "status 200" if ok else "status 503", 0.0)


def events_of(bus: EventBus, kind: str) -> list[Event]:
    return [e for e in bus.history if e.type == kind]


# -- basics --------------------------------------------------------------------------------


def test_without_checks_every_server_takes_traffic() -> None:
    b = make()
    assert set(picks(b, 40)) == {"a", "b", "c", "d"}


def test_lease_counts_active_and_requests() -> None:
    b = make(("a",))
    lease = b.acquire(CTX)
    assert lease is not None
    s = b.get("a")
    assert (s.active, s.requests_total) == (1, 1)
    lease.release(Outcome.HTTP_5XX)
    lease.release(Outcome.HTTP_5XX)  # exactly once
    assert (s.active, s.failures_total) == (0, 1)


def test_unknown_until_first_check() -> None:
    b = make(health_checked=True)
    assert b.acquire(CTX) is None
    assert b.balancer is EMPTY
    assert all(s.health is Health.UNKNOWN for s in b.servers.values())
    assert all(s.state(0.0) == "unknown" for s in b.servers.values())
    b.observe_check("a", True, "status 200", 100.0)
    assert picks(b, 5) == Counter({"a": 5})
    assert b.get("a").last_check is not None
    assert b.get("a").last_check.reason == "status 200"  # type: ignore[union-attr]
    assert b.get("a").last_check.time == 100.0  # type: ignore[union-attr]


def test_unhealthy_server_leaves_and_returns_with_hysteresis() -> None:
    bus = EventBus()
    b = make(
        ("a", "b"), health_checked=True, healthy_threshold=2, unhealthy_threshold=2, events=bus
    )
    pass_all(b)
    b.observe_check("a", False, "status 503", 1.0)
    assert "a" in picks(b, 10)
    assert b.observe_check("a", False, "timeout", 2.0) is True
    assert picks(b, 10) == Counter({"b": 10})
    assert b.get("a").state(0.0) == "unhealthy"
    b.observe_check("a", True, "status 200", 3.0)
    assert "a" not in picks(b, 10)
    assert b.observe_check("a", True, "status 200", 4.0) is True
    assert "a" in picks(b, 10)
    flips = [(e.server, e.state, e.reason) for e in events_of(bus, "health")]
    assert ("a", "unhealthy", "timeout") in flips
    assert flips[-1] == ("a", "healthy", "status 200")


def test_check_results_for_unknown_or_removed_servers_are_ignored() -> None:
    b = make(("a", "b"), health_checked=True)
    assert b.observe_check("zz", True, "x", 0.0) is False
    b.remove_server("a")
    assert b.observe_check("a", True, "x", 0.0) is False


# -- passive: outlier detection ------------------------------------------------------------


def fail_n(b: Backend, name: str, n: int, outcome: Outcome = Outcome.HTTP_5XX) -> None:
    """Send n requests that land on `name` (excluding the others) and fail."""
    others = frozenset(s for s in b.servers if s != name)
    for _ in range(n):
        lease = b.acquire(PickContext(exclude=others))
        assert lease is not None and lease.server.name == name
        lease.release(outcome)


def test_ejection_after_consecutive_failures_and_return() -> None:
    clock = FakeClock()
    bus = EventBus()
    b = make(("a", "b", "c", "d"), clock=clock, outlier=(3, 10.0, 50.0), events=bus)
    fail_n(b, "a", 3)
    assert b.get("a").state(clock()) == "ejected"
    assert "a" not in picks(b, 20)
    assert len(events_of(bus, "ejection")) == 1
    assert b.ejections_total(b.get("a")) == 1
    clock.advance(9.9)
    b.tick()
    assert "a" not in picks(b, 20)
    clock.advance(0.1)
    b.tick()
    assert "a" in picks(b, 20)
    assert events_of(bus, "return")[-1].server == "a"


def test_at_most_consecutive_failures_requests_reach_a_failing_server() -> None:
    b = make(("a", "b"), outlier=(5, 30.0, 50.0))
    reached = Counter[str]()
    for _ in range(200):
        lease = b.acquire(CTX)
        assert lease is not None
        reached[lease.server.name] += 1
        lease.release(Outcome.CONNECT_FAILED if lease.server.name == "a" else Outcome.OK)
    assert reached["a"] == 5


def test_ejection_doubles_and_caps_in_backend() -> None:
    clock = FakeClock()
    b = make(("a", "b"), clock=clock, outlier=(1, 30.0, 50.0, 100.0))
    seen = []
    for _ in range(4):
        fail_n(b, "a", 1)
        start = clock()
        while b.get("a").ejected(clock()):
            clock.advance(1.0)
            b.tick()
        seen.append(clock() - start)
    assert seen == [30.0, 60.0, 100.0, 100.0]


def test_max_ejection_percent_caps_ejections() -> None:
    clock = FakeClock()
    b = make(("a", "b", "c", "d"), clock=clock, outlier=(1, 30.0, 50.0))
    for name in ("a", "b", "c", "d"):
        fail_n(b, name, 1)
    ejected = [s.name for s in b.servers.values() if s.ejected(clock())]
    assert ejected == ["a", "b"]
    # the cap held; c and d keep taking traffic
    assert set(picks(b, 20)) == {"c", "d"}


def test_max_ejection_percent_zero_never_ejects() -> None:
    b = make(("a", "b"), outlier=(1, 30.0, 0.0))
    fail_n(b, "a", 5)
    assert not b.get("a").ejected(0.0)


def test_single_server_is_not_ejected_under_fifty_percent() -> None:
    b = make(("a",), outlier=(1, 30.0, 50.0))
    fail_n(b, "a", 3)
    assert b.acquire(CTX) is not None


def test_removed_servers_do_not_count_towards_the_ejection_cap() -> None:
    b = make(("a", "b", "c"), outlier=(1, 30.0, 50.0))
    lease = b.acquire(PickContext(exclude=frozenset({"b", "c"})))
    assert lease is not None
    b.remove_server("a")  # still draining (a lease is held)
    fail_n(b, "b", 1)  # 1 of 2 remaining = 50%: allowed
    assert b.get("b").ejected(0.0)


def test_with_active_checks_an_ejected_server_returns_only_after_a_passing_check() -> None:
    clock = FakeClock()
    bus = EventBus()
    b = make(("a", "b"), clock=clock, health_checked=True, outlier=(2, 10.0, 50.0), events=bus)
    pass_all(b)
    fail_n(b, "a", 2)
    clock.advance(10.0)
    b.tick()
    assert b.get("a").state(clock()) == "ejected"
    assert events_of(bus, "awaiting_check")[-1].server == "a"
    assert "a" not in picks(b, 10)
    b.observe_check("a", False, "status 500", 0.0)
    b.tick()
    assert "a" not in picks(b, 10)
    b.observe_check("a", True, "status 200", 0.0)
    assert b.get("a").state(clock()) == "healthy"
    assert "a" in picks(b, 10)


def test_with_active_checks_a_pass_during_the_ejection_lets_it_back_when_time_is_up() -> None:
    clock = FakeClock()
    b = make(("a", "b"), clock=clock, health_checked=True, outlier=(1, 10.0, 50.0))
    pass_all(b)
    fail_n(b, "a", 1)
    clock.advance(5.0)
    b.observe_check("a", True, "status 200", 0.0)
    assert b.get("a").ejected(clock())
    clock.advance(5.0)
    b.tick()
    assert not b.get("a").ejected(clock())


def test_cancelled_outcome_is_not_a_failure() -> None:
    b = make(("a", "b"), outlier=(1, 30.0, 50.0))
    lease = b.acquire(PickContext(exclude=frozenset({"b"})))
    assert lease is not None
    lease.release(Outcome.CANCELLED)
    assert not b.get("a").ejected(0.0)
    assert b.get("a").failures_total == 0


# -- panic ---------------------------------------------------------------------------------


def test_panic_routes_over_all_when_too_few_are_healthy() -> None:
    bus = EventBus()
    b = make(("a", "b", "c"), health_checked=True, unhealthy_threshold=1, events=bus)
    pass_all(b)
    b.observe_check("a", False, "x", 0.0)
    assert not b.panic  # 2 of 3 healthy
    b.observe_check("b", False, "x", 0.0)
    assert b.panic  # 1 of 3 < 50%
    assert set(picks(b, 30)) == {"a", "b", "c"}
    assert events_of(bus, "panic")[-1].reason == "entered panic mode"
    b.observe_check("b", True, "x", 0.0)
    b.observe_check("b", True, "x", 0.0)
    assert not b.panic
    assert set(picks(b, 30)) == {"b", "c"}


def test_panic_never_routes_to_disabled_draining_or_unknown() -> None:
    b = make(("a", "b", "c", "d", "e"), health_checked=True, unhealthy_threshold=1)
    for name in ("a", "b", "c", "d"):
        b.observe_check(name, False, "x", 0.0)
    b.observe_check("a", True, "x", 0.0)
    b.disable("b")
    b.drain("c")
    # in rotation with known health: a (unhealthy), d (unhealthy); e unknown
    assert b.panic
    assert set(picks(b, 30)) == {"a", "d"}


def test_panic_threshold_zero_disables_panic() -> None:
    b = make(("a", "b"), health_checked=True, unhealthy_threshold=1, panic_threshold=0)
    pass_all(b, ok=False)
    assert not b.panic
    assert b.acquire(CTX) is None


# -- slow start ----------------------------------------------------------------------------


def test_slow_start_ramps_from_ten_percent_to_full_weight() -> None:
    clock = FakeClock()
    b = make(("a", "b"), clock=clock, slow_start=10.0)
    b.disable("a")
    b.enable("a")  # re-joins: ramps
    s = b.get("a")
    # 10%, 55%, 77.5%: in steps of 1/32 of the weight, rounded up (exact in floating point)
    assert b.effective_weight(s, clock()) == 4 / 32
    clock.advance(5.0)
    assert b.effective_weight(s, clock()) == 18 / 32
    clock.advance(2.5)
    assert b.effective_weight(s, clock()) == 25 / 32  # 24.8 steps
    clock.advance(2.5)
    assert b.effective_weight(s, clock()) == pytest.approx(1.0)
    assert s.ramp_start is None


def test_slow_start_share_grows_and_rebuilds_on_tick() -> None:
    clock = FakeClock()
    b = make(("a", "b"), clock=clock, slow_start=10.0)
    b.disable("a")
    b.enable("a")
    early = picks(b, 108)["a"]
    assert early == 12  # weight 4/32 vs 1: 1 in 9
    clock.advance(10.0)
    b.tick()
    assert picks(b, 100)["a"] == 50
    assert not b.ramping


def test_round_robin_keeps_its_exact_cycle_while_a_server_ramps() -> None:
    # ramp weights are multiples of 1/32 of a weight, so round robin runs on integer units
    # (no float scan) and replays its cycle: over each full cycle every server gets exactly
    # its ramped share
    from steelyard.core.balancing import SmoothWeightedRoundRobin

    clock = FakeClock()
    b = make(("a", "b", "c"), clock=clock, slow_start=10.0)
    b.disable("a")
    b.enable("a")
    clock.advance(3.0)  # 10% + 90% x 0.3 = 37% -> 12/32 = 3/8
    b.tick()
    rr = b.balancer
    assert isinstance(rr, SmoothWeightedRoundRobin) and rr.groups is not None
    assert rr.groups.units == [3, 8, 8] and rr.cycle_len == 19
    for _ in range(3):
        assert picks(b, 19) == {"a": 3, "b": 8, "c": 8}
    assert "replaying cycle of 19" in repr(rr)


def test_many_servers_ramping_at_once_step_in_websters_order_until_the_ramps_end() -> None:
    # 40 servers re-joining a second apart over a 40 s slow start: more than GROUPS_LIMIT
    # distinct ramp weights, so the snapshot steps its cycle in Webster's order (O(log) per
    # pick); once every ramp is over the same backend is back on nginx's order
    from steelyard.core.balancing import SmoothWeightedRoundRobin
    from steelyard.core.balancing.round_robin import GROUPS_LIMIT, _Groups, _Webster

    clock = FakeClock()
    names = tuple(f"s{i}" for i in range(40))
    b = make(names, clock=clock, slow_start=40.0)
    for name in names:
        b.disable(name)
        b.enable(name)
        clock.advance(1.0)
    b.tick()
    rr = b.balancer
    assert isinstance(rr, SmoothWeightedRoundRobin) and isinstance(rr.groups, _Webster)
    assert len(set(rr.groups.units)) > GROUPS_LIMIT
    cycle = sum(rr.groups.units)
    got = picks(b, cycle)
    assert got == {n: u for n, u in zip(names, rr.groups.units, strict=True)}  # exact counts
    assert got["s0"] > got["s39"]  # the earliest joiner is the furthest up its ramp
    clock.advance(40.0)
    b.tick()
    assert not b.ramping
    rr = b.balancer
    assert isinstance(rr, SmoothWeightedRoundRobin) and isinstance(rr.groups, _Groups)
    assert picks(b, 80) == {n: 2 for n in names}


def test_slow_start_rebuilds_only_when_a_ramp_moves_a_step() -> None:
    # a 320 s ramp moves one step (1/32 of the weight) about every 11 s: ticking every second
    # rebuilds the snapshot only then, and once more when the ramp ends
    clock = FakeClock()
    b = make(("a", "b"), clock=clock, slow_start=320.0)
    b.disable("a")
    b.enable("a")
    seen = [b.balancer]
    weights = set()
    for _ in range(60):
        clock.advance(1.0)
        b.tick()
        if b.balancer is not seen[-1]:
            seen.append(b.balancer)
        weights.add(b.effective_weight(b.get("a"), clock()))
    assert len(weights) == 6  # steps 4/32 .. 9/32 in the first minute
    assert 5 <= len(seen) <= 7  # not 60
    clock.advance(320.0)
    b.tick()
    assert b.balancer is not seen[-1] and not b.ramping
    assert picks(b, 100) == {"a": 50, "b": 50}


def test_servers_present_at_start_take_full_weight_at_once() -> None:
    b = make(("a", "b"), slow_start=30.0)
    assert all(s.ramp_start is None for s in b.servers.values())
    b2 = make(("a", "b"), slow_start=30.0, health_checked=True)
    pass_all(b2)
    assert all(s.ramp_start is None for s in b2.servers.values())


def test_added_server_ramps_from_its_first_passing_check() -> None:
    clock = FakeClock()
    b = make(("a",), clock=clock, slow_start=10.0, health_checked=True)
    pass_all(b)
    s = b.add_server(Server("n", "127.0.0.1", 9000))
    clock.advance(100.0)  # the first check comes late
    assert s.ramp_start is None
    b.observe_check("n", True, "ok", 0.0)
    assert s.ramp_start == clock()
    assert b.effective_weight(s, clock()) == 4 / 32


def test_server_back_from_unhealthy_and_from_ejection_ramps() -> None:
    clock = FakeClock()
    b = make(
        ("a", "b"),
        clock=clock,
        slow_start=10.0,
        health_checked=True,
        unhealthy_threshold=1,
        healthy_threshold=1,
        outlier=(1, 5.0, 50.0),
    )
    pass_all(b)
    b.observe_check("a", False, "x", 0.0)
    b.observe_check("a", True, "x", 0.0)
    assert b.get("a").ramp_start == clock()
    clock.advance(20.0)
    b.tick()
    fail_n(b, "b", 1)
    b.observe_check("b", True, "x", 0.0)
    clock.advance(5.0)
    b.tick()
    assert b.get("b").ramp_start == clock()


# -- admin ---------------------------------------------------------------------------------


def test_drain_disable_enable_weight() -> None:
    b = make(("a", "b"))
    b.drain("a")
    assert b.get("a").state(0.0) == "draining"
    assert picks(b, 10) == Counter({"b": 10})
    b.enable("a")
    b.disable("b")
    assert b.get("b").state(0.0) == "disabled"
    assert picks(b, 10) == Counter({"a": 10})
    b.enable("b")
    b.set_weight("a", 3)
    assert picks(b, 40) == Counter({"a": 30, "b": 10})
    b.set_weight("a", 0)
    assert picks(b, 10) == Counter({"b": 10})


@pytest.mark.parametrize("weight", [-1, 1001, True, 2.5, "3"])
def test_bad_weight_is_400(weight: Any) -> None:
    b = make(("a",))
    with pytest.raises(BackendError) as err:
        b.set_weight("a", weight)
    assert err.value.status == 400


def test_unknown_server_is_404_and_duplicate_is_409() -> None:
    b = make(("a",))
    for op in (b.drain, b.enable, b.disable, b.get, b.remove_server):
        with pytest.raises(BackendError) as err:
            op("zz")
        assert err.value.status == 404
    with pytest.raises(BackendError) as err:
        b.add_server(Server("a", "127.0.0.1", 1))
    assert err.value.status == 409


def test_drained_server_finishes_in_flight_and_is_cut_once_after_drain_timeout() -> None:
    clock = FakeClock()
    b = make(("a", "b"), clock=clock, drain_timeout=5.0)
    lease = b.acquire(PickContext(exclude=frozenset({"b"})))
    assert lease is not None
    b.drain("a")
    assert b.tick() == []
    clock.advance(5.0)
    assert b.tick() == [b.get("a")]
    assert b.tick() == []  # once per drain
    lease.release(Outcome.OK)
    assert b.get("a").active == 0
    assert b.get("a").state(clock()) == "draining"  # stays draining until enabled


def test_removed_server_lingers_while_busy_then_goes() -> None:
    clock = FakeClock()
    bus = EventBus()
    b = make(("a", "b"), clock=clock, drain_timeout=5.0, events=bus)
    lease = b.acquire(PickContext(exclude=frozenset({"b"})))
    assert lease is not None
    b.remove_server("a")
    assert b.get("a").state(clock()) == "draining"
    assert picks(b, 10) == Counter({"b": 10})
    b.tick()
    assert "a" in b.servers
    lease.release(Outcome.OK)
    b.tick()
    assert "a" not in b.servers
    assert events_of(bus, "removed")[-1].server == "a"


def test_removed_server_with_stuck_work_is_cut_after_drain_timeout() -> None:
    clock = FakeClock()
    b = make(("a", "b"), clock=clock, drain_timeout=5.0)
    lease = b.acquire(PickContext(exclude=frozenset({"b"})))
    assert lease is not None
    b.remove_server("a")
    clock.advance(6.0)
    state = b.get("a")
    assert b.tick() == [state]
    assert b.tick() == []
    lease.release(Outcome.RESET)  # the I/O layer closed it
    b.tick()
    assert "a" not in b.servers


def test_enable_of_a_removed_server_is_409() -> None:
    b = make(("a", "b"))
    b.acquire(PickContext(exclude=frozenset({"b"})))
    b.remove_server("a")
    with pytest.raises(BackendError) as err:
        b.enable("a")
    assert err.value.status == 409


def test_add_server_under_a_name_still_draining_replaces_it() -> None:
    clock = FakeClock()
    b = make(("a", "b"), clock=clock, drain_timeout=5.0)
    old = b.acquire(PickContext(exclude=frozenset({"b"})))
    assert old is not None
    b.remove_server("a")
    new = b.add_server(Server("a", "127.0.0.1", 9999))
    assert b.get("a") is new
    assert b.leaving == [old.server]
    clock.advance(6.0)
    assert b.tick() == [old.server]
    old.release(Outcome.OK)
    b.tick()
    assert b.leaving == []


def test_admin_events_are_published() -> None:
    bus = EventBus()
    b = make(("a",), events=bus)
    b.drain("a")
    b.enable("a")
    b.disable("a")
    b.set_weight("a", 7)
    b.add_server(Server("n", "127.0.0.1", 1))
    b.remove_server("n")
    b.tick()
    assert [e.type for e in bus.history] == [
        "drain",
        "enable",
        "disable",
        "weight",
        "add",
        "remove",
        "removed",
    ]
    assert bus.history[0].state == "draining"


# -- connection caps and the wait queue ----------------------------------------------------


class Inbox:
    def __init__(self, accept: bool = True) -> None:
        self.got: list[Lease | None] = []
        self.accept = accept

    def __call__(self, lease: Lease | None) -> bool:
        self.got.append(lease)
        return self.accept


def test_cap_skips_full_servers() -> None:
    b = make(("a", "b"), max_connections_per_server=1)
    l1 = b.acquire(CTX)
    l2 = b.acquire(CTX)
    assert l1 is not None and l2 is not None
    assert {l1.server.name, l2.server.name} == {"a", "b"}
    assert b.acquire(CTX) is None
    assert b.saturated(CTX)


def test_not_saturated_without_cap_or_without_eligible_servers() -> None:
    assert not make(("a",)).saturated(CTX)
    b = make(("a",), max_connections_per_server=1, health_checked=True)
    assert b.acquire(CTX) is None
    assert not b.saturated(CTX)
    assert b.wait(CTX, Inbox()) is None


def test_waiters_get_freed_slots_in_fifo_order() -> None:
    b = make(("a",), max_connections_per_server=1)
    held = b.acquire(CTX)
    assert held is not None
    first, second = Inbox(), Inbox()
    assert b.wait(CTX, first) is not None
    assert b.wait(CTX, second) is not None
    assert b.queued == 2
    held.release(Outcome.OK)
    assert len(first.got) == 1 and first.got[0] is not None
    assert second.got == []
    lease = first.got[0]
    assert lease.server.active == 1
    lease.release(Outcome.OK)
    assert len(second.got) == 1 and second.got[0] is not None
    assert b.queued == 0


def test_a_freed_slot_never_goes_to_a_later_arrival() -> None:
    b = make(("a",), max_connections_per_server=1)
    held = b.acquire(CTX)
    assert held is not None
    inbox = Inbox()
    b.wait(CTX, inbox)
    held.release(Outcome.OK)
    assert b.acquire(CTX) is None  # the waiter has it already


def test_cancelled_waiter_is_skipped_and_a_refused_lease_is_taken_back() -> None:
    b = make(("a",), max_connections_per_server=1)
    held = b.acquire(CTX)
    assert held is not None
    gone, refusing, taker = Inbox(), Inbox(accept=False), Inbox()
    w = b.wait(CTX, gone)
    assert w is not None
    b.wait(CTX, refusing)
    b.wait(CTX, taker)
    w.cancel()
    w.cancel()
    assert b.queued == 2
    before = b.get("a").requests_total
    held.release(Outcome.OK)
    assert gone.got == []
    assert len(refusing.got) == 1  # it timed out in the meantime: the backend took it back
    assert len(taker.got) == 1 and taker.got[0] is not None
    assert b.get("a").active == 1
    assert b.get("a").requests_total == before + 1
    assert b.queued == 0


def test_queue_is_bounded() -> None:
    b = make(("a",), max_connections_per_server=1, max_queue=2)
    b.acquire(CTX)
    assert b.wait(CTX, Inbox()) is not None
    assert b.wait(CTX, Inbox()) is not None
    assert b.wait(CTX, Inbox()) is None


def test_waiters_get_none_when_nothing_is_eligible_any_more() -> None:
    b = make(("a",), max_connections_per_server=1)
    b.acquire(CTX)
    inbox = Inbox()
    b.wait(CTX, inbox)
    b.disable("a")
    assert inbox.got == [None]
    assert b.queued == 0


def test_new_capacity_serves_waiters() -> None:
    b = make(("a",), max_connections_per_server=1)
    b.acquire(CTX)
    inbox = Inbox()
    b.wait(CTX, inbox)
    b.add_server(Server("b", "127.0.0.1", 9))
    assert len(inbox.got) == 1 and inbox.got[0] is not None
    assert inbox.got[0].server.name == "b"


def test_waiter_with_exclusions_does_not_block_the_others() -> None:
    b = make(("a", "b"), max_connections_per_server=1)
    la = b.acquire(PickContext(exclude=frozenset({"b"})))
    lb = b.acquire(CTX)
    assert la is not None and lb is not None
    retry, plain = Inbox(), Inbox()
    b.wait(PickContext(exclude=frozenset({"a"})), retry)  # a retry that must avoid a
    b.wait(CTX, plain)
    la.release(Outcome.OK)
    assert retry.got == []
    assert len(plain.got) == 1 and plain.got[0].server.name == "a"  # type: ignore[union-attr]


def test_waiter_repr() -> None:
    b = make(("a",), max_connections_per_server=1)
    b.acquire(CTX)
    w = b.wait(PickContext(exclude=frozenset({"x"})), Inbox())
    assert repr(w) == "Waiter(waiting, exclude=['x'])"


# -- stale snapshots -----------------------------------------------------------------------


def test_stale_snapshot_never_hands_out_a_server_that_went_out() -> None:
    b = make(("a", "b"))
    builds: list[Backend] = []
    b.scheduler = builds.append  # an off-loop build that has not finished yet
    b.disable("a")
    assert builds  # a rebuild was asked for
    assert picks(b, 20) == Counter({"b": 20})
    b.rebuild()
    assert picks(b, 20) == Counter({"b": 20})


def test_install_refuses_an_older_version() -> None:
    b = make(("a", "b"))
    version, balancer, panic = b.build()
    b.disable("a")
    assert b.install(version - 1, balancer, panic) is False


# -- reload carry-over ---------------------------------------------------------------------


def reload(old: Backend, new_servers: list[Server], **kw: Any) -> Backend:
    new = Backend(
        old.name,
        [],
        old.settings,
        clock=old.clock,
        rng=random.Random(2),
        **kw,
    )
    new.carry_over(old, new_servers)
    return new


def test_reload_keeps_state_and_counters_of_servers_present_before_and_after() -> None:
    clock = FakeClock()
    old = make(("a", "b"), clock=clock, health_checked=True, outlier=(1, 30.0, 50.0))
    pass_all(old)
    picks(old, 10)
    fail_n(old, "a", 1)
    assert old.get("a").ejected(clock())
    a = old.get("a")
    new = reload(old, servers("a", "b"), health_checked=True, outlier=(1, 30.0, 50.0))
    assert new.get("a") is a
    assert a.requests_total == 6
    assert a.ejected(clock())
    assert new.get("b").health is Health.HEALTHY
    assert picks(new, 10) == Counter({"b": 10})


def test_reload_admin_changes_survive_when_the_file_did_not_change_the_server() -> None:
    old = make(("a", "b", "c"))
    old.drain("a")
    old.set_weight("b", 7)
    old.disable("c")
    new = reload(old, servers("a", "b", "c"))
    assert new.get("a").admin is AdminState.DRAINING
    assert new.get("b").weight == 7
    assert new.get("c").admin is AdminState.DISABLED


def test_reload_the_file_wins_for_a_server_it_changed() -> None:
    old = make(("a", "b"))
    old.drain("a")
    old.set_weight("b", 7)
    changed = [Server("a", "127.0.0.1", 8000, 3), Server("b", "127.0.0.1", 8001, 2)]
    new = reload(old, changed)
    assert (new.get("a").admin, new.get("a").weight) == (AdminState.ENABLED, 3)
    assert (new.get("b").admin, new.get("b").weight) == (AdminState.ENABLED, 2)


def test_reload_a_new_address_is_a_new_server_and_the_old_drains() -> None:
    clock = FakeClock()
    old = make(("a", "b"), clock=clock, drain_timeout=5.0, health_checked=True)
    pass_all(old)
    lease = old.acquire(PickContext(exclude=frozenset({"b"})))
    assert lease is not None
    moved = [Server("a", "127.0.0.1", 7777), servers("a", "b")[1]]
    new = reload(old, moved, drain_timeout=5.0, health_checked=True)
    assert new.get("a") is not lease.server
    assert new.get("a").health is Health.UNKNOWN
    assert lease.server.removed
    assert new.leaving == [lease.server]
    clock.advance(5.0)
    assert new.tick() == [lease.server]
    lease.release(Outcome.OK)  # released through the old backend: forwarded
    new.tick()
    assert new.leaving == []


def test_reload_removed_server_drains_listed_then_goes() -> None:
    old = make(("a", "b"))
    lease = old.acquire(PickContext(exclude=frozenset({"b"})))
    assert lease is not None
    new = reload(old, servers("b"))
    assert new.get("a").state(0.0) == "draining"
    assert picks(new, 5) == Counter({"b": 5})
    lease.release(Outcome.OK)
    new.tick()
    assert "a" not in new.servers
    new2 = reload(new, [])  # an idle removed server leaves at once
    assert "b" not in new2.servers


def test_reload_keeps_admin_added_servers_and_admin_deletions() -> None:
    old = make(("a", "b"))
    old.add_server(Server("extra", "127.0.0.1", 9100))
    old.remove_server("b")
    old.tick()  # idle: gone
    new = reload(old, servers("a", "b"))
    assert "extra" in new.servers
    assert "b" not in new.servers  # deleted through the API; the file did not change it
    newer = reload(new, servers("a", "b"))
    assert "b" not in newer.servers
    # the file changes b: the file wins
    newest = reload(newer, [servers("a", "b")[0], Server("b", "127.0.0.1", 8001, 5)])
    assert newest.get("b").weight == 5


def test_reload_leases_release_into_the_successor_and_waiters_move() -> None:
    old = make(("a",), max_connections_per_server=1)
    held = old.acquire(CTX)
    assert held is not None
    inbox = Inbox()
    old.wait(CTX, inbox)
    new = reload(old, servers("a"), max_connections_per_server=1)
    assert new.queued == 1 and old.queued == 0
    held.release(Outcome.OK)
    assert len(inbox.got) == 1 and inbox.got[0] is not None
    assert inbox.got[0].owner is new
    assert new.get("a").active == 1


def test_reload_health_settings_apply_to_kept_servers() -> None:
    old = make(("a", "b"), health_checked=True, unhealthy_threshold=5)
    pass_all(old)
    new = reload(old, servers("a", "b"), health_checked=True, unhealthy_threshold=1)
    assert new.observe_check("a", False, "x", 0.0) is True
    # checks removed: nobody would ever report, so unknown/unhealthy servers go in rotation
    newer = reload(new, servers("a", "b"), health_checked=False)
    assert newer.get("a").health is Health.HEALTHY
    assert set(picks(newer, 10)) == {"a", "b"}


def test_reload_outlier_detection_removed_clears_ejections() -> None:
    old = make(("a", "b"), outlier=(1, 30.0, 50.0))
    fail_n(old, "a", 1)
    new = reload(old, servers("a", "b"))
    assert not new.get("a").ejected(0.0)
    assert "outlier" not in new.get("a").ext


def test_reload_outlier_detection_added_watches_kept_servers() -> None:
    old = make(("a", "b"))
    new = reload(old, servers("a", "b"), outlier=(1, 30.0, 50.0))
    fail_n(new, "a", 1)
    assert new.get("a").ejected(0.0)


# -- repr ----------------------------------------------------------------------------------


def test_backend_repr_shows_state() -> None:
    b = make(("a", "b"))
    assert repr(b) == (
        f"Backend(api round_robin servers=2 version={b.version}/{b.installed} panic=False queued=0)"
    )


def test_ejected_until_is_infinite_while_out() -> None:
    b = make(("a", "b"), outlier=(1, 30.0, 50.0))
    fail_n(b, "a", 1)
    assert b.get("a").ejected_until == math.inf
    s: ServerState = b.get("a")
    assert s.state(1e9) == "ejected"


def test_reload_adding_checks_keeps_serving_until_the_threshold_says_otherwise() -> None:
    bus = EventBus()
    old = make(("a", "b"), events=bus)
    new = reload(old, servers("a", "b"), health_checked=True, unhealthy_threshold=2, events=bus)
    assert new.get("a").health is Health.HEALTHY
    assert new.observe_check("a", True, "status 200", 0.0) is False  # no spurious flip
    assert new.observe_check("a", False, "status 503", 0.0) is False
    assert "a" in picks(new, 10)
    assert new.observe_check("a", False, "status 503", 0.0) is True
    assert events_of(bus, "health")[-1].state == "unhealthy"


def test_observe_latency_samples_once_before_the_release() -> None:
    # L4 takes the connect time as the sample (observe_latency); the release adds none, a
    # released lease is not sampled, and an observation is fed to the balancer's hook
    clock = FakeClock(10.0)
    b = make(("a",), clock=clock, algorithm="least_response_time")
    seen: list[str] = []
    hook = b.on_release
    assert hook is not None
    b.on_release = lambda s: (seen.append(s.name), hook(s))[-1]
    lease = b.acquire(CTX)
    assert lease is not None
    clock.advance(0.004)
    b.observe_latency(lease)
    state = lease.server
    assert state.ewma.samples == 1 and state.ewma.value == pytest.approx(0.004)
    assert seen == ["a"] and state.active == 1
    b.observe_latency(lease)  # once only
    clock.advance(30.0)
    lease.release(Outcome.OK)
    assert state.ewma.samples == 1 and state.ewma.value == pytest.approx(0.004)
    assert state.active == 0
    b.observe_latency(lease)  # released: nothing
    assert state.ewma.samples == 1


def test_acquire_server_is_an_acquire_the_balancer_hears_of() -> None:
    # sticky sessions lease a named server; bounded loads count it in their in-flight total
    b = Backend(
        "api",
        servers("a", "b"),
        BalancerSettings(algorithm="consistent_hash", hash_balance_factor=125),
        clock=FakeClock(),
        rng=random.Random(1),
        max_connections_per_server=1,
    )
    total = lambda: b.balancer.total  # noqa: E731
    assert total() == 0
    lease = b.acquire_server("a")
    assert lease is not None and lease.server.active == 1 and total() == 1
    assert b.acquire_server("a") is None  # at its cap
    assert b.acquire_server("zz") is None
    b.drain("b")
    assert b.acquire_server("b") is None  # not eligible
    lease.release(Outcome.OK)
    assert total() == 0
