"""A backend: a named group of servers with one balancing policy.

How this works
--------------
Build, then pick (DESIGN.md): the eligible servers and their effective weights are turned
into an immutable Balancer snapshot whenever membership, health, weight or admin state
changes. `acquire()` picks from the current snapshot and returns a Lease; releasing it feeds
load, latency and passive health (outlier detection) back. Snapshots that are slow to build
(rings, Maglev tables) may be built off the event loop: `mark_dirty()` asks the installed
`scheduler` for a rebuild, and until `install()` runs the old snapshot serves; `acquire()`
re-checks eligibility so a stale snapshot never hands out a server that just went out.

Eligibility: admin-enabled, healthy, not ejected, not removed, effective weight > 0.
Slow start: a server that (re)joins — added at run time, back from unhealthy or from an
ejection, re-enabled — ramps linearly from 10% to 100% of its weight over `slow_start`.
Servers present at start-up take their full weight at once.
Panic (Envoy's healthy_panic_threshold): when fewer than `panic_threshold` percent of the
servers that are in rotation and have a known health are eligible, route over all of them.

Connection caps: a server with `active >= max_connections_per_server` is skipped. When every
eligible server is at its cap, the I/O layer may `wait()`: a FIFO of waiters that
`release_lease` (and every snapshot install) serves by acquiring *on the waiter's behalf*
and handing the Lease over synchronously, so a freed slot goes to the longest waiter and
never to a request that arrived later.

Reload: `carry_over(old, servers)` moves server state into the new backend (the rule is in
its docstring and docs/health.md); the old backend forwards lease releases to its successor
so counts, outlier detection and waiters stay in one place.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Final

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
from steelyard.core.health import MAX_EJECTION_TIME, HealthState, OutlierDetector
from steelyard.core.load import Lease, LeaseOwner, Outcome

RAMP_REBUILD_INTERVAL: Final = 1.0
# hot-path aliases (an Enum member read off its class is ~10x slower than a global on 3.11)
_OK: Final = Outcome.OK
_CANCELLED: Final = Outcome.CANCELLED
_ENABLED: Final = AdminState.ENABLED
_HEALTHY: Final = Health.HEALTHY
SLOW_START_FLOOR: Final = 0.1
# a ramping weight moves in steps of 1/32 of the server's weight, rounded up (never below the
# linear ramp, at most 1/32 above it): exact in floating point, so round robin keeps its exact
# integer sequence (and O(1) replay) during slow start too
RAMP_STEPS: Final = 32

# outlier settings: (consecutive_failures, base_ejection_time, max_ejection_percent
#                    [, max_ejection_time])
OutlierSettings = tuple[int, float, float] | tuple[int, float, float, float]

# receives a Lease (it must release it) or None (nothing is eligible any more: answer 503);
# returns False when it no longer wants it (it timed out), and the backend takes it back
Deliver = Callable[[Lease | None], bool]


class _Empty:
    __slots__ = ()

    def pick(self, ctx: PickContext) -> ServerState | None:
        return None

    def __repr__(self) -> str:
        return "EmptyBalancer()"


EMPTY: Final[Balancer] = _Empty()


class BackendError(Exception):
    """An admin operation that cannot be done: `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Waiter:
    """One request waiting for a free server slot (see Backend.wait)."""

    __slots__ = ("ctx", "deliver", "done", "backend")

    def __init__(self, ctx: PickContext, deliver: Deliver, backend: Backend) -> None:
        self.ctx = ctx
        self.deliver = deliver
        self.done = False
        self.backend = backend

    def cancel(self) -> None:
        """The waiter gave up (queue_timeout, client gone). Idempotent."""
        if not self.done:
            self.done = True
            self.backend.queued -= 1

    def __repr__(self) -> str:
        return f"Waiter({'done' if self.done else 'waiting'}, exclude={sorted(self.ctx.exclude)})"


class Backend(LeaseOwner):
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
        outlier: OutlierSettings | None = None,
        slow_start: float = 0.0,
        panic_threshold: float = 50.0,
        max_connections_per_server: int = 0,
        queue_timeout: float = 5.0,
        max_queue: int = 1000,
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
        self.outlier: tuple[int, float, float, float] | None = None
        if outlier is not None:
            max_time = outlier[3] if len(outlier) == 4 else MAX_EJECTION_TIME
            self.outlier = (int(outlier[0]), float(outlier[1]), float(outlier[2]), max_time)
        self.slow_start = slow_start
        self.panic_threshold = panic_threshold
        self.max_connections_per_server = max_connections_per_server
        self.queue_timeout = queue_timeout  # how long the I/O layer lets a waiter wait
        self.max_queue = max_queue  # waiters beyond this get 503 at once
        self.drain_timeout = drain_timeout
        self.events = events
        self.servers: dict[str, ServerState] = {}
        # servers from the config file (name -> identity), to tell file changes from admin
        # changes on reload
        self.file_servers: dict[str, Server] = {}
        # removed servers whose name is now taken by a different server (address changed
        # on reload): they drain here until idle or drain_timeout
        self.leaving: list[ServerState] = []
        self.balancer: Balancer = EMPTY
        self.version = 0  # bumped on every change that needs a new snapshot
        self.installed = -1
        self.panic = False
        self.ramping = False
        self.last_ramp_build = 0.0
        # the ramping servers' effective weights at the last ramp rebuild: a tick rebuilds only
        # when one of them moved to another step (rebuilding every second with the same
        # weights would throw away round robin's recorded cycle and re-hash rings for nothing)
        self.ramp_levels: dict[str, float] = {}
        self.waiters: deque[Waiter] = deque()
        self.queued = 0  # live waiters
        self.successor: Backend | None = None  # set on reload: leases release there
        # engine hook: called with this backend when a rebuild is needed (e.g. off-loop build);
        # None = rebuild synchronously
        self.scheduler: Callable[[Backend], None] | None = None
        # the installed balancer's load hooks (balancing.base.LoadTracking), looked up once
        # per install
        self.on_acquire: Callable[[ServerState], None] | None = None
        self.on_release: Callable[[ServerState], None] | None = None
        for server in servers:
            self.file_servers[server.name] = server
            self.servers[server.name] = self._new_state(server)
        self.rebuild()

    # -- membership ------------------------------------------------------------------------

    def _new_state(self, server: Server, *, joining: bool = False) -> ServerState:
        state = ServerState(
            server, health=Health.UNKNOWN if self.health_checked else Health.HEALTHY
        )
        state.ext["health"] = HealthState(
            self.healthy_threshold, self.unhealthy_threshold, state.health
        )
        detector = self._new_detector()
        if detector is not None:
            state.ext["outlier"] = detector
        if joining:
            if self.health_checked:
                state.ext["ramp_on_healthy"] = True  # ramp once the first check passes
            else:
                self._start_ramp(state)
        return state

    def _new_detector(self) -> OutlierDetector | None:
        if self.outlier is None:
            return None
        failures, base, _, max_time = self.outlier
        return OutlierDetector(failures, base, max_time, require_check=self.health_checked)

    def _configure_state(self, state: ServerState) -> None:
        """Apply this backend's health settings to a state taken over from another backend."""
        hs = state.ext.get("health")
        if isinstance(hs, HealthState):
            hs.configure(self.healthy_threshold, self.unhealthy_threshold)
        else:
            state.ext["health"] = HealthState(
                self.healthy_threshold, self.unhealthy_threshold, state.health
            )
        if not self.health_checked and state.health is not Health.HEALTHY:
            # nobody will check it any more: in rotation (outlier detection still watches)
            state.health = Health.HEALTHY
            hs2 = state.ext["health"]
            assert isinstance(hs2, HealthState)
            hs2.status = Health.HEALTHY
        detector = state.ext.get("outlier")
        if self.outlier is None:
            if detector is not None:
                del state.ext["outlier"]
                state.ejected_until = 0.0
        elif isinstance(detector, OutlierDetector):
            failures, base, _, max_time = self.outlier
            detector.configure(failures, base, max_time, self.health_checked)
            state.ejected_until = math.inf if detector.out(self.clock()) else 0.0
        else:
            new = self._new_detector()
            assert new is not None
            state.ext["outlier"] = new

    def carry_over(self, old: Backend, servers: Sequence[Server]) -> None:
        """Reload: build this backend's membership from `old` and the new file's servers.

        The rule (docs/health.md): runtime state (health, ejection, counters, in-flight
        counts) is kept for every server present before and after at the same address.
        Admin changes (drain, disable, weight, add, delete) survive unless the file changed
        that server, i.e. its entry differs between the old and the new file (it was added,
        or its weight changed): then the file wins — the file's weight, enabled. A server
        whose address changed is a new server (it starts unknown) and the old one drains.
        A server the file removed drains, then goes. Servers added through the admin API
        and absent from both files stay.
        """
        self.file_servers = {s.name: s for s in servers}
        # the old backend keeps nothing: its leases release here, its waiters move here
        old.successor = self
        while old.waiters:
            waiter = old.waiters.popleft()
            if not waiter.done:
                waiter.backend = self
                old.queued -= 1
                self.queued += 1
                self.waiters.append(waiter)
        self.leaving.extend(s for s in old.leaving if s.active)
        for server in servers:
            prev = old.servers.get(server.name)
            if prev is None and old.file_servers.get(server.name) == server:
                continue  # deleted through the admin API, and the file did not change it
            if prev is not None and prev.address == server.address:
                if old.file_servers.get(server.name) != server:
                    # the file added it or changed it: the file wins
                    prev.weight = server.weight
                    prev.admin = AdminState.ENABLED
                    prev.removed = False
                    prev.drain_started = None
                prev.server = server
                self._configure_state(prev)
                self.servers[server.name] = prev
                continue
            if prev is not None:
                # same name, new address: a new server; the old one drains out
                self._begin_leaving(prev)
            self.servers[server.name] = self._new_state(server, joining=True)
            self._event("add", self.servers[server.name], "config reload")
        for name, prev in old.servers.items():
            if name in self.servers:
                continue
            if name in old.file_servers:
                # the file removed it
                if not prev.removed:
                    prev.removed = True
                    prev.drain_started = self.clock()
                    self._event("remove", prev, "config reload")
                if prev.active:
                    self._configure_state(prev)
                    self.servers[name] = prev  # listed as draining until idle
            else:
                # added through the admin API: the file did not change it
                self._configure_state(prev)
                self.servers[name] = prev
        self.mark_dirty()

    def _begin_leaving(self, state: ServerState) -> None:
        if not state.removed:
            state.removed = True
            state.drain_started = self.clock()
            self._event("remove", state, "address changed")
        if state.active:
            self.leaving.append(state)

    def add_server(self, server: Server) -> ServerState:
        existing = self.servers.get(server.name)
        if existing is not None and not existing.removed:
            raise BackendError(409, f"server {server.name!r} exists in backend {self.name!r}")
        if existing is not None:
            self._begin_leaving(existing)  # a deleted one still draining under that name
        state = self._new_state(server, joining=True)
        self.servers[state.name] = state
        self._event("add", state, "added")
        self.mark_dirty()
        return state

    def remove_server(self, name: str) -> ServerState:
        """Drain, then remove (tick removes it once idle or after drain_timeout)."""
        state = self.get(name)
        if not state.removed:
            state.removed = True
            if state.drain_started is None:
                state.drain_started = self.clock()
            state.ext.pop("drain_cut", None)
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
        if state.admin is not AdminState.DRAINING:
            state.admin = AdminState.DRAINING
            state.drain_started = self.clock()
            state.ext.pop("drain_cut", None)
            self._event("drain", state, "admin")
            self.mark_dirty()
        return state

    def enable(self, name: str) -> ServerState:
        state = self.get(name)
        if state.removed:
            raise BackendError(409, f"server {name!r} is being removed")
        was = state.admin
        state.admin = AdminState.ENABLED
        state.drain_started = None
        state.ext.pop("drain_cut", None)
        if was is not AdminState.ENABLED:
            self._start_ramp(state)
        self._event("enable", state, "admin")
        self.mark_dirty()
        return state

    def disable(self, name: str) -> ServerState:
        state = self.get(name)
        state.admin = AdminState.DISABLED
        state.drain_started = None
        self._event("disable", state, "admin")
        self.mark_dirty()
        return state

    def set_weight(self, name: str, weight: object) -> ServerState:
        """`weight` is checked here whoever calls (typed `object`: compiled by mypyc, an `int`
        parameter would turn a string into a TypeError before this check could answer 400)."""
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 1000:
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
        if state is None or state.removed:
            return False
        state.last_check = CheckResult(wall_time, ok, reason)
        now = self.clock()
        detector = state.ext.get("outlier")
        dirty = False
        if isinstance(detector, OutlierDetector) and detector.out(now):
            detector.observe_check(ok)
            if ok and detector.try_return(now):
                self._return(state, "check passed after ejection")
                dirty = True
        hs = state.ext["health"]
        assert isinstance(hs, HealthState)
        before = state.health
        flipped = hs.observe(ok, reason, now)
        if flipped:
            state.health = hs.status
            if state.health is Health.HEALTHY and (
                before is Health.UNHEALTHY or state.ext.pop("ramp_on_healthy", False)
            ):
                self._start_ramp(state)
            self._event("health", state, reason)
            dirty = True
        if dirty:
            self.mark_dirty()
        return flipped

    def release_lease(self, lease: Lease, outcome: Outcome) -> None:
        if self.successor is not None:
            self.successor.release_lease(lease, outcome)
            return
        state = lease.server
        state.active -= 1
        now = self.clock()
        detector = state.ext.get("outlier")
        if outcome is _OK:
            if not lease.observed:
                state.ewma.observe(now - lease.started, now)
            # the hot path: a detector with nothing to forget needs no call
            if isinstance(detector, OutlierDetector) and (detector.failures or detector.ejections):
                detector.record(outcome, now)
        elif outcome is not _CANCELLED:
            state.failures_total += 1
            if isinstance(detector, OutlierDetector) and detector.record(
                outcome, now, self._may_eject(state, now)
            ):
                state.ejected_until = math.inf  # until tick or a check lets it back
                self._event(
                    "ejection",
                    state,
                    f"{detector.consecutive_failures} consecutive failures ({outcome.value}); "
                    f"out for {detector.ejection_time(detector.ejections):g}s",
                )
                self.mark_dirty()
        if self.on_release is not None:
            self.on_release(state)
        if self.waiters:
            self._serve_waiters()

    def observe_latency(self, lease: Lease) -> None:
        """Take the lease's latency sample now rather than at its release: for a TCP
        connection, the time to connect to the server (nginx's ``least_time connect``). The
        connection then stays open as long as the client likes, which says nothing about the
        server; the release records no second sample."""
        if self.successor is not None:
            self.successor.observe_latency(lease)
            return
        if lease.released or lease.observed:
            return
        now = self.clock()
        state = lease.server
        state.ewma.observe(now - lease.started, now)
        lease.observed = True
        if self.on_release is not None:
            self.on_release(state)  # least_response_time re-keys the server on its new sample

    def _may_eject(self, state: ServerState, now: float) -> bool:
        """max_ejection_percent: ejecting this server must keep the ejected share at or
        under the cap (counted over the servers not being removed)."""
        assert self.outlier is not None
        max_percent = self.outlier[2]
        members = [s for s in self.servers.values() if not s.removed]
        total = len(members)
        if total == 0:
            return False
        ejected = sum(1 for s in members if s.ejected(now) and s is not state)
        return (ejected + 1) * 100 <= max_percent * total

    def _return(self, state: ServerState, reason: str) -> None:
        state.ejected_until = 0.0
        self._start_ramp(state)
        self._event("return", state, reason)

    # -- picking -----------------------------------------------------------------------------

    def _usable(self, state: ServerState, now: float, cap: int) -> bool:
        if cap and state.active >= cap:
            return False
        if self.panic:
            return state.admin is _ENABLED and not state.removed and state.weight > 0
        return state.eligible(now) and state.weight > 0

    def acquire(self, ctx: PickContext) -> Lease | None:
        """A lease on a server, or None: nothing eligible, or every candidate at its cap
        (tell them apart with `saturated`)."""
        balancer = self.balancer
        state = balancer.pick(ctx)
        if state is None:
            return None
        now = self.clock()
        cap = self.max_connections_per_server
        if (
            (cap and state.active >= cap)
            or state.weight <= 0
            or not (
                # state.eligible(now), inlined: this runs on every request
                (
                    state.admin is _ENABLED
                    and state.health is _HEALTHY
                    and not state.removed
                    and state.ejected_until <= now
                )
                or (self.panic and self._usable(state, now, 0))
            )
        ):
            # skip servers at their cap, or that went out since this snapshot was built
            exclude = set(ctx.exclude)
            for _ in range(len(self.servers) + len(self.leaving) + 1):
                exclude.add(state.name)
                state = balancer.pick(PickContext(ctx.hash_key, frozenset(exclude)))
                if state is None:
                    return None
                if self._usable(state, now, cap):
                    break
            else:
                return None
        return self._grant(state, now)

    def _grant(self, state: ServerState, now: float) -> Lease:
        state.active += 1
        state.requests_total += 1
        if self.on_acquire is not None:
            self.on_acquire(state)
        return Lease(state, self, now)

    def acquire_server(self, name: str) -> Lease | None:
        """A lease on the named server (sticky sessions), if it may take a request now: the
        same checks as a pick (eligible, or usable in panic; under its cap), and the balancer
        hears of it like any acquire."""
        state = self.servers.get(name)
        if state is None:
            return None
        now = self.clock()
        if not self._usable(state, now, self.max_connections_per_server):
            return None
        return self._grant(state, now)

    def saturated(self, ctx: PickContext) -> bool:
        """True when some server could take the request but every one is at its cap."""
        cap = self.max_connections_per_server
        if not cap or self.balancer is EMPTY:
            return False
        now = self.clock()
        found = False
        for state in self.servers.values():
            if state.name in ctx.exclude:
                continue
            if not self._usable(state, now, 0):
                continue
            if state.active < cap:
                return False  # a free slot exists (acquire would have found it)
            found = True
        return found

    def wait(self, ctx: PickContext, deliver: Deliver) -> Waiter | None:
        """Queue for a slot when `saturated(ctx)`. None = do not wait (answer 503 now):
        no cap, nothing eligible, or `max_queue` waiters already. `deliver` is called
        once, synchronously from a release or a snapshot install, with a Lease or with
        None when nothing is eligible any more; the I/O layer awaits a future that it sets,
        and calls `Waiter.cancel()` when it stops waiting."""
        if not self.saturated(ctx) or self.queued >= self.max_queue:
            return None
        while self.waiters and self.waiters[0].done:
            self.waiters.popleft()
        waiter = Waiter(ctx, deliver, self)
        self.waiters.append(waiter)
        self.queued += 1
        return waiter

    def _serve_waiters(self) -> None:
        waiters = self.waiters
        skipped: list[Waiter] = []
        for _ in range(len(waiters)):
            if not waiters:
                break
            waiter = waiters.popleft()
            if waiter.done:
                continue
            lease = self.acquire(waiter.ctx)
            if lease is None:
                if self.saturated(waiter.ctx):
                    skipped.append(waiter)
                    if not waiter.ctx.exclude:
                        break  # the same answer for everyone behind it
                    continue
                waiter.done = True
                self.queued -= 1
                waiter.deliver(None)
                continue
            waiter.done = True
            self.queued -= 1
            if not waiter.deliver(lease):
                self._unacquire(lease)
        # the ones that must wait on keep their place at the head
        waiters.extendleft(reversed(skipped))

    def _unacquire(self, lease: Lease) -> None:
        """Take back a lease nobody used (its waiter gave up)."""
        lease.released = True
        lease.server.active -= 1
        lease.server.requests_total -= 1
        if self.on_release is not None:
            self.on_release(lease.server)

    def effective_weight(self, state: ServerState, now: float) -> float:
        weight = float(state.weight)
        if state.ramp_start is not None and self.slow_start > 0:
            elapsed = max(0.0, now - state.ramp_start)
            if elapsed < self.slow_start:
                share = SLOW_START_FLOOR + (1 - SLOW_START_FLOOR) * elapsed / self.slow_start
                return weight * math.ceil(share * RAMP_STEPS) / RAMP_STEPS
            state.ramp_start = None
        return weight

    def eligible(self, now: float) -> tuple[list[ServerState], list[float], bool]:
        """The servers a snapshot is built from, their weights, and whether in panic."""
        members: list[ServerState] = []
        weights: list[float] = []
        in_rotation: list[ServerState] = []
        for state in self.servers.values():
            if state.admin is not AdminState.ENABLED or state.removed or state.weight <= 0:
                continue
            if state.health is not Health.UNKNOWN:
                in_rotation.append(state)
            if state.eligible(now):
                members.append(state)
                weights.append(self.effective_weight(state, now))
        panic = bool(in_rotation) and len(members) * 100 < self.panic_threshold * len(in_rotation)
        if panic:
            members = in_rotation
            weights = [self.effective_weight(s, now) for s in in_rotation]
        return members, weights, panic

    def build(self) -> tuple[int, Balancer, bool]:
        """Build a snapshot of the current state (may run in a worker thread)."""
        version = self.version
        now = self.clock()
        members, weights, panic = self.eligible(now)
        if not members:
            return version, EMPTY, panic
        settings = self.settings
        if any(s.ramp_start is not None for s in members):
            settings = dataclasses.replace(settings, ramping=True)
        return version, self.factory(members, weights, settings, self.rng), panic

    def install(self, version: int, balancer: Balancer, panic: bool) -> bool:
        if version < self.installed:
            return False
        if panic != self.panic:
            self._event("panic", None, "entered panic mode" if panic else "left panic mode")
        self.balancer = balancer
        track = getattr(balancer, "track_load", None)
        if track is not None:
            track()
        self.on_acquire = getattr(balancer, "on_acquire", None)
        self.on_release = getattr(balancer, "on_release", None)
        self.installed = version
        self.panic = panic
        self.ramping = any(s.ramp_start is not None for s in self.servers.values())
        self.last_ramp_build = self.clock()
        if self.waiters:
            self._serve_waiters()
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
        draining. Returns servers whose drain timed out with work still in flight, once per
        drain (the I/O layer closes their connections)."""
        now = self.clock()
        dirty = False
        timed_out: list[ServerState] = []
        for state in list(self.servers.values()):
            detector = state.ext.get("outlier")
            if (
                isinstance(detector, OutlierDetector)
                and detector.out(now)
                and not detector.awaiting_check
                and detector.ejected_until <= now
            ):
                if detector.try_return(now):
                    self._return(state, "ejection ended")
                    dirty = True
                else:
                    self._event(
                        "awaiting_check", state, "ejection time up; waiting for a passing check"
                    )
            elif (
                state.ejected_until
                and state.ejected_until <= now
                and not isinstance(detector, OutlierDetector)
            ):
                state.ejected_until = 0.0
                dirty = True
            if state.removed:
                if state.active == 0:
                    del self.servers[state.name]
                    self._event("removed", state, "drained")
                    dirty = True
                elif self._drain_expired(state, now):
                    timed_out.append(state)
            elif (
                state.admin is AdminState.DRAINING
                and state.active
                and self._drain_expired(state, now)
            ):
                timed_out.append(state)
        for state in list(self.leaving):
            if state.active == 0:
                self.leaving.remove(state)
            elif self._drain_expired(state, now):
                timed_out.append(state)
        if self.ramping and now - self.last_ramp_build >= RAMP_REBUILD_INTERVAL:
            levels = {
                state.name: self.effective_weight(state, now)
                for state in self.servers.values()
                if state.ramp_start is not None
            }
            if levels != self.ramp_levels:
                self.ramp_levels = levels
                dirty = True
        if dirty:
            self.mark_dirty()
        return timed_out

    def _drain_expired(self, state: ServerState, now: float) -> bool:
        """True once per drain, when drain_timeout has passed."""
        if state.drain_started is None or now - state.drain_started < self.drain_timeout:
            return False
        if state.ext.get("drain_cut"):
            return False
        state.ext["drain_cut"] = True
        return True

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

    def ejections_total(self, state: ServerState) -> int:
        detector = state.ext.get("outlier")
        return detector.ejections_total if isinstance(detector, OutlierDetector) else 0

    def __repr__(self) -> str:
        return (
            f"Backend({self.name} {self.settings.algorithm} servers={len(self.servers)} "
            f"version={self.version}/{self.installed} panic={self.panic} "
            f"queued={self.queued})"
        )
