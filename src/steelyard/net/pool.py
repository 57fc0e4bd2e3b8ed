"""Upstream connection pools: keep-alive sockets per server address, reused LIFO.

How this works. An UpstreamConnection is an asyncio Protocol that belongs either to one exchange
(a request in flight, `exchange` set) or to the pool (idle). While idle it still reads: a server
that closes an idle connection (EOF or reset) makes it leave the pool at once, and any byte
arriving while idle means the connection is out of step, so it is closed. `take()` checks again
(closing transport, age) before handing a connection out; the most recently used connection
goes first (warm, and the least likely to have hit the server's own keep-alive timeout). One
timer per UpstreamPools sweeps connections idle longer than `idle_timeout` (60s by default,
shorter than the usual backend keep-alive, so we close first). At most `max_idle_per_server`
idle connections are kept per address; extra ones are closed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from steelyard.core.http1.parser import ResponseParser
from steelyard.net.writes import WriteBatch

if TYPE_CHECKING:
    from steelyard.net.http_proxy import Exchange

Key = tuple[Any, ...]  # (host, port), or (host, port, TLS identity) for TLS upstreams


class _NoSink:
    """Parser sink of an idle connection: any response event means trouble."""

    __slots__ = ()

    def on_interim(self, head: Any) -> None:
        pass

    def on_response_head(self, head: Any) -> None:
        pass

    def on_response_body(self, data: bytes) -> None:
        pass

    def on_response_end(self, trailers: Any) -> None:
        pass


_NO_SINK: Final = _NoSink()


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "pools",
        "key",
        "transport",
        "parser",
        "exchange",
        "idle_since",
        "closed",
        "requests",
        "reading_paused",
    )

    def __init__(self, pools: UpstreamPools, key: Key) -> None:
        self.pools = pools
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser(_NO_SINK)
        self.exchange: Exchange | None = None
        self.idle_since = 0.0
        self.closed = False
        self.requests = 0
        self.reading_paused = False

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.upstream_data(data)
        else:  # bytes while idle: out of step with the server
            self.close()

    def eof_received(self) -> bool | None:
        ex = self.exchange
        if ex is not None:
            ex.upstream_eof()
        else:
            self.closed = True
        self.pools.batch.flush()  # (writes batched for it go out before the transport closes)
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.upstream_lost(exc)
        else:
            self.pools.discard(self)
        self.parser.close()  # break the parser <-> httptools cycle (no GC pass per connection)

    def pause_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.upstream_pause_writing()

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.upstream_resume_writing()

    # -- control -----------------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def usable(self) -> bool:
        t = self.transport
        return not self.closed and t is not None and not t.is_closing()

    def write(self, data: bytes) -> None:
        """(Through the engine's write batch: net/writes.py.)"""
        self.pools.batch.write(self.transport, data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.pools.batch.flush()
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.pools.batch.flush()
            self.transport.abort()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("busy" if self.exchange is not None else "idle")
        return f"UpstreamConnection({self.key[0]}:{self.key[1]} {state} requests={self.requests})"


class UpstreamPools:
    """One pool of idle keep-alive connections per upstream address, for the whole engine."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        idle_timeout: float = 60.0,
        max_idle_per_server: int = 64,
    ) -> None:
        self.loop = loop
        # every write on the engine's HTTP transports, up and down (net/writes.py)
        self.batch = WriteBatch(loop)
        self.idle_timeout = idle_timeout
        self.max_idle_per_server = max_idle_per_server
        self._idle: dict[Key, list[UpstreamConnection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.closing = False
        # counters (tests and metrics)
        self.connects = 0
        self.reuses = 0
        self.discarded = 0

    def take(self, key: Key, now: float | None = None) -> UpstreamConnection | None:
        """An idle connection to `key` that is still open, or None. `now`: loop.time(), when
        the caller has it (the proxy does: one C call fewer per request)."""
        idle = self._idle.get(key)
        if not idle:
            return None
        limit = (self.loop.time() if now is None else now) - self.idle_timeout
        while idle:
            conn = idle.pop()
            t = conn.transport
            if not conn.closed and t is not None and not t.is_closing() and conn.idle_since > limit:
                self.reuses += 1
                conn.requests += 1
                return conn
            self.discarded += 1
            conn.close()
        return None

    def new_connection(self, key: Key) -> UpstreamConnection:
        """Protocol factory for loop.create_connection()."""
        self.connects += 1
        conn = UpstreamConnection(self, key)
        conn.requests = 1
        return conn

    def put(self, conn: UpstreamConnection, now: float | None = None) -> None:
        """Return a connection whose last response was complete and reusable (`now`: as in
        take)."""
        conn.exchange = None  # (the parser keeps its last sink until the next use: never fed idle)
        t = conn.transport
        if self.closing or conn.closed or t is None or t.is_closing():
            conn.close()
            return
        if conn.reading_paused:
            conn.resume_reading()  # idle connections read, to see the server close them
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        if len(idle) >= self.max_idle_per_server:
            self.discarded += 1
            conn.close()
            return
        conn.idle_since = self.loop.time() if now is None else now
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._sweep_interval(), self._sweep)

    def discard(self, conn: UpstreamConnection) -> None:
        """An idle connection was closed by the server."""
        idle = self._idle.get(conn.key)
        if idle is not None:
            try:
                idle.remove(conn)
            except ValueError:
                return
            self.discarded += 1

    def idle_count(self, key: Key | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    def _sweep_interval(self) -> float:
        return max(min(self.idle_timeout / 4, 5.0), 0.05)

    def _sweep(self) -> None:
        self._sweeper = None
        limit = self.loop.time() - self.idle_timeout
        remaining = 0
        for key, idle in list(self._idle.items()):
            keep = []
            for conn in idle:
                if conn.idle_since > limit and conn.usable():
                    keep.append(conn)
                else:
                    self.discarded += 1
                    conn.close()
            if keep:
                self._idle[key] = keep
                remaining += len(keep)
            else:
                del self._idle[key]
        if remaining and not self.closing:
            self._sweeper = self.loop.call_later(self._sweep_interval(), self._sweep)

    def close_all(self) -> None:
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    def __repr__(self) -> str:
        return (
            f"UpstreamPools(idle={self.idle_count()}, connects={self.connects}, "
            f"reuses={self.reuses}, discarded={self.discarded})"
        )
