"""Property tests for the health state machines and the Backend built on them."""

from __future__ import annotations

import random
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from steelyard.core.backend import Backend
from steelyard.core.balancing import ALGORITHMS
from steelyard.core.balancing.base import (
    AdminState,
    BalancerSettings,
    Health,
    PickContext,
    Server,
)
from steelyard.core.clock import FakeClock
from steelyard.core.health import HealthState, OutlierDetector
from steelyard.core.load import Lease, Outcome

# -- HealthState ---------------------------------------------------------------------------


@given(
    rise=st.integers(1, 5),
    fall=st.integers(1, 5),
    results=st.lists(st.booleans(), min_size=1, max_size=60),
)
def test_health_flips_only_after_a_full_run(rise: int, fall: int, results: list[bool]) -> None:
    hs = HealthState(rise, fall)
    history: list[bool] = []
    for ok in results:
        before = hs.status
        flipped = hs.observe(ok)
        history.append(ok)
        assert hs.status is not Health.UNKNOWN
        assert flipped == (hs.status is not before)
        if flipped and before is not Health.UNKNOWN:
            need = rise if ok else fall
            assert len(history) >= need
            assert all(r == ok for r in history[-need:])
            assert hs.status is (Health.HEALTHY if ok else Health.UNHEALTHY)
        if before is Health.UNKNOWN:
            assert hs.status is (Health.HEALTHY if ok else Health.UNHEALTHY)


@given(
    rise=st.integers(1, 5),
    fall=st.integers(1, 5),
    results=st.lists(st.booleans(), min_size=1, max_size=60),
)
def test_health_state_is_a_function_of_the_runs(rise: int, fall: int, results: list[bool]) -> None:
    """A run of `rise` passes always ends healthy; a run of `fall` failures unhealthy."""
    hs = HealthState(rise, fall)
    for ok in results:
        hs.observe(ok)
    tail_ok = len(results) - len(list(_dropwhile_last(results, True)))
    tail_fail = len(results) - len(list(_dropwhile_last(results, False)))
    if tail_ok >= rise or tail_ok == len(results):
        assert hs.status is Health.HEALTHY
    if tail_fail >= fall or tail_fail == len(results):
        assert hs.status is Health.UNHEALTHY


def _dropwhile_last(results: list[bool], value: bool) -> list[bool]:
    out = list(results)
    while out and out[-1] == value:
        out.pop()
    return out


# -- OutlierDetector -----------------------------------------------------------------------

outcomes = st.sampled_from(list(Outcome))


@given(
    failures=st.integers(1, 6),
    base=st.floats(0.5, 60.0),
    cap=st.floats(1.0, 400.0),
    steps=st.lists(st.tuples(outcomes, st.floats(0.0, 100.0)), max_size=80),
)
def test_outlier_ejections_double_cap_and_need_a_full_run(
    failures: int, base: float, cap: float, steps: list[tuple[Outcome, float]]
) -> None:
    d = OutlierDetector(failures, base, cap)
    now = 0.0
    run = 0  # failures since in rotation / last OK
    for outcome, dt in steps:
        now += dt
        if d.out(now) and d.ejected_until <= now:
            assert d.try_return(now)
            run = 0
        was_out = d.out(now)
        ejected = d.record(outcome, now)
        if was_out:
            assert not ejected
            continue
        if outcome is Outcome.OK:
            run = 0
        elif outcome.is_failure:
            run += 1
        if ejected:
            assert run == failures
            run = 0
            length = d.ejected_until - now
            assert length <= max(cap, base) + 1e-9
            expected = min(base * 2 ** (d.ejections - 1), max(cap, base))
            assert abs(length - expected) < 1e-6
        else:
            assert run < failures


# -- Backend: a stateful model -------------------------------------------------------------

NAMES = ["s0", "s1", "s2", "s3", "s4"]


class BackendMachine(RuleBasedStateMachine):
    @initialize(
        n=st.integers(1, 5),
        algorithm=st.sampled_from(sorted(ALGORITHMS)),
        checked=st.booleans(),
        cap=st.sampled_from([0, 1, 2]),
        max_percent=st.sampled_from([0.0, 34.0, 50.0, 100.0]),
        slow_start=st.sampled_from([0.0, 10.0]),
        seed=st.integers(0, 2**16),
    )
    def setup(
        self,
        n: int,
        algorithm: str,
        checked: bool,
        cap: int,
        max_percent: float,
        slow_start: float,
        seed: int,
    ) -> None:
        self.clock = FakeClock()
        self.max_percent = max_percent
        self.cap = cap
        self.backend = Backend(
            "b",
            [Server(NAMES[i], "127.0.0.1", 9000 + i, 1 + i % 3) for i in range(n)],
            BalancerSettings(algorithm=algorithm),
            clock=self.clock,
            rng=random.Random(seed),
            health_checked=checked,
            healthy_threshold=2,
            unhealthy_threshold=2,
            outlier=(2, 5.0, max_percent, 40.0),
            slow_start=slow_start,
            max_connections_per_server=cap,
            max_queue=3,
            drain_timeout=3.0,
        )
        self.leases: list[Lease] = []
        self.waiters = 0
        self.delivered: list[tuple[int, Lease | None]] = []
        self.tickets = 0
        self.removed_any = False

    def _deliver_to(self, ticket: int) -> Callable[[Lease | None], bool]:
        def deliver(lease: Lease | None) -> bool:
            self.delivered.append((ticket, lease))
            if lease is not None:
                self.leases.append(lease)
            return True

        return deliver

    @rule(key=st.binary(max_size=4), exclude=st.sets(st.sampled_from(NAMES), max_size=2))
    def acquire(self, key: bytes, exclude: set[str]) -> None:
        b = self.backend
        ctx = PickContext(hash_key=key, exclude=frozenset(exclude))
        lease = b.acquire(ctx)
        if lease is None:
            return
        s = lease.server
        assert s.name not in exclude
        assert s.admin is AdminState.ENABLED and not s.removed and s.weight > 0
        if not b.panic:
            assert s.eligible(self.clock())
        if self.cap:
            assert s.active <= self.cap
        self.leases.append(lease)

    @rule(data=st.data(), outcome=outcomes)
    def release(self, data: st.DataObject, outcome: Outcome) -> None:
        if not self.leases:
            return
        lease = self.leases.pop(data.draw(st.integers(0, len(self.leases) - 1)))
        lease.release(outcome)

    @rule()
    def wait(self) -> None:
        self.tickets += 1
        waiter = self.backend.wait(PickContext(), self._deliver_to(self.tickets))
        if waiter is not None:
            assert self.backend.saturated(PickContext())

    @rule(name=st.sampled_from(NAMES), ok=st.booleans())
    def check(self, name: str, ok: bool) -> None:
        self.backend.observe_check(name, ok, "ok" if ok else "fail", 0.0)

    @rule(name=st.sampled_from(NAMES), op=st.sampled_from(["drain", "enable", "disable"]))
    def admin(self, name: str, op: str) -> None:
        if name in self.backend.servers and not self.backend.servers[name].removed:
            getattr(self.backend, op)(name)

    @rule(name=st.sampled_from(NAMES), weight=st.integers(0, 5))
    def weight(self, name: str, weight: int) -> None:
        if name in self.backend.servers:
            self.backend.set_weight(name, weight)

    @precondition(lambda self: len(self.backend.servers) > 1)
    @rule(name=st.sampled_from(NAMES))
    def remove(self, name: str) -> None:
        if name in self.backend.servers:
            self.backend.remove_server(name)
            self.removed_any = True

    @rule(name=st.sampled_from(NAMES))
    def add(self, name: str) -> None:
        existing = self.backend.servers.get(name)
        if existing is None or existing.removed:
            self.backend.add_server(Server(name, "127.0.0.1", 9100 + NAMES.index(name)))

    @rule(dt=st.floats(0.0, 20.0))
    def tick(self, dt: float) -> None:
        self.clock.advance(dt)
        for state in self.backend.tick():
            assert state.active > 0

    @invariant()
    def active_counts_match_leases(self) -> None:
        if not hasattr(self, "backend"):
            return
        held: dict[int, int] = {}
        for lease in self.leases:
            held[id(lease.server)] = held.get(id(lease.server), 0) + 1
        for state in list(self.backend.servers.values()) + self.backend.leaving:
            assert state.active == held.get(id(state), 0)
            assert state.active >= 0

    @invariant()
    def queue_count_is_consistent(self) -> None:
        if not hasattr(self, "backend"):
            return
        live = sum(1 for w in self.backend.waiters if not w.done)
        assert self.backend.queued == live
        assert self.backend.queued <= 3

    @invariant()
    def waiters_are_served_first_come_first_served(self) -> None:
        if not hasattr(self, "backend"):
            return
        tickets = [t for t, lease in self.delivered if lease is not None]
        assert tickets == sorted(tickets)
        for _, lease in self.delivered:
            if lease is not None and self.cap:
                assert lease.server.active <= self.cap

    @invariant()
    def ejection_cap_holds(self) -> None:
        if not hasattr(self, "backend") or self.removed_any:
            return
        now = self.clock()
        members = [s for s in self.backend.servers.values() if not s.removed]
        ejected = sum(1 for s in members if s.ejected(now))
        assert ejected * 100 <= self.max_percent * len(members)

    @invariant()
    def slow_start_weights_stay_between_ten_percent_and_full(self) -> None:
        if not hasattr(self, "backend"):
            return
        now = self.clock()
        for s in self.backend.servers.values():
            w = self.backend.effective_weight(s, now)
            assert 0.1 * s.weight - 1e-9 <= w <= s.weight + 1e-9

    @invariant()
    def unknown_servers_never_take_traffic(self) -> None:
        if not hasattr(self, "backend"):
            return
        for lease in self.leases:
            assert lease.server.health is not Health.UNKNOWN or not self.backend.health_checked


BackendMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestBackendMachine = BackendMachine.TestCase
