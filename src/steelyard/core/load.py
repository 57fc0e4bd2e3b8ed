"""Load feedback: in-flight counts, peak-EWMA latency and the Lease.

Peak EWMA (Finagle / Linkerd): a latency sample above the current estimate replaces it at
once (react fast to a server getting slow), a sample below decays towards it with a time
constant tau (recover slowly): w = exp(-dt / tau); est = est * w + sample * (1 - w).
The estimate also decays towards the latest samples over elapsed time, so a server with no
recent sample is not penalised forever.

A Lease is one use of one server: acquire -> release(outcome), exactly once. Releasing
feeds in-flight counts, latency, counters and passive health back to the server.
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from steelyard.core.balancing.base import ServerState


class Outcome(enum.Enum):
    OK = "ok"
    HTTP_5XX = "http_5xx"
    CONNECT_FAILED = "connect_failed"
    TIMEOUT = "timeout"
    RESET = "reset"
    CANCELLED = "cancelled"  # the downstream went away: says nothing about the server

    @property
    def is_failure(self) -> bool:
        return self in _FAILURES


_FAILURES: Final = frozenset(
    {Outcome.HTTP_5XX, Outcome.CONNECT_FAILED, Outcome.TIMEOUT, Outcome.RESET}
)

DEFAULT_TAU: Final = 10.0


class PeakEwma:
    """Peak-sensitive exponentially weighted moving average of latency (seconds)."""

    __slots__ = ("tau", "value", "stamp", "samples")

    def __init__(self, tau: float = DEFAULT_TAU) -> None:
        self.tau = tau
        self.value = 0.0
        self.stamp = 0.0
        self.samples = 0

    def observe(self, sample: float, now: float) -> None:
        if self.samples == 0 or sample > self.value:
            self.value = sample
        else:
            dt = max(now - self.stamp, 0.0)
            w = math.exp(-dt / self.tau)
            self.value = self.value * w + sample * (1.0 - w)
        self.stamp = now
        self.samples += 1

    def __repr__(self) -> str:
        return f"PeakEwma(value={self.value * 1000:.3f}ms, samples={self.samples})"


class LeaseOwner(Protocol):
    def release_lease(self, lease: Lease, outcome: Outcome) -> None: ...


class Lease:
    """One use of one server. Release exactly once; later calls are ignored."""

    __slots__ = ("server", "owner", "started", "released", "observed")

    def __init__(self, server: ServerState, owner: LeaseOwner, started: float) -> None:
        self.server = server
        self.owner = owner
        self.started = started
        self.released = False
        self.observed = False  # a latency sample was taken before the release (L4 connect)

    def release(self, outcome: Outcome) -> None:
        if self.released:
            return
        self.released = True
        self.owner.release_lease(self, outcome)

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"Lease({self.server.name}, {state})"
