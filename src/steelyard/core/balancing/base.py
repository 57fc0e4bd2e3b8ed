"""The Balancer interface: build an immutable snapshot from the eligible servers, then pick.

A backend rebuilds its balancer whenever membership, health, weight or admin state changes
and swaps the new one in; `pick()` never scans dead servers. Least-load balancers read the
live `active` count and latency estimate of the ServerState objects they were built with.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from steelyard.core.load import PeakEwma


@dataclass(frozen=True, slots=True)
class Server:
    """Identity only; runtime state lives in ServerState."""

    name: str
    host: str
    port: int
    weight: int = 1

    @property
    def address(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


class AdminState(enum.Enum):
    ENABLED = "enabled"
    DRAINING = "draining"
    DISABLED = "disabled"


class Health(enum.Enum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


# hot-path aliases: on 3.11 reading an Enum member off its class goes through the metaclass's
# slow attribute hook (~70 ns against ~7 for a global); eligible() runs on every acquire
_ENABLED: Final = AdminState.ENABLED
_HEALTHY: Final = Health.HEALTHY


@dataclass(frozen=True, slots=True)
class CheckResult:
    time: float  # wall-clock (time.time()) of the check
    ok: bool
    reason: str


class ServerState:
    """Runtime state of one server in one backend: admin state, health, load, counters."""

    __slots__ = (
        "server",
        "name",
        "weight",
        "admin",
        "health",
        "ejected_until",
        "active",
        "requests_total",
        "failures_total",
        "ewma",
        "ramp_start",
        "last_check",
        "removed",
        "drain_started",
        "ext",
    )

    def __init__(self, server: Server, *, health: Health = Health.HEALTHY) -> None:
        self.server = server
        self.name = server.name
        self.weight = server.weight  # runtime weight (admin may change it), 0..1000
        self.admin = AdminState.ENABLED
        self.health = health
        self.ejected_until = 0.0
        self.active = 0  # in-flight requests (HTTP) or open connections (TCP/UDP sessions)
        self.requests_total = 0
        self.failures_total = 0
        self.ewma = PeakEwma()
        self.ramp_start: float | None = None  # slow start began at this monotonic time
        self.last_check: CheckResult | None = None
        self.removed = False  # deleted from its backend; lingers while draining
        self.drain_started: float | None = None
        self.ext: dict[str, object] = {}  # per-feature state owned by other layers

    @property
    def address(self) -> str:
        return self.server.address

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now

    def eligible(self, now: float) -> bool:
        """May take new traffic (ignoring weight and connection caps)."""
        return (
            self.admin is _ENABLED
            and self.health is _HEALTHY
            and not self.removed
            and self.ejected_until <= now
        )

    def state(self, now: float) -> str:
        """The SPEC §4 state word."""
        if self.admin is AdminState.DISABLED:
            return "disabled"
        if self.admin is AdminState.DRAINING or self.removed:
            return "draining"
        if self.ejected(now):
            return "ejected"
        return self.health.value

    def __repr__(self) -> str:
        return (
            f"ServerState({self.name} {self.address} w={self.weight} {self.admin.value} "
            f"{self.health.value} active={self.active} req={self.requests_total})"
        )


@dataclass(slots=True)
class PickContext:
    hash_key: bytes | None = None  # from hash_on: client ip, header, cookie, query, path
    exclude: frozenset[str] = frozenset()  # names of servers already tried (retries)


@dataclass(frozen=True, slots=True)
class BalancerSettings:
    algorithm: str = "round_robin"
    table_size: int = 65537  # maglev
    hash_balance_factor: int | None = None  # consistent_hash bounded loads (125 = 1.25x)
    extra: dict[str, object] = field(default_factory=dict)
    # set by the backend on a snapshot built while servers are in slow start (round robin
    # then steps a cycle with many distinct weights in Webster's order: round_robin.py)
    ramping: bool = False


class Balancer(Protocol):
    def pick(self, ctx: PickContext) -> ServerState | None:
        """Never awaits; None = nobody eligible (after exclusions)."""
        ...


class LoadTracking(Protocol):
    """Optional members of a Balancer that keeps an index of live load instead of scanning.

    The backend calls ``track_load()`` once when it installs the snapshot (the balancer then
    reads every member's live state once, on the event loop), and afterwards ``on_acquire``
    after it raised a server's ``active`` count and ``on_release`` after it lowered it and fed
    the latency estimate. The backend looks the hooks up once per install, never per pick. A
    balancer that was never told to track (tests, tools) scans the live state on every pick.
    """

    def track_load(self) -> None: ...

    def on_acquire(self, state: ServerState) -> None: ...

    def on_release(self, state: ServerState) -> None: ...


# Builds a Balancer from the eligible servers and their effective weights (parallel
# sequences; weights > 0). The backend swaps the result in on every change.
BalancerFactory = Callable[
    [Sequence[ServerState], Sequence[float], BalancerSettings, random.Random], Balancer
]
