"""Time as a value passed in, so tests and the simulator drive it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def __call__(self) -> float: ...


# the C function itself, not a Python wrapper around it: it is called per request
monotonic: Clock = time.monotonic


class FakeClock:
    """A clock that moves only when told to (tests, simulator)."""

    __slots__ = ("now",)

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now:.6f})"
