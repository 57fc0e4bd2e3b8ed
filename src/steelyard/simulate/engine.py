"""The discrete-event simulation: real balancers, virtual time.

How this works. Time is a FakeClock that jumps from event to event; nothing sleeps. Arrivals
come from pre-drawn arrays (workload.py) and are merged with a heap of timed events
(completions, failed connects, scenario events, health checks, upkeep ticks, samples), each heap
entry `(time, seq, kind, payload)` so that equal times keep insertion order.

Each simulated load-balancer instance is a real `core.backend.Backend` with its own
ServerState objects (its own in-flight view) built from the registered algorithm factory
(`core.balancing.ALGORITHMS`), the same objects the proxy uses. A request is
`backend.acquire(ctx) -> Lease`; the lease is released with an Outcome when the simulated server
answers (OK), when a connect to a failed server is refused (CONNECT_FAILED), or when a server
fails under an in-flight request (RESET) — so in-flight counts, peak-EWMA latency and outlier
detection are fed exactly as in the proxy. Active health checks call `observe_check`, which
runs core.health's HealthState.

A simulated server has `capacity` workers and a FIFO queue beyond; a request occupies a worker
for its service time (× the server's current slow-down factor), a long-lived connection for its
whole duration. Latency is measured from arrival to completion of short requests (including
queueing and retries); long-lived connections count in share and in-flight.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from steelyard.core.backend import Backend
from steelyard.core.balancing import ALGORITHMS, HASHING, BalancerFactory
from steelyard.core.balancing.base import BalancerSettings, PickContext, Server, ServerState
from steelyard.core.clock import FakeClock
from steelyard.core.load import Lease, Outcome
from steelyard.simulate.baselines import BASELINES
from steelyard.simulate.scenario import (
    AlgorithmEntry,
    EventSpec,
    Scenario,
    ScenarioError,
    ServerSpec,
)
from steelyard.simulate.workload import Workload

# heap entry kinds
DONE = 0  # a worker finished a request / a long-lived connection closed
REFUSED = 1  # a connect to a failed server gave up
EVENT = 2  # a scenario event (slow, fail, recover, join, leave, drain)
CHECK = 3  # one instance's round of active health checks
TICK = 4  # backend upkeep (ejections ending, slow-start ramps, removals)
SAMPLE = 5  # record in-flight per server for the plot

TICK_INTERVAL = 0.25
SAMPLES = 240
MOVED_KEYS_SAMPLE = 20000


def factory_of(algorithm: str) -> BalancerFactory:
    """A registered proxy algorithm, or a simulator-only baseline (`modulo`)."""
    if algorithm in ALGORITHMS:
        return ALGORITHMS[algorithm]
    if algorithm in BASELINES:
        return BASELINES[algorithm]
    known = ", ".join(sorted(ALGORITHMS) + sorted(BASELINES))
    raise ScenarioError(f"unknown algorithm {algorithm!r} (known: {known})")


def routes_by_key(algorithm: str) -> bool:
    return algorithm in HASHING or algorithm in BASELINES


class SimServer:
    """One simulated server: workers, a FIFO queue, up/down and a slow-down factor."""

    __slots__ = (
        "name",
        "index",
        "capacity",
        "busy",
        "queue",
        "factor",
        "up",
        "in_flight",
        "peak",
        "epoch",
        "service",
        "picks",
        "running",
    )

    def __init__(self, name: str, index: int, capacity: int, service: list[float]) -> None:
        self.name = name
        self.index = index
        self.capacity = capacity
        self.busy = 0  # workers in use
        self.queue: deque[tuple[Lease, SimServer, float, int, int, bool]] = deque()
        self.factor = 1.0
        self.up = True
        self.in_flight = 0  # true count: in service + queued (all instances together)
        self.peak = 0
        self.epoch = 0  # bumped on failure: completions of killed work are ignored
        self.service = service
        self.picks = 0
        # jobs in service, so a failure can reset them (only kept when failures are scheduled)
        self.running: set[tuple[Lease, SimServer, float, int, int, bool]] = set()

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return (
            f"SimServer({self.name} {state} busy={self.busy}/{self.capacity} "
            f"queued={len(self.queue)} x{self.factor:g} peak={self.peak})"
        )


@dataclass(slots=True)
class EntryResult:
    """What one algorithm entry produced on one scenario run."""

    name: str
    algorithm: str
    requests: int
    latencies: list[float] = field(repr=False)  # seconds, short requests that completed OK
    share: dict[str, float]
    peak_in_flight: dict[str, int]
    failed_hits: float  # fraction of requests that reached a failed server at least once
    errors: float  # fraction of requests that finally failed (or found no server)
    moved_keys: float | None
    instance_disagreement: float | None
    sample_times: list[float] = field(default_factory=list, repr=False)
    # per sample: in-flight per server
    samples: list[list[int]] = field(default_factory=list, repr=False)
    server_names: list[str] = field(default_factory=list)

    def percentiles_ms(self) -> dict[str, float]:
        import numpy as np

        if not self.latencies:
            return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
        arr = np.asarray(self.latencies) * 1000.0
        p50, p90, p99 = np.percentile(arr, [50, 90, 99])
        return {
            "p50": round(float(p50), 3),
            "p90": round(float(p90), 3),
            "p99": round(float(p99), 3),
            "max": round(float(arr.max()), 3),
        }


def _event_time(event: EventSpec, length: float) -> float:
    return event.at * length if event.relative else event.at


class Simulation:
    """One run of one algorithm entry over one pre-drawn workload."""

    def __init__(
        self, scenario: Scenario, workload: Workload, entry: AlgorithmEntry, seed: int
    ) -> None:
        self.scenario = scenario
        self.workload = workload
        self.entry = entry
        self.seed = seed
        self.factory = factory_of(entry.algorithm)
        self.keyed = routes_by_key(entry.algorithm)
        self.settings = BalancerSettings(
            algorithm=entry.algorithm,
            table_size=entry.table_size or 65537,
            hash_balance_factor=entry.hash_balance_factor,
        )
        self.clock = FakeClock(0.0)
        self.specs = {s.name: s for s in scenario.all_servers()}
        self.servers: dict[str, SimServer] = {}
        for index, spec in enumerate(scenario.all_servers()):
            self.servers[spec.name] = SimServer(
                spec.name, index, spec.capacity, workload.service[spec.name]
            )
        lb = scenario.lb
        self.instances: list[Backend] = []
        for k in range(lb.instances):
            self.instances.append(
                Backend(
                    f"sim-{k}",
                    [self._server(spec) for spec in scenario.servers],
                    self.settings,
                    clock=self.clock,
                    rng=random.Random(seed * 7919 + k),
                    health_checked=lb.health_check is not None,
                    healthy_threshold=lb.health_check.healthy_threshold if lb.health_check else 2,
                    unhealthy_threshold=(
                        lb.health_check.unhealthy_threshold if lb.health_check else 3
                    ),
                    outlier=(
                        (
                            lb.outlier_detection.consecutive_failures,
                            lb.outlier_detection.base_ejection_time,
                            float(lb.outlier_detection.max_ejection_percent),
                        )
                        if lb.outlier_detection
                        else None
                    ),
                    slow_start=lb.slow_start,
                    factory=self.factory,
                )
            )
        # membership as configured (for moved_keys): name -> weight, in order
        self.members: dict[str, int] = {
            spec.name: self.entry.weight_for(spec) for spec in scenario.servers
        }
        self.moved: list[float] = []
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.errors = 0
        self.failures_scheduled = any(e.action == "fail" for e in scenario.events)

    def __repr__(self) -> str:
        return (
            f"Simulation({self.scenario.name} {self.entry.name} t={self.clock.now:.3f} "
            f"instances={len(self.instances)} events={len(self.heap)} errors={self.errors})"
        )

    def _server(self, spec: ServerSpec) -> Server:
        index = list(self.specs).index(spec.name)
        return Server(spec.name, "sim", 10000 + index, self.entry.weight_for(spec))

    def _push(self, t: float, kind: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, payload))

    # -- moved keys ----------------------------------------------------------------------------

    def _mapping(self) -> list[str | None]:
        """Where each (sampled) key goes with the configured membership, on a fresh snapshot
        (fresh ServerStates: no load, so bounded loads do not interfere)."""
        states = [
            ServerState(Server(name, "sim", 0, weight))
            for name, weight in self.members.items()
            if weight > 0
        ]
        if not states:
            return [None] * min(len(self.workload.keys), MOVED_KEYS_SAMPLE)
        balancer = self.factory(
            states, [float(s.weight) for s in states], self.settings, random.Random(0)
        )
        out: list[str | None] = []
        for key in self.workload.keys[:MOVED_KEYS_SAMPLE]:
            picked = balancer.pick(PickContext(hash_key=key))
            out.append(picked.name if picked is not None else None)
        return out

    def _membership_change(self, change: Callable[[], None]) -> None:
        if not self.keyed:
            change()
            return
        before = self._mapping()
        change()
        after = self._mapping()
        moved = sum(1 for a, b in zip(before, after, strict=True) if a != b)
        self.moved.append(moved / len(before) if before else 0.0)

    # -- scenario events -----------------------------------------------------------------------

    def _apply(self, event: EventSpec, now: float) -> None:
        srv = self.servers[event.server]
        action = event.action
        if action == "slow":
            srv.factor = event.factor
        elif action == "fail":
            self._fail(srv, now)
        elif action == "recover":
            srv.up = True
        elif action == "join":
            assert event.spec is not None
            spec = event.spec
            server = self._server(spec)

            def join() -> None:
                self.members[spec.name] = self.entry.weight_for(spec)

            self._membership_change(join)
            for backend in self.instances:
                backend.add_server(server)
                if backend.health_checked:  # the first check runs when a server is added
                    backend.observe_check(spec.name, srv.up, "joined", now)
        elif action in ("leave", "drain"):

            def out() -> None:
                self.members.pop(event.server, None)

            self._membership_change(out)
            for backend in self.instances:
                if event.server in backend.servers:
                    if action == "leave":
                        backend.remove_server(event.server)
                    else:
                        backend.drain(event.server)

    def _fail(self, srv: SimServer, now: float) -> None:
        srv.up = False
        srv.epoch += 1
        killed = list(srv.running) + list(srv.queue)
        srv.queue.clear()
        srv.running.clear()
        srv.busy = 0
        srv.in_flight = 0
        for job in killed:  # requests and long-lived connections alike are cut
            job[0].release(Outcome.RESET)
            self.errors += 1

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> EntryResult:
        wl = self.workload
        scenario = self.scenario
        lb = scenario.lb
        times = wl.times
        n = len(times)
        length = wl.expected_length
        for event in scenario.events:
            self._push(_event_time(event, length), EVENT, event)
        if lb.health_check is not None:
            for k, backend in enumerate(self.instances):
                for name in backend.servers:  # the first check at start-up
                    backend.observe_check(name, self.servers[name].up, "start", 0.0)
                self._push(lb.health_check.interval, CHECK, k)
        self._push(TICK_INTERVAL, TICK, None)
        sample_every = length / SAMPLES if length > 0 else 1.0
        self._push(0.0, SAMPLE, None)

        heap = self.heap
        heappush = heapq.heappush
        heappop = heapq.heappop
        clock = self.clock
        servers = self.servers
        instances = self.instances
        n_inst = len(instances)
        backend0 = instances[0]
        keyed = self.keyed
        key_ids = wl.key_ids
        ctxs = [PickContext(hash_key=k) for k in wl.keys] if keyed else []
        plain_ctx = PickContext()
        longs = wl.long
        durations = wl.durations or []
        retries = lb.retries
        cft = lb.connect_failure_time
        check_rng = random.Random(self.seed * 31 + 7)
        latencies: list[float] = []
        append_latency = latencies.append
        self.errors = 0
        failed_hit_reqs = 0
        disagree = 0
        no_server = 0
        sample_times: list[float] = []
        samples: list[list[int]] = []
        order = list(servers.values())
        seq = self.seq
        OK = Outcome.OK
        CONNECT_FAILED = Outcome.CONNECT_FAILED
        track = self.failures_scheduled
        hit_failed: set[int] = set()
        measure_disagreement = keyed and n_inst > 1

        i = 0
        next_arrival = times[0] if n else math.inf
        inf = math.inf
        while True:
            if heap and heap[0][0] <= next_arrival:
                t, _, kind, payload = heappop(heap)
                clock.now = t
                if kind == DONE:
                    job = payload
                    lease, srv, arrival, idx, epoch, is_long = job
                    if epoch != srv.epoch:
                        continue
                    lease.release(OK)
                    if not is_long:
                        append_latency(t - arrival)
                    srv.in_flight -= 1
                    if track:
                        srv.running.discard(job)
                    if srv.queue:
                        nxt = srv.queue.popleft()
                        if nxt[5]:
                            end = t + durations[nxt[3]]
                        else:
                            end = t + srv.service[nxt[3]] * srv.factor
                        seq += 1
                        heappush(heap, (end, seq, DONE, nxt))
                        if track:
                            srv.running.add(nxt)
                    else:
                        srv.busy -= 1
                    continue
                if kind == REFUSED:
                    lease, idx, arrival, exclude, attempt = payload
                    lease.release(CONNECT_FAILED)
                    if attempt >= retries:
                        self.errors += 1
                        continue
                    exclude = exclude | {lease.server.name}
                    ctx = PickContext(ctxs[key_ids[idx]].hash_key if keyed else None, exclude)
                    backend = instances[idx % n_inst]
                    lease = backend.acquire(ctx)
                    if lease is None:
                        self.errors += 1
                        continue
                    srv = servers[lease.server.name]
                    srv.picks += 1
                    if not srv.up:
                        seq += 1
                        heappush(
                            heap,
                            (t + cft, seq, REFUSED, (lease, idx, arrival, exclude, attempt + 1)),
                        )
                        continue
                    # the retry reached a live server: it starts or queues below
                else:
                    self.seq = seq
                    if kind == EVENT:
                        self._apply(payload, t)
                    elif kind == CHECK:
                        k = payload
                        backend = instances[k]
                        for name in list(backend.servers):
                            backend.observe_check(name, servers[name].up, "check", t)
                        hc = lb.health_check
                        assert hc is not None
                        if next_arrival < inf or any(s.in_flight for s in order):
                            self._push(t + hc.interval * check_rng.uniform(0.9, 1.1), CHECK, k)
                    elif kind == TICK:
                        for backend in instances:
                            backend.tick()
                        if next_arrival < inf or any(s.in_flight for s in order):
                            self._push(t + TICK_INTERVAL, TICK, None)
                    elif kind == SAMPLE:
                        sample_times.append(t)
                        samples.append([s.in_flight for s in order])
                        if next_arrival < inf:
                            self._push(t + sample_every, SAMPLE, None)
                    seq = self.seq
                    continue
            else:
                if next_arrival == inf:
                    break
                # an arrival
                t = arrival = next_arrival
                clock.now = t
                idx = i
                i += 1
                next_arrival = times[i] if i < n else inf
                if keyed:
                    ctx = ctxs[key_ids[idx]]
                else:
                    ctx = plain_ctx
                backend = backend0 if n_inst == 1 else instances[idx % n_inst]
                lease = backend.acquire(ctx)
                if lease is None:
                    no_server += 1
                    continue
                srv = servers[lease.server.name]
                srv.picks += 1
                if measure_disagreement:
                    chosen = lease.server.name
                    for other in instances:
                        if other is not backend:
                            picked = other.balancer.pick(ctx)
                            if picked is None or picked.name != chosen:
                                disagree += 1
                                break
                if not srv.up:
                    if track:
                        hit_failed.add(idx)
                    seq += 1
                    heappush(heap, (t + cft, seq, REFUSED, (lease, idx, t, ctx.exclude, 0)))
                    continue
            # request idx (arrived at `arrival`) holds a lease on live server srv: it starts
            # if a worker is free, else it queues
            is_long = longs[idx] if longs is not None else False
            job = (lease, srv, arrival, idx, srv.epoch, is_long)
            srv.in_flight += 1
            if srv.in_flight > srv.peak:
                srv.peak = srv.in_flight
            if srv.busy < srv.capacity:
                srv.busy += 1
                if is_long:
                    end = t + durations[idx]
                else:
                    end = t + srv.service[idx] * srv.factor
                seq += 1
                heappush(heap, (end, seq, DONE, job))
                if track:
                    srv.running.add(job)
            else:
                srv.queue.append(job)
        self.seq = seq

        failed_hit_reqs = len(hit_failed)
        total = max(n, 1)
        picks = sum(s.picks for s in order) or 1
        return EntryResult(
            name=self.entry.name,
            algorithm=self.entry.algorithm,
            requests=n,
            latencies=latencies,
            share={s.name: round(s.picks / picks, 4) for s in order},
            peak_in_flight={s.name: s.peak for s in order},
            failed_hits=round(failed_hit_reqs / total, 5),
            errors=round((self.errors + no_server) / total, 5),
            moved_keys=(
                (round(sum(self.moved) / len(self.moved), 4) if self.moved else 0.0)
                if self.keyed
                else None
            ),
            instance_disagreement=(round(disagree / total, 4) if measure_disagreement else None),
            sample_times=sample_times,
            samples=samples,
            server_names=[s.name for s in order],
        )
