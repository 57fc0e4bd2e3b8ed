"""A backend: a named group of servers with one balancing policy.

Build, then pick (DESIGN.md): the eligible servers and their effective weights are turned
into an immutable Balancer snapshot whenever membership, health, weight or admin state
changes. `acquire()` picks from the current snapshot and returns a Lease; releasing it feeds
load, latency and passive health (outlier detection) back. Snapshots that are slow to build
(rings, Maglev tables) may be built off the event loop: `mark_dirty()` asks the installed
`scheduler` for a rebuild, and until `install()` runs the old snapshot serves; `acquire()`
re-checks eligibility so a stale snapshot never hands out a server that just went out.

Eligibility: admin-enabled, healthy, not ejected, not removed, effective weight > 0.
Slow start: a server that (re)joins ramps from 10% to 100% of its weight over `slow_start`.
Panic (Envoy's healthy_panic_threshold): when fewer than `panic_threshold` percent of the
servers that are in rotation and have a known health are eligible, route over all of them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence

from steelyard.core.balancing import factory_for
from steelyard.core.balancing.base import (
    AdminState,
    Balancer,
    BalancerFactory,
    BalancerSettings,
    CheckResult,
    Health,
    PickContext,
    Server,
    ServerState,
)
from steelyard.core.clock import Clock
from steelyard.core.events import Event, EventBus
from steelyard.core.health import HealthState, OutlierDetector
from steelyard.core.load import Lease, Outcome

RAMP_REBUILD_INTERVAL = 1.0
SLOW_START_FLOOR = 0.1


class _Empty:
    __slots__ = ()

    def pick(self, ctx: PickContext) -> ServerState | None:
        return None


EMPTY: Balancer = _Empty()


class BackendError(Exception):
    """An admin operation that cannot be done: `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Backend:
    def __init__(
        self,
        name: str,
        servers: Iterable[Server],
        settings: BalancerSettings,
        *,
        clock: Clock,
        rng: random.Random,
        config: object = None,
        health_checked: bool = False,
        healthy_threshold: int = 2,
        unhealthy_threshold: int = 3,
        outlier: tuple[int, float, float] | None = None,  # failures, base time, max percent
        slow_start: float = 0.0,
        panic_threshold: float = 50.0,
        max_connections_per_server: int = 0,
        drain_timeout: float = 30.0,
        events: EventBus | None = None,
        factory: BalancerFactory | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.config = config  # the validated config model (timeouts, retries, hash_on...)
        self.clock = clock
        self.rng = rng
        self.factory = factory or factory_for(settings.algorithm)
        self.health_checked = health_checked
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.outlier = outlier
        self.slow_start = slow_start
        self.panic_threshold = panic_threshold
        self.max_connections_per_server = max_connections_per_server
        self.drain_timeout = drain_timeout
        self.events = events
        self.servers: dict[str, ServerState] = {}
        self.balancer: Balancer = EMPTY
        self.version = 0  # bumped on every change that needs a new snapshot
        self.installed = -1
        self.panic = False
        self.ramping = False
        self.last_ramp_build = 0.0
        # engine hook: called with this backend when a rebuild is needed (e.g. off-loop build);
        # None = rebuild synchronously
        self.scheduler: Callable[[Backend], None] | None = None
        for server in servers:
            self._add_state(self._new_state(server), ramp=False)
        self.rebuild()

    # -- membership ------------------------------------------------------------------------

    def _new_state(self, server: Server) -> ServerState:
        state = ServerState(
            server, health=Health.UNKNOWN if self.health_checked else Health.HEALTHY
        )
        state.ext["health"] = HealthState(self.healthy_threshold, self.unhealthy_threshold)
        if self.outlier is not None:
            failures, base, _ = self.outlier
            state.ext["outlier"] = OutlierDetector(failures, base)
        return state

    def _add_state(self, state: ServerState, ramp: bool) -> None:
        self.servers[state.name] = state
        if ramp:
            self._start_ramp(state)

    def adopt(self, state: ServerState) -> None:
        """Take over a ServerState from the previous config (reload keeps its state)."""
        self.servers[state.name] = state
        if self.outlier is not None and "outlier" not in state.ext:
            failures, base, _ = self.outlier
            state.ext["outlier"] = OutlierDetector(failures, base)
        self.mark_dirty()

    def add_server(self, server: Server) -> ServerState:
        existing = self.servers.get(server.name)
        if existing is not None and not existing.removed:
            raise BackendError(409, f"server {server.name!r} exists in backend {self.name!r}")
        state = self._new_state(server)
        self._add_state(state, ramp=True)
        self._event("add", state, "added")
        self.mark_dirty()
        return state

    def remove_server(self, name: str) -> ServerState:
        """Drain, then remove (the engine's tick removes it once idle or after drain_timeout)."""
        state = self.get(name)
        state.removed = True
        if state.drain_started is None:
            state.drain_started = self.clock()
        self._event("remove", state, "removed")
        self.mark_dirty()
        return state

    def get(self, name: str) -> ServerState:
        state = self.servers.get(name)
        if state is None:
            raise BackendError(404, f"no server {name!r} in backend {self.name!r}")
        return state

    # -- admin state -------------------------------------------------------------------------

    def drain(self, name: str) -> ServerState:
        state = self.get(name)
        state.admin = AdminState.DRAINING
        state.drain_started = self.clock()
        self._event("drain", state, "admin")
        self.mark_dirty()
        return state

    def enable(self, name: str) -> ServerState:
        state = self.get(name)
        was = state.admin
        state.admin = AdminState.ENABLED
        state.drain_started = None
        if was is not AdminState.ENABLED:
            self._start_ramp(state)
        self._event("enable", state, "admin")
        self.mark_dirty()
        return state

    def disable(self, name: str) -> ServerState:
        state = self.get(name)
        state.admin = AdminState.DISABLED
        self._event("disable", state, "admin")
        self.mark_dirty()
        return state

    def set_weight(self, name: str, weight: int) -> ServerState:
        if not 0 <= weight <= 1000:
            raise BackendError(400, "weight must be an integer from 0 to 1000")
        state = self.get(name)
        state.weight = weight
        self._event("weight", state, f"weight {weight}")
        self.mark_dirty()
        return state

    # -- health feedback ---------------------------------------------------------------------

    def observe_check(self, name: str, ok: bool, reason: str, wall_time: float) -> bool:
        """An active check result; True when the server's health flipped."""
        state = self.servers.get(name)
        if state is None:
            return False
        state.last_check = CheckResult(wall_time, ok, reason)
        hs = state.ext["health"]
        assert isinstance(hs, HealthState)
        before = state.health
        flipped = hs.observe(ok, reason, self.clock())
        if not flipped:
            return False
        state.health = hs.status
        if before is Health.UNHEALTHY and state.health is Health.HEALTHY:
            self._start_ramp(state)
        self._event("health", state, reason)
        self.mark_dirty()
        return True

    def release_lease(self, lease: Lease, outcome: Outcome) -> None:
        state = lease.server
        state.active -= 1
        now = self.clock()
        if outcome is Outcome.OK:
            state.ewma.observe(now - lease.started, now)
        elif outcome.is_failure:
            state.failures_total += 1
        detector = state.ext.get("outlier")
        if detector is None or outcome is Outcome.CANCELLED:
            return
        assert isinstance(detector, OutlierDetector)
        if detector.record(outcome, now, self._may_eject(now)):
            state.ejected_until = detector.ejected_until
            self._event("ejection", state, f"{detector.consecutive_failures} consecutive failures")
            self.mark_dirty()

    def _may_eject(self, now: float) -> bool:
        assert self.outlier is not None
        max_percent = self.outlier[2]
        total = len(self.servers)
        ejected = sum(1 for s in self.servers.values() if s.ejected(now))
        return (ejected + 1) * 100 <= max_percent * total

    # -- picking -----------------------------------------------------------------------------

    def acquire(self, ctx: PickContext) -> Lease | None:
        balancer = self.balancer
        state = balancer.pick(ctx)
        if state is None:
            return None
        now = self.clock()
        cap = self.max_connections_per_server
        if (cap and state.active >= cap) or not (self.panic or state.eligible(now)):
            # skip servers at their cap, or that went out since this snapshot was built
            exclude = set(ctx.exclude)
            for _ in range(len(self.servers)):
                exclude.add(state.name)
                state = balancer.pick(PickContext(ctx.hash_key, frozenset(exclude)))
                if state is None:
                    return None
                if (not cap or state.active < cap) and (self.panic or state.eligible(now)):
                    break
            else:
                return None
        state.active += 1
        state.requests_total += 1
        return Lease(state, self, now)

    def effective_weight(self, state: ServerState, now: float) -> float:
        weight = float(state.weight)
        if state.ramp_start is not None and self.slow_start > 0:
            elapsed = now - state.ramp_start
            if elapsed < self.slow_start:
                return weight * (
                    SLOW_START_FLOOR + (1 - SLOW_START_FLOOR) * elapsed / self.slow_start
                )
            state.ramp_start = None
        return weight

    def eligible(self, now: float) -> tuple[list[ServerState], list[float], bool]:
        """The servers a snapshot is built from, their weights, and whether in panic."""
        members: list[ServerState] = []
        weights: list[float] = []
        in_rotation = 0
        for state in self.servers.values():
            if state.admin is not AdminState.ENABLED or state.removed or state.weight <= 0:
                continue
            if state.health is not Health.UNKNOWN:
                in_rotation += 1
            if state.eligible(now):
                members.append(state)
                weights.append(self.effective_weight(state, now))
        panic = bool(in_rotation) and len(members) * 100 < self.panic_threshold * in_rotation
        if panic:
            members = []
            weights = []
            for state in self.servers.values():
                if (
                    state.admin is AdminState.ENABLED
                    and not state.removed
                    and state.weight > 0
                    and state.health is not Health.UNKNOWN
                ):
                    members.append(state)
                    weights.append(self.effective_weight(state, now))
        return members, weights, panic

    def build(self) -> tuple[int, Balancer, bool]:
        """Build a snapshot of the current state (may run in a worker thread)."""
        version = self.version
        now = self.clock()
        members, weights, panic = self.eligible(now)
        if not members:
            return version, EMPTY, panic
        return version, self.factory(members, weights, self.settings, self.rng), panic

    def install(self, version: int, balancer: Balancer, panic: bool) -> bool:
        if version < self.installed:
            return False
        if panic != self.panic:
            self._event("panic", None, "entered panic mode" if panic else "left panic mode")
        self.balancer = balancer
        self.installed = version
        self.panic = panic
        self.ramping = any(s.ramp_start is not None for s in self.servers.values())
        self.last_ramp_build = self.clock()
        return True

    def rebuild(self) -> None:
        self.install(*self.build())

    def mark_dirty(self) -> None:
        self.version += 1
        if self.scheduler is None:
            self.rebuild()
        else:
            self.scheduler(self)

    def tick(self) -> list[ServerState]:
        """Periodic upkeep: ejections that ended, slow-start ramps, removals that finished
        draining. Returns servers whose drain timed out with work still in flight (the I/O
        layer closes their connections)."""
        now = self.clock()
        dirty = False
        timed_out: list[ServerState] = []
        for state in list(self.servers.values()):
            if state.ejected_until and state.ejected_until <= now:
                state.ejected_until = 0.0
                self._start_ramp(state)
                self._event("return", state, "ejection ended")
                dirty = True
            if state.removed and (
                state.active == 0
                or (
                    state.drain_started is not None
                    and now - state.drain_started >= self.drain_timeout
                )
            ):
                if state.active:
                    timed_out.append(state)
                del self.servers[state.name]
                dirty = True
            elif (
                state.admin is AdminState.DRAINING
                and state.active
                and state.drain_started is not None
                and now - state.drain_started >= self.drain_timeout
            ):
                timed_out.append(state)
        if self.ramping and now - self.last_ramp_build >= RAMP_REBUILD_INTERVAL:
            dirty = True
        if dirty:
            self.mark_dirty()
        return timed_out

    # -- helpers -----------------------------------------------------------------------------

    def _start_ramp(self, state: ServerState) -> None:
        if self.slow_start > 0:
            state.ramp_start = self.clock()
            self.ramping = True

    def _event(self, kind: str, state: ServerState | None, reason: str) -> None:
        if self.events is None:
            return
        now = self.clock()
        self.events.publish(
            Event(
                type=kind,
                time=time.time(),
                backend=self.name,
                server=state.name if state else None,
                state=state.state(now) if state else None,
                reason=reason,
            )
        )

    def server_list(self) -> Sequence[ServerState]:
        return list(self.servers.values())

    def __repr__(self) -> str:
        return (
            f"Backend({self.name} {self.settings.algorithm} servers={len(self.servers)} "
            f"version={self.version}/{self.installed} panic={self.panic})"
        )
