"""Write batching: an HTTP engine's writes of one loop pass go out together, after its reads.

Why. uvloop's `transport.write()` sends at once when the transport's buffer is empty, so a
pass that handles 50 ready sockets interleaves 50 reads with 50 sends, and every send wakes
the peer (wrk, a backend) on the other core while this one is still reading. HAProxy and
nginx read every ready socket first and send afterwards; the peers then wake once per pass,
not once per send. Measured on the benchmark machine under keep-alive load (bench/PROFILE.md,
"write batching"): the client core's epoll_wait calls in 3 s fell from 97k to 27k, the IPIs
sent from the balancer's core from 33k to 4k, the CPU per request by 11% (system time), and
requests/s rose by 10-25%.

How. `write(transport, data)` appends the pair to one list per engine and, for the first
write of a pass, schedules `flush()` with `loop.call_soon`: both uvloop and asyncio run it
after the I/O callbacks of the pass, before the loop waits again. `flush()` writes every
pair in the order it was added, so each transport's bytes keep their order; a transport
that is closing by then is skipped (its connection is gone, as a direct write would have
found too). Once a pass has batched `FLUSH_AT` bytes, the batch is written out at once: a
loop can read many times from one socket in a pass (libuv: up to 32 reads of ~256 KB), and a
transport's back-pressure (`pause_writing`, which pauses the reading side) only acts when the
bytes reach the transport; so a big body streams as without the batch, and the batch never
holds more than FLUSH_AT plus one read.

The rule for callers: every write on a transport of the engine goes through the batch (never
`transport.write` directly, or its bytes could overtake earlier batched ones), and anything
that ends a transport's writing -- `close()`, `abort()`, `write_eof()`, returning a false value
from `eof_received` -- calls `flush()` first, or the batched bytes would be dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

log = logging.getLogger("steelyard.http")

# bytes batched in a pass that make the batch go out at once (module docstring); the default
# high-water mark of asyncio's and uvloop's transports
FLUSH_AT: Final = 64 * 1024


class WriteBatch:
    """The writes of one loop pass, for every HTTP transport of an engine (module docstring)."""

    __slots__ = ("loop", "items", "size", "scheduled", "run", "flushes", "writes")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: list[Any] = []  # transport, data, transport, data, ...
        self.size = 0  # bytes in items
        self.scheduled = False
        self.run: Callable[[], None] = self._run  # one bound method, not one per pass
        self.flushes = 0  # (tests and debugging)
        self.writes = 0

    def write(self, transport: Any, data: bytes) -> None:
        items = self.items
        items.append(transport)
        items.append(data)
        self.size += len(data)
        if self.size >= FLUSH_AT:
            self.flush()
        elif not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def _run(self) -> None:
        self.scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write out everything batched so far, in order."""
        items = self.items
        n = len(items)
        if not n:
            return
        self.items = []
        self.size = 0
        self.flushes += 1
        self.writes += n >> 1
        i = 0
        while i < n:
            transport = items[i]
            data = items[i + 1]
            i += 2
            if transport.is_closing():
                continue
            try:
                transport.write(data)
            except Exception:  # one broken transport must not cost the others their bytes
                log.exception("error writing to %r", transport)

    def __repr__(self) -> str:
        return (
            f"WriteBatch(pending={len(self.items) >> 1}, scheduled={self.scheduled}, "
            f"flushes={self.flushes}, writes={self.writes})"
        )
