"""A coarse timer wheel: many connections' deadlines on one loop timer.

Why. A client connection always has a deadline pending (its request head, then keep-alive
idle), and a loop timer handle costs about 5,000 machine instructions to create and 1,300 to
cancel (uvloop's TimerHandle and libuv timer, measured with callgrind): about 5% of a whole
`Connection: close` request through the proxy. Here a deadline is a dictionary entry in the
bucket of its tick (`RESOLUTION` seconds wide) and a bucket costs one loop timer, shared by
every connection whose deadline falls in it.

How. `add(deadline, owner)` rounds the deadline up to its tick, puts the owner in that tick's
bucket and returns the tick; the one loop timer waits for the earliest tick that has a bucket.
When it fires, every bucket whose tick has passed is taken out first and then each owner's
`on_deadline(tick)` is called: an owner that re-adds itself (its deadline moved) lands in a new
bucket, served by a later fire, so a fire always ends. `discard(tick, owner)` takes an owner out
of a bucket (a connection that closes, or moves its deadline nearer); an owner that does not
discard is still called and must check that the tick is the one it waits for.

A deadline fires between its time and `RESOLUTION` later, never earlier, which is what
timeouts of a second or more need (HAProxy and nginx timers are millisecond-precise; the
shortest Steelyard timeout a user is likely to set is in the hundreds of milliseconds).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Callable
from typing import Final, Protocol

log = logging.getLogger("steelyard.timers")

# seconds per tick: a deadline fires at most this late
RESOLUTION: Final = 0.025
_NEVER: Final = 1 << 62  # the tick of "no loop timer pending"


class DeadlineOwner(Protocol):
    def on_deadline(self, tick: int) -> None: ...


class TimerWheel:
    """Deadlines of many owners on one loop timer (see the module docstring)."""

    __slots__ = ("loop", "_buckets", "_ticks", "_handle", "_handle_tick", "fired", "wakeups")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._buckets: dict[int, dict[DeadlineOwner, None]] = {}
        self._ticks: list[int] = []  # a heap of the ticks in _buckets
        self._handle: asyncio.TimerHandle | None = None
        self._handle_tick = _NEVER
        self.fired = 0  # owners called (for tests and debugging)
        self.wakeups = 0  # times the loop timer fired

    def add(self, deadline: float, owner: DeadlineOwner) -> int:
        """Call `owner.on_deadline(tick)` once `deadline` has passed; returns the tick."""
        tick = math.ceil(deadline / RESOLUTION)
        bucket = self._buckets.get(tick)
        if bucket is None:
            self._buckets[tick] = bucket = {}
            heapq.heappush(self._ticks, tick)
            if tick < self._handle_tick:
                self._wait_for(tick)
        bucket[owner] = None
        return tick

    def call_later(self, delay: float, callback: Callable[[], object]) -> WheelTimer:
        """`callback()` after `delay` seconds (up to RESOLUTION later); like loop.call_later,
        the result's cancel() stops it."""
        timer = WheelTimer(self, callback)
        timer.tick = self.add(self.loop.time() + delay, timer)
        return timer

    def discard(self, tick: int, owner: DeadlineOwner) -> None:
        bucket = self._buckets.get(tick)
        # (compiled: `in` and `del` are C calls, `pop(owner, None)` a generic method call)
        if bucket is not None and owner in bucket:
            del bucket[owner]

    def pending(self) -> int:
        """Owners waiting, over all buckets."""
        return sum(len(b) for b in self._buckets.values())

    def _wait_for(self, tick: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self.loop.call_at(tick * RESOLUTION, self._fire)
        self._handle_tick = tick

    def _fire(self) -> None:
        self._handle = None
        self._handle_tick = _NEVER
        self.wakeups += 1
        # compared as _wait_for scheduled it, in seconds: the loop fires at `tick * RESOLUTION`
        # on a clock of whole milliseconds; the 1 µs absorbs the float rounding of that product
        # (floor(now / RESOLUTION) can come out one tick short at the tick's very millisecond,
        # and the loop would spin until the next millisecond)
        now = self.loop.time() + 1e-6
        ticks = self._ticks
        due: list[tuple[int, dict[DeadlineOwner, None]]] = []
        while ticks and ticks[0] * RESOLUTION <= now:
            tick = heapq.heappop(ticks)
            bucket = self._buckets.pop(tick, None)
            if bucket:
                due.append((tick, bucket))
        if ticks:
            self._wait_for(ticks[0])
        for tick, bucket in due:
            for owner in bucket:
                self.fired += 1
                try:
                    owner.on_deadline(tick)
                except Exception:  # one owner's bug must not cost the others their deadlines
                    log.exception("error in a timeout handler")

    def __repr__(self) -> str:
        return f"TimerWheel(buckets={len(self._buckets)}, pending={self.pending()})"


def _nothing() -> None:
    pass


class WheelTimer:
    """A one-shot callback on a TimerWheel (TimerWheel.call_later), cancelled like a loop
    TimerHandle: for connections whose one timer changes purpose (the TCP listener's)."""

    __slots__ = ("wheel", "tick", "_callback", "cancelled")

    def __init__(self, wheel: TimerWheel, callback: Callable[[], object]) -> None:
        self.wheel = wheel
        self.tick = 0
        self._callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._callback = _nothing  # let go of the owner
            self.wheel.discard(self.tick, self)

    def on_deadline(self, tick: int) -> None:
        if not self.cancelled:
            self.cancelled = True
            callback = self._callback
            self._callback = _nothing
            callback()

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else "pending"
        return f"WheelTimer({state}, at={self.tick * RESOLUTION:.3f})"
