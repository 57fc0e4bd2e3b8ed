"""The HTTP/1.1 proxy data path: asyncio Protocols on uvloop, parsing by core/http1.

How this works. Each downstream connection is a DownstreamConnection (an asyncio Protocol and
the sink of a strict RequestParser). A request head starts an Exchange, which goes through the
phases of DESIGN.md:

    on_request (route, local replies, request id) -> select_server (hash key, acquire a lease)
    -> connect (a pooled keep-alive connection, or a new one; a failed connect is retried on a
    different server, `retries` times) -> upstream_request (rewritten head, then the body as it
    arrives) -> upstream_response (parsed by ResponseParser, head rewritten) -> relay (bodies
    stream both ways) -> on_complete (release the lease with an Outcome, return the connection
    to the pool if the response was complete and reusable, engine.record once).

Requests on one connection are answered in order: while an exchange runs, further (pipelined)
requests are parsed into a queue and reading pauses until the current response is done.

Flow control: the reading leg pauses when the writing leg's transport is over its high-water
mark (pause_writing) and resumes on resume_writing -- both ways. A request body that arrives
while the upstream connection is still being set up is buffered up to 64 KiB, then reading
pauses.

Timers are lazy deadlines on the listener's timer wheel (net/timers.py, 25 ms ticks, one loop
timer for all connections): one per connection, for the request head, keep-alive idle and the
running exchange's response and idle timeouts, re-armed only when they fire early, so the hot
path does not cancel and reschedule timers for every read.

Choices (documented in docs/http.md): `Expect: 100-continue` is forwarded and the server's 100
relayed (a request we answer ourselves gets its final response without a 100, and the connection
then closes); `timeouts.request_head` runs from accept, and on a kept-alive connection from the
first byte of the next request (before that, `timeouts.idle` applies and the connection closes
silently); a server that fails after the response head was sent gets the downstream connection
aborted (the response is never re-framed as complete).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from steelyard.core.backend import Backend
from steelyard.core.balancing import HASHING
from steelyard.core.balancing.base import PickContext, ServerState
from steelyard.core.http1.headers import (
    BODY_CHUNKED,
    BODY_CLOSE,
    BODY_LENGTH,
    BODY_NONE,
    RequestContext,
    RequestIdGenerator,
    build_interim,
    build_request_head,
    build_response_head,
    chunk,
    last_chunk,
    local_response,
    valid_request_id,
)
from steelyard.core.http1.parser import (
    Headers,
    Limits,
    RequestHead,
    RequestParser,
    RequestSink,
    ResponseHead,
    ResponseSink,
)
from steelyard.core.http1.paths import normalize_path
from steelyard.core.load import Lease, Outcome
from steelyard.core.proxy_protocol import ProxyHeader
from steelyard.core.records import RequestRecord
from steelyard.core.routing import CompiledRoute, HashKeys, Router
from steelyard.errors import ProtocolError
from steelyard.net.http_sticky import add_set_cookie, cookie_server, registry_of, sticky_lease
from steelyard.net.http_tunnel import GRACE, WebSocketTunnel, is_websocket
from steelyard.net.https_redirect import https_location
from steelyard.net.pool import Key, UpstreamConnection, UpstreamPools
from steelyard.net.timers import RESOLUTION, TimerWheel
from steelyard.net.tls import TLSConfigError, reload_certificates
from steelyard.net.upstream_tls import UpstreamTLSContexts

log = logging.getLogger("steelyard.http")

# bound once (compiled: a module attribute is a lookup per use, a Final a C constant)
_perf_counter: Final = time.perf_counter
_wall_time: Final = time.time

INF: Final = float("inf")
# Outcome members as module globals: on Python 3.11 `Outcome.OK` goes through EnumType's
# __getattr__ hook (~0.1 us); a global load does not
OK: Final = Outcome.OK
HTTP_5XX: Final = Outcome.HTTP_5XX
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
BUFFER_HIGH: Final = 64 * 1024  # request body buffered while connecting, before reading pauses
DISCARD_MAX: Final = 64 * 1024  # request body we read and drop after a local reply, to keep alive
REPLAY_MAX: Final = 64 * 1024  # request body kept while on a reused connection, to replay it (race)
# lingering close (nginx's lingering_close, lingering_timeout, lingering_time): after an answer
# given before the request was read to its end, what the client still sends is read and
# dropped until it closes, is quiet for LINGER_IDLE or LINGER_MAX has passed
LINGER_IDLE = 5.0
LINGER_MAX: Final = 30.0

# why downstream reading is paused (bit set)
PAUSE_PIPELINE: Final = 1
PAUSE_UPSTREAM: Final = 2
PAUSE_BUFFER: Final = 4

# what the connection's one timer is waiting for
T_NONE: Final = 0
T_HEAD: Final = 1  # the request head (listener timeouts.request_head): 408
T_IDLE: Final = 2  # the next request on a kept-alive connection (listener timeouts.idle): close
X_RESPONSE: Final = 3  # the response head (backend timeouts.response): 504
X_IDLE: Final = 4  # progress of a running exchange (backend timeouts.idle, or the tunnel timeout)

# pipelined events
Q_HEAD: Final = 0
Q_BODY: Final = 1
Q_END: Final = 2
Q_ERROR: Final = 3


class _Settings:
    """A listener's compiled configuration; swapped whole on reload."""

    __slots__ = (
        "name",
        "router",
        "limits",
        "request_head_timeout",
        "idle_timeout",
        "tunnel_timeout",
        "proto",
        "redirect_https",
        "normalize_path",
    )

    def __init__(self, config: Any) -> None:
        self.name: str = config.name
        routes = getattr(config, "routes", ()) or ()
        backend = getattr(config, "backend", None)
        if routes:
            self.router = Router(routes)
        elif backend:
            self.router = Router.single_backend(backend)
        else:
            self.router = Router(())
        self.limits = Limits(max_body=int(getattr(config, "max_body_size", 0) or 0))
        timeouts = getattr(config, "timeouts", None)
        self.request_head_timeout = float(getattr(timeouts, "request_head", 10.0))
        self.idle_timeout = float(getattr(timeouts, "idle", 75.0))
        self.tunnel_timeout = float(getattr(timeouts, "tunnel", 3600.0))
        tls = getattr(config, "tls", None) is not None
        self.proto = b"https" if tls else b"http"
        self.redirect_https = bool(getattr(config, "redirect_https", False)) and not tls
        self.normalize_path = bool(getattr(config, "normalize_path", False))

    def __repr__(self) -> str:
        return f"_Settings({self.name}, {self.router!r}, proto={self.proto.decode()})"


NO_HASH: Final = PickContext(None, frozenset())  # never mutated: retries replace it


class _BackendProfile:
    """A backend's per-request settings, read from its config once, not per request."""

    __slots__ = ("cfg", "hash_on", "timeouts", "idle_timeout", "response_timeout", "l7")

    def __init__(self, cfg: Any, hash_keys: HashKeys) -> None:
        self.cfg = cfg
        algorithm = getattr(cfg, "algorithm", "round_robin")
        self.hash_on: Any = None  # None, "ip_hash" or a HashKey
        if algorithm == "ip_hash":
            self.hash_on = "ip_hash"
        elif algorithm in HASHING:
            self.hash_on = hash_keys.get(getattr(cfg, "hash_on", None) or "client_ip")
        self.timeouts = timeouts = getattr(cfg, "timeouts", None)
        self.idle_timeout = float(getattr(timeouts, "idle", 60.0))
        self.response_timeout = float(getattr(timeouts, "response", 60.0))
        self.l7 = getattr(cfg, "sticky", None) is not None or getattr(cfg, "tls", None) is not None

    def __repr__(self) -> str:
        return f"_BackendProfile(hash_on={self.hash_on!r}, l7={self.l7})"


class HttpListener:
    """The runtime of one `protocol: http` listener; the engine binds protocol_factory."""

    def __init__(self, engine: Any, config: Any) -> None:
        self.engine = engine
        self.loop: asyncio.AbstractEventLoop = engine.loop
        # the engine's objects the request path uses, typed: the engine is not compiled (Any),
        # and an attribute or method of an Any is a dictionary lookup and a generic call each
        # time. The pools live as long as the engine; `backends` is replaced by a reload, so it
        # is read through backends_now()
        self.pools: UpstreamPools = engine.pools
        self.recorders: list[Callable[[RequestRecord], None]] = engine.recorders
        self.connections: set[DownstreamConnection] = set()
        self.request_ids = RequestIdGenerator(engine.rng)
        self.hash_keys = HashKeys()
        self.shutting_down = False
        self._closed_waiter: asyncio.Future[None] | None = None
        # counters (tests, metrics)
        self.requests = 0
        self.accepted = 0
        self.upstream_read_pauses = 0  # an upstream paused because the client reads slowly
        self.downstream_read_pauses = 0  # a client paused (upstream slow, pipelining, buffer)
        self.config = config
        self.settings = _Settings(config)
        self.ssl_context: ssl.SSLContext | None = None  # set by the engine on TLS listeners
        self.upstream_tls = UpstreamTLSContexts()  # client contexts of `tls` backends
        self.sticky = registry_of(engine)  # engine-wide: cookies outlive reloads
        self.profiles: dict[Any, _BackendProfile] = {}  # Backend -> what begin() needs of it
        self.wheel = TimerWheel(self.loop)  # the connections' timeouts (net/timers.py)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def preface_timeout(self) -> float:
        """The time allowed for a PROXY header (net/proxy_preface.py): timeouts.request_head,
        as on tcp listeners."""
        return self.settings.request_head_timeout

    @property
    def connections_active(self) -> int:
        return len(self.connections)

    def update(self, config: Any) -> None:
        """Reload: new requests, also on kept-alive connections, use the new settings;
        certificate files are read again (new handshakes get them, connections stay)."""
        tls = getattr(config, "tls", None)
        if tls is not None and self.ssl_context is not None:
            try:
                reload_certificates(self.ssl_context, tls)
            except TLSConfigError as exc:
                log.error("listener %s keeps its certificates: %s", config.name, exc)
        self.upstream_tls.clear()  # CA files are read again too
        self.profiles.clear()  # backends and their configs are new objects after a reload
        self.settings = _Settings(config)
        self.config = config

    def backends_now(self) -> dict[str, Backend]:
        backends: dict[str, Backend] = self.engine.backends
        return backends

    def profile(self, backend: Any) -> _BackendProfile:
        """What a request needs of a backend's config, read once per config (a reload makes
        new Backend or config objects, so entries are checked by identity and rebuilt)."""
        if len(self.profiles) > 256:
            self.profiles.clear()
        prof = self.profiles[backend] = _BackendProfile(backend.config, self.hash_keys)
        return prof

    def protocol_factory(self) -> asyncio.Protocol:
        return DownstreamConnection(self)

    def begin_shutdown(self) -> None:
        """Idle connections close now; busy ones finish their response with Connection: close."""
        self.shutting_down = True
        for conn in list(self.connections):
            conn.closing = True
            if conn.idle():
                conn.close()

    async def wait_closed(self, timeout: float) -> None:
        """Until every connection ended, and never past `timeout`: WebSocket tunnels, which
        would not end by themselves, get a close frame (1001) to both sides `grace` seconds
        before the deadline so their peers can answer it; at the deadline the rest is cut."""
        if not self.connections:
            return
        waiter = self._closed_waiter
        if waiter is None or waiter.done():
            waiter = self._closed_waiter = self.loop.create_future()
        grace = min(GRACE, timeout / 2)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout - grace)
            return
        except TimeoutError:
            pass
        for conn in list(self.connections):
            tunnel = conn.tunnel
            if tunnel is not None:
                tunnel.go_away(grace)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), grace)
        except TimeoutError:
            for conn in list(self.connections):
                conn.abort()
        await asyncio.sleep(0)

    def connection_closed(self, conn: DownstreamConnection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            waiter = self._closed_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def close_server(self, backend: str, state: ServerState) -> None:
        """Drain timeout of a server: cut what still runs on it."""
        for conn in list(self.connections):
            ex = conn.exchange
            if ex is not None and ex.lease is not None and ex.lease.server is state:
                if ex.tunnel:
                    ex.go_away()  # WebSocket: a 1001 close frame to both sides
                else:
                    ex.abort_server()

    def __repr__(self) -> str:
        return (
            f"HttpListener({self.settings.name}, connections={len(self.connections)}, "
            f"requests={self.requests}, shutting_down={self.shutting_down})"
        )


class DownstreamConnection(asyncio.Protocol, RequestSink):
    """One client connection: parsing, pipelining queue, keep-alive, timers."""

    __slots__ = (
        "listener",
        "loop",
        "settings",
        "transport",
        "parser",
        "client_ip",
        "client_port",
        "client",
        "proxied",
        "lingering",
        "unread",
        "exchange",
        "queue",
        "queueing",
        "paused",
        "write_paused",
        "closing",
        "closed",
        "peer_eof",
        "tkind",
        "deadline",
        "now",
        "wheel",
        "batch",
        "timer_tick",
        "timer_at",
        "tunnel",
        "upgrading",
        "stash",
        "stash_size",
        "bytes_in",
        "bytes_out",
        "in_mark",
        "out_mark",
        "requests",
    )

    def __init__(self, listener: HttpListener) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.settings = listener.settings
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = RequestParser(self, self.settings.limits)
        self.client_ip = b""
        self.client_port = -1  # -1: not known
        self.client = ""  # "ip:port" for records, made by client_text() when first asked
        self.proxied: ProxyHeader | None = None  # set by net/proxy_preface.py
        self.lingering: list[float] | None = None  # [last read, give up at] while lingering
        self.unread = False  # a request body broke off: what follows it is never read
        self.exchange: Exchange | None = None
        # pipelined requests behind the current one: created at the first (most connections
        # never pipeline; a deque per connection cost a Python-level call)
        self.queue: deque[tuple[int, Any]] | None = None
        self.queueing = False
        self.paused = 0
        self.write_paused = False
        self.closing = listener.shutting_down
        self.closed = False
        self.peer_eof = False
        self.tkind = T_NONE
        self.deadline = 0.0
        self.now = 0.0  # loop.time() at the last read (uvloop's clock moves once per iteration)
        self.wheel = listener.wheel
        self.batch = listener.pools.batch  # every write goes through it (net/writes.py)
        self.timer_tick = 0  # the wheel's tick this waits for (0: none)
        self.timer_at = INF  # when that tick begins (INF: no timer)
        self.tunnel: Exchange | None = None
        self.upgrading = False
        self.stash: list[bytes] = []
        self.stash_size = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.in_mark = 0  # bytes_in/out already attributed to finished requests
        self.out_mark = 0
        self.requests = 0

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        proxied = self.proxied  # accept_proxy_protocol: the header's source is the client
        if proxied is not None and proxied.client is not None:
            peer = proxied.client
        if isinstance(peer, tuple) and len(peer) >= 2 and isinstance(peer[1], int):
            self.client_ip = str(peer[0]).encode()
            self.client_port = peer[1]
        else:
            self.client_ip = b"unknown"
        listener = self.listener
        listener.connections.add(self)
        listener.accepted += 1
        self._arm(T_HEAD, self.settings.request_head_timeout)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.now = now = self.loop.time()
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.tunnel_from_downstream(data)
            return
        if self.lingering is not None:  # dropped: the answer went out already
            self.lingering[0] = now
            return
        if self.upgrading:
            self._stash(data)
            return
        if self.tkind == T_IDLE:  # the first bytes of the next request: its head timeout runs
            self.tkind = T_HEAD
            self.deadline = deadline = now + self.settings.request_head_timeout
            if deadline < self.timer_at:
                self._schedule(deadline)
        try:
            leftover = self.parser.feed(data)
        except ProtocolError as exc:
            self._parse_error(exc)
            return
        except Exception:
            log.exception("error in the HTTP data path")
            self.abort()
            return
        if leftover is not None:
            self.upgrading = True
            if leftover:
                self._stash(leftover)

    def eof_received(self) -> bool | None:
        self.peer_eof = True
        self.batch.flush()  # returning None closes the transport: batched bytes go first
        if self.lingering is not None:
            return None  # the client is done sending: close
        ex = self.exchange
        if ex is None and not self.queue:
            return None  # close
        if ex is not None and ex.tunnel:
            ex.end_tunnel()
            return None
        if ex is not None and not ex.request_done:
            ex.downstream_lost()
            return None
        return True  # half-closed: still answer what was asked

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.tkind = T_NONE
        if self.timer_tick:
            self.wheel.discard(self.timer_tick, self)
            self.timer_tick = 0
            self.timer_at = INF
        ex = self.exchange
        if ex is not None:
            ex.downstream_lost()
        if self.queue is not None:
            self.queue.clear()
        self.parser.close()  # the parser and httptools refer to each other: free them now
        self.listener.connection_closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.exchange
        if ex is not None:
            ex.downstream_pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.exchange
        if ex is not None:
            ex.downstream_resume_writing()

    # -- parser sink -------------------------------------------------------------------------

    def on_request_head(self, head: RequestHead) -> None:
        if self.exchange is not None or self.queue:
            self.queueing = True
            self._enqueue((Q_HEAD, head))
            self._pause(PAUSE_PIPELINE)
            return
        self.queueing = False
        self.tkind = T_NONE
        self.settings = self.listener.settings  # a reload applies from the next request on
        self.requests += 1
        self.listener.requests += 1
        self.exchange = ex = Exchange(self, head)
        ex.begin()

    def _enqueue(self, item: tuple[int, Any]) -> None:
        q = self.queue
        if q is None:
            q = self.queue = deque()
        q.append(item)

    def on_request_body(self, data: bytes) -> None:
        if self.queueing:
            self._enqueue((Q_BODY, data))
            return
        ex = self.exchange
        if ex is not None:
            ex.request_body(data)

    def on_request_end(self, trailers: Headers | None) -> None:
        if self.queueing:
            self._enqueue((Q_END, trailers))
            return
        ex = self.exchange
        if ex is not None and not ex.request_done:
            ex.request_end(trailers)

    # -- requests ----------------------------------------------------------------------------

    def _start(self, head: RequestHead) -> None:
        """A queued (pipelined) request's turn, in a later loop iteration than its read."""
        self.now = self.loop.time()
        self.tkind = T_NONE
        self.settings = self.listener.settings  # a reload applies from the next request on
        self.requests += 1
        self.listener.requests += 1
        ex = Exchange(self, head)
        self.exchange = ex
        ex.begin()

    def exchange_done(self, ex: Exchange, keep_alive: bool) -> None:
        if self.exchange is ex:
            self.exchange = None
        if self.closed:
            return
        if (
            ex.tunnel
            or not keep_alive
            or self.closing
            or (self.upgrading and not self.queue)  # HTTP ended with an upgrade request
            or (self.peer_eof and not self.queue)
        ):
            if (not ex.request_done or self.unread) and not ex.tunnel:
                self.linger_close()  # the client may still be sending its body
            else:
                self.close()
            return
        if self.queue:
            self.loop.call_soon(self._process_queue)
            return
        settings = self.listener.settings
        if settings is not self.settings:  # reloaded during the request: the idle time is new
            self.settings = settings
            self.parser.set_limits(settings.limits)
        if self.paused:
            self._resume(PAUSE_PIPELINE)
        self.tkind = T_IDLE
        self.deadline = deadline = self.loop.time() + settings.idle_timeout
        if deadline < self.timer_at:
            self._schedule(deadline)

    def _process_queue(self) -> None:
        q = self.queue
        if q is None:
            return
        started = False
        while q and not self.closed:
            kind, item = q[0]
            if kind in (Q_HEAD, Q_ERROR):
                if started or self.exchange is not None:
                    break  # the next request waits for the current response
                q.popleft()
                if kind == Q_ERROR:
                    q.clear()
                    self._reply_error(item)
                    return
                started = True
                self._start(item)
                continue
            q.popleft()
            ex = self.exchange
            if ex is not None:
                if kind == Q_BODY:
                    ex.request_body(item)
                else:
                    ex.request_end(item)
        if not q:
            self.queueing = False
            if not self.closed:
                self._resume(PAUSE_PIPELINE)
                if self.exchange is None and not self.closing:
                    self._arm(T_IDLE, self.settings.idle_timeout)

    def _parse_error(self, exc: ProtocolError) -> None:
        if self.queueing:
            if not self.parser.in_head:
                # a queued request's body broke: that request is never started
                q = self.queue
                while q and q[-1][0] != Q_HEAD:
                    q.pop()
                if q:
                    q.pop()
            self._enqueue((Q_ERROR, exc))
            self._pause(PAUSE_PIPELINE)
            return
        ex = self.exchange
        if ex is not None and not ex.done and not ex.request_done:
            ex.request_error(exc)  # the current request's body broke
            return
        if ex is not None or self.queue:  # a later request: answer in order
            self.queueing = True
            self._enqueue((Q_ERROR, exc))
            self._pause(PAUSE_PIPELINE)
            return
        self._reply_error(exc)

    def _reply_error(self, exc: ProtocolError) -> None:
        """A request that never became an exchange: answer, record, close."""
        head = self.parser.partial_head
        rid = head.request_id
        if rid is None or not valid_request_id(rid):
            rid = self.listener.request_ids.next()
        record = RequestRecord(self.settings.name, self.client_text(), time.time())
        record.method = head.method.decode("latin-1") if head.method else None
        record.path = head.target.decode("latin-1") if head.target else None
        record.status = exc.status
        record.request_id = rid.decode()
        record.bytes_in = self.bytes_in - self.in_mark
        self.write(local_response(exc.status, rid, close=True, message=exc.reason))
        record.bytes_out = self.bytes_out - self.out_mark
        self.listener.engine.record(record)
        self.upgrading = False
        if exc.status == 408:
            self.close()  # a client that sent too little: nothing to drain
        else:
            self.linger_close()  # the rest of what the client sent is never parsed

    def _stash(self, data: bytes) -> None:
        """Bytes after an upgrade request: they belong to the tunnel, if there is one."""
        self.stash.append(data)
        self.stash_size += len(data)
        if self.stash_size > BUFFER_HIGH:
            self._pause(PAUSE_BUFFER)

    # -- timers ------------------------------------------------------------------------------

    # One lazy wheel entry per connection serves every timeout: arming only moves `deadline`;
    # the entry is moved only when the new deadline is nearer than the pending tick
    # (`timer_at`, kept here so that arming is two stores and a compare, no call), and an
    # entry that fires early re-arms itself for the remainder. So a busy keep-alive connection
    # does not create or cancel a timer per request. The hot paths (data_received,
    # exchange_done, Exchange._attach / on_response_head) do what _arm_at does inline.

    def _arm(self, kind: int, seconds: float) -> None:
        self.tkind = kind
        self.deadline = deadline = self.loop.time() + seconds
        if deadline < self.timer_at:
            self._schedule(deadline)

    def _arm_at(self, kind: int, deadline: float) -> None:
        self.tkind = kind
        self.deadline = deadline
        if deadline < self.timer_at:
            self._schedule(deadline)

    def _schedule(self, deadline: float) -> None:
        """The timer fires at `deadline` (nearer than the pending one, if any), or at most
        timers.RESOLUTION later."""
        wheel = self.wheel
        if self.timer_tick:
            wheel.discard(self.timer_tick, self)
        self.timer_tick = tick = wheel.add(deadline, self)
        self.timer_at = tick * RESOLUTION

    def on_deadline(self, tick: int) -> None:
        """The wheel's call: the tick this connection waits for has begun."""
        if tick != self.timer_tick:
            return  # a tick given up for a nearer one
        self.timer_tick = 0
        self.timer_at = INF
        kind = self.tkind
        if kind == T_NONE or self.closed:
            return
        ex = self.exchange
        if kind == X_IDLE and ex is not None:
            deadline = ex.last_activity + ex.idle_timeout
        else:
            deadline = self.deadline
        if self.loop.time() < deadline:
            self._schedule(deadline)
            return
        self.tkind = T_NONE
        if kind >= X_RESPONSE:
            if ex is not None:
                ex.timed_out(kind)
        elif ex is None:
            if kind == T_HEAD:
                if not self.queue:
                    self._reply_error(ProtocolError(408, "request head not received in time"))
            else:
                self.close()

    # -- helpers -----------------------------------------------------------------------------

    def idle(self) -> bool:
        return self.exchange is None and not self.queue and self.tunnel is None

    def write(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.batch.write(self.transport, data)

    def _pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
            self.listener.downstream_read_pauses += 1
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed and not self.transport.is_closing():
                self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.batch.flush()
            self.transport.close()

    def linger_close(self) -> None:
        """Close after an answer given before the client's request was read to its end (a
        local error, a body that broke off). A plain close with unread bytes makes the kernel
        send a reset, which can destroy the answer before the client reads it; so, as nginx's
        lingering close, send FIN after the answer (TLS cannot half-close: it is just flushed),
        read and drop what still comes, and close when the client closes, is quiet for
        LINGER_IDLE, or after LINGER_MAX."""
        transport = self.transport
        if self.closed or transport is None or self.lingering is not None:
            return
        if self.peer_eof or transport.is_closing():
            self.close()
            return
        now = self.loop.time()
        self.lingering = [now, now + LINGER_MAX]
        self.tkind = T_NONE  # no request timeouts any more: the linger timer decides
        if self.queue is not None:
            self.queue.clear()
        if self.paused:
            self.paused = 0
            transport.resume_reading()
        if transport.can_write_eof():
            self.batch.flush()
            transport.write_eof()
        self.loop.call_later(LINGER_IDLE, self._linger_check)

    def _linger_check(self) -> None:
        lingering = self.lingering
        if self.closed or lingering is None:
            return
        now = self.loop.time()
        quiet_until = lingering[0] + LINGER_IDLE
        if now >= quiet_until or now >= lingering[1]:
            self.batch.flush()
            self.transport.close()
            return
        self.loop.call_at(min(quiet_until, lingering[1]), self._linger_check)

    def abort(self) -> None:
        if self.transport is not None:
            self.batch.flush()  # what was written before a cut goes out, as without the batch
            self.transport.abort()

    def client_text(self) -> str:
        """The client as records name it: "ip:port" ("[ip]:port" for IPv6), or "unknown"."""
        client = self.client
        if not client:
            ip = self.client_ip.decode("latin-1")
            if self.client_port < 0:
                client = ip
            elif ":" in ip:
                client = f"[{ip}]:{self.client_port}"
            else:
                client = f"{ip}:{self.client_port}"
            self.client = client
        return client

    def __repr__(self) -> str:
        state = "tunnel" if self.tunnel else ("busy" if self.exchange else "idle")
        return (
            f"DownstreamConnection({self.client_text()} {state} requests={self.requests} "
            f"queued={len(self.queue or ())} paused={self.paused} write_paused={self.write_paused} "
            f"closing={self.closing} closed={self.closed})"
        )


class Exchange(RequestRecord, ResponseSink):
    """One request and its response, from the head to on_complete (the ResponseSink).

    It is its own RequestRecord (the record's fields are inherited slots), so a request costs
    one object fewer; `rid` is the request id as bytes, `backend_obj` the Backend (the record's
    `request_id` and `backend` are the strings logged)."""

    __slots__ = (
        "down",
        "loop",
        "head",
        "rid",
        "route",
        "ctx",
        "backend_obj",
        "pick",
        "timeouts",
        "lease",
        "key",
        "upstream",
        "reused",
        "connect_task",
        "connect_timer",
        "attempts",
        "pending",
        "pending_size",
        "replay",
        "replay_size",
        "trailers",
        "body_received",
        "request_done",
        "response_started",
        "response_done",
        "resp",
        "mode",
        "keep_alive",
        "discard",
        "done",
        "tunnel",
        "waiter",
        "wait_timer",
        "out",
        "idle_timeout",
        "response_timeout",
        "last_activity",
        "t0",
        "tls",
        "sticky",
        "sticky_server",
        "ws",
        "tls_error",
    )

    def __init__(self, down: DownstreamConnection, head: RequestHead) -> None:
        self.down = down
        self.loop = down.loop
        self.head = head
        self.rid = b""
        self.route: CompiledRoute | None = None
        self.ctx: RequestContext | None = None
        self.backend_obj: Any = None  # the Backend (begin() reads it through a typed local)
        self.pick: PickContext | None = None
        self.timeouts: Any = None
        self.lease: Lease | None = None
        self.key: Key = ("", 0)
        self.upstream: UpstreamConnection | None = None
        self.reused = False
        self.connect_task: asyncio.Task[Any] | None = None
        self.connect_timer: asyncio.TimerHandle | None = None
        self.attempts = 0
        self.pending: list[bytes] | None = None
        self.pending_size = 0
        # the body sent on a reused pooled connection, until its response starts: a server
        # that closed that connection as we reused it gets it again on a fresh one
        self.replay: list[bytes] | None = None
        self.replay_size = 0
        self.trailers: Headers | None = None
        self.body_received = 0
        self.request_done = not (head.chunked or head.content_length)  # not head.has_body
        self.response_started = False
        self.response_done = False
        self.resp: ResponseHead | None = None
        self.mode = 0
        self.keep_alive = False
        self.discard = False
        self.done = False
        self.tunnel = False
        self.waiter: Any = None  # a Backend waiter while queued at max_connections_per_server
        self.wait_timer: asyncio.TimerHandle | None = None
        self.out: list[bytes] | None = None  # downstream writes gathered during one read
        self.idle_timeout = 60.0
        self.response_timeout = 60.0
        # timers: the time of the read that completed the head (a head in the queue behind a
        # pipelined request starts later: _start() sets it again)
        self.last_activity = down.now
        self.t0 = _perf_counter()  # the logged duration, with sub-millisecond precision
        # the RequestRecord fields (RequestRecord.__init__, inline)
        self.time = _wall_time()
        self.listener = down.settings.name
        self.client = ""  # (set in _finish, for the recorders)
        self.method: str | None = None
        self.path: str | None = None
        self.status: int | None = None
        self.backend: str | None = None
        self.server: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.duration = 0.0
        self.retries = 0
        self.request_id: str | None = None
        self.tls: Any = None  # UpstreamTLS of a backend with `tls`
        self.sticky: Any = None  # StickyCookies of a backend with `sticky`
        self.sticky_server: str | None = None  # the server a valid affinity cookie named
        self.ws: WebSocketTunnel | None = None
        self.tls_error = False

    # -- on_request --------------------------------------------------------------------------

    def begin(self) -> None:
        down = self.down
        head = self.head
        listener = down.listener
        settings = down.settings
        rid = head.request_id
        if rid is None or not valid_request_id(rid):
            rid = listener.request_ids.next()
        self.rid = rid
        if settings.normalize_path and head.path[:1] == b"/":
            path = normalize_path(head.path)
            if path is None:
                self.local_error(400, "malformed percent-encoding in the path")
                return
            if path != head.path:  # routes, rewrites and the server see the normal form
                head.path = path
                head.target = path if head.query is None else path + b"?" + head.query
        if settings.redirect_https:
            sockname = down.transport.get_extra_info("sockname")
            fallback = str(sockname[0]).encode() if isinstance(sockname, tuple) else b"localhost"
            location = https_location(listener.engine, head, fallback)
            self._local_reply(308, headers=[(b"Location", location)], body=b"")
            return
        route = settings.router.match(head)
        if route is None:
            self.local_error(404, "no route")
            return
        self.route = route
        if route.needs_context:
            self.ctx = RequestContext(
                down.client_ip, rid, head.host or b"", head.path, head.query or b""
            )
        if route.redirect is not None:
            location = route.redirect.to.render(self.ctx or RequestContext())
            self._local_reply(route.redirect.status, headers=[(b"Location", location)], body=b"")
            return
        if route.respond is not None:
            respond = route.respond
            body = respond.body.render(self.ctx or RequestContext())
            self._local_reply(respond.status, body=body, content_type=respond.content_type)
            return
        name = route.backend if route.fixed else route.pick_backend(listener.engine.rng)
        backend = listener.backends_now().get(name) if name else None
        if backend is None:
            self.local_error(503, "backend unavailable", retry_after=True)
            return
        self.backend_obj = backend
        self.backend = name
        cfg = backend.config
        prof = listener.profiles.get(backend)
        if prof is None or prof.cfg is not cfg:
            prof = listener.profile(backend)
        if prof.hash_on is None:
            self.pick = NO_HASH  # shared; a retry makes its own (see _exclude)
        elif prof.hash_on == "ip_hash":
            self.pick = PickContext(down.client_ip, frozenset())
        else:
            self.pick = PickContext(prof.hash_on.extract(head, down.client_ip), frozenset())
        self.timeouts = prof.timeouts
        self.idle_timeout = prof.idle_timeout
        self.response_timeout = prof.response_timeout
        if prof.l7 and self._l7_options(backend.name, cfg):
            return
        # _select() and _leased(), inline for the usual case (a lease, no TLS, a pooled
        # connection): two Python calls fewer per request
        lease = backend.acquire(self.pick)
        if lease is None or self.tls is not None:
            self._selected(lease)
            return
        self.lease = lease
        state = lease.server
        self.server = state.name
        server = state.server
        self.key = key = (server.host, server.port)
        conn = listener.pools.take(key, self.last_activity)  # (loop.time(), from __init__)
        if conn is not None:
            self._attach(conn, True, self.last_activity)  # (this loop iteration's time)
        else:
            self._connect()

    def _exclude(self, name: str) -> None:
        """Retries: the servers tried so far, in a PickContext of this exchange's own."""
        pick = self.pick
        assert pick is not None
        self.pick = PickContext(pick.hash_key, pick.exclude | {name})

    def _l7_options(self, name: str, cfg: Any) -> bool:
        """Upstream TLS and sticky sessions; True when a sticky lease was taken."""
        tls = getattr(cfg, "tls", None)
        if tls is not None:
            try:
                self.tls = self.down.listener.upstream_tls.get(tls)
            except (OSError, ssl.SSLError) as exc:
                log.error("backend %s: cannot set up TLS: %s", name, exc)
                self.local_error(502, "TLS toward the server cannot be set up")
                return True
        sticky_cfg = getattr(cfg, "sticky", None)
        if sticky_cfg is not None:
            self.sticky = sticky = self.down.listener.sticky.get(name, sticky_cfg)
            server = self.sticky_server = cookie_server(sticky, self.backend_obj, self.head)
            if server is not None:
                lease = sticky_lease(self.backend_obj, server)
                if lease is not None:
                    self._leased(lease)
                    return True
        return False

    # -- select_server / connect -------------------------------------------------------------

    def _select(self) -> None:
        assert self.pick is not None
        self._selected(self.backend_obj.acquire(self.pick))

    def _selected(self, lease: Lease | None) -> None:
        backend = self.backend_obj
        if lease is None:
            if backend.max_connections_per_server and self._wait_for_slot():
                return
            if self.attempts:
                self._connects_failed()
            else:
                self.local_error(503, "no server available", retry_after=True)
            return
        if self.attempts:
            self.retries += 1
        self._leased(lease)

    def _connects_failed(self) -> None:
        if self.tls_error:  # a server answered, but the TLS handshake with it failed
            self.local_error(502, "TLS handshake with the server failed")
        else:
            self.local_error(503, "every connect attempt failed", retry_after=True)

    def _wait_for_slot(self) -> bool:
        """Every server is at max_connections_per_server: queue (Backend.wait) for a slot."""
        assert self.pick is not None
        waiter = self.backend_obj.wait(self.pick, self._slot_delivered)
        if waiter is None:
            return False
        self.waiter = waiter
        timeout = float(getattr(self.backend_obj, "queue_timeout", 5.0))
        self.wait_timer = self.loop.call_later(timeout, self._slot_timeout)
        return True

    def _slot_delivered(self, lease: Lease | None) -> bool:
        # called synchronously from another request's release: continue on a fresh callback
        if self.done or self.waiter is None:
            return False
        self.waiter = None
        if self.wait_timer is not None:
            self.wait_timer.cancel()
            self.wait_timer = None
        self.loop.call_soon(self._slot_ready, lease)
        return True

    def _slot_ready(self, lease: Lease | None) -> None:
        if self.done:
            if lease is not None:
                lease.release(Outcome.CANCELLED)
            return
        if lease is None:
            self.local_error(503, "no server available", retry_after=True)
        else:
            self._leased(lease)

    def _slot_timeout(self) -> None:
        self.wait_timer = None
        waiter = self.waiter
        if waiter is None or self.done:
            return
        self.waiter = None
        waiter.cancel()
        self.local_error(503, "every server is at its connection limit", retry_after=True)

    def _leased(self, lease: Lease) -> None:
        self.lease = lease
        state = lease.server
        self.server = state.name
        server = state.server
        key: Key
        if self.tls is None:
            self.key = key = (server.host, server.port)
        else:  # pooled connections are keyed on the TLS identity too
            self.key = key = (server.host, server.port, self.tls.ident)
        conn = self.down.listener.pools.take(key)
        if conn is not None:
            self._attach(conn, True, self.loop.time())
        else:
            self._connect()

    def _connect(self) -> None:
        pools = self.down.listener.pools
        key = self.key
        loop = self.loop
        tls = self.tls
        if tls is None:
            task = loop.create_task(
                loop.create_connection(lambda: pools.new_connection(key), key[0], key[1])
            )
        else:
            task = loop.create_task(
                loop.create_connection(
                    lambda: pools.new_connection(key),
                    key[0],
                    key[1],
                    ssl=tls.context,
                    server_hostname=tls.server_hostname(key[0]),
                )
            )
        self.connect_task = task
        self.connect_timer = loop.call_later(
            float(getattr(self.timeouts, "connect", 5.0)), task.cancel
        )
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        self.connect_task = None
        if self.connect_timer is not None:
            self.connect_timer.cancel()
            self.connect_timer = None
        failed = task.cancelled() or task.exception() is not None
        if self.done:
            if not failed:
                _, conn = task.result()
                self.down.listener.pools.put(conn)
            return
        if failed:
            lease = self.lease
            self.lease = None
            assert lease is not None and self.pick is not None
            if not task.cancelled() and isinstance(task.exception(), ssl.SSLError):
                self.tls_error = True  # e.g. certificate verification failed
                log.warning("TLS handshake with %s failed: %s", lease.server.name, task.exception())
            lease.release(Outcome.CONNECT_FAILED)
            self.attempts += 1
            self._exclude(lease.server.name)
            retries = int(getattr(self.backend_obj.config, "retries", 2))
            if self.attempts <= retries:
                self._select()  # counts the retry only if another server takes it
            else:
                self._connects_failed()
            return
        _, conn = task.result()
        self._attach(conn, False, self.loop.time())

    # -- upstream_request --------------------------------------------------------------------

    def _attach(self, conn: UpstreamConnection, reused: bool, now: float) -> None:
        """Send the head (and any body read so far) on `conn`; `now` is loop.time()."""
        down = self.down
        head = self.head
        route = self.route
        assert route is not None and self.lease is not None
        self.upstream = conn
        self.reused = reused
        conn.exchange = self
        conn.parser.expect_response(self, head.method == b"HEAD")
        headers = head.headers
        if not route.request_actions.empty:
            ctx = self.ctx
            assert ctx is not None
            ctx.server = self.lease.server.name.encode()
            headers = route.request_actions.apply(list(headers), ctx)
        if head.host is None:  # HTTP/1.0 without Host: HTTP/1.1 upstream needs one
            headers = [(b"Host", self.lease.server.address.encode()), *headers]
        target = route.rewrite_target(head) if route.strip_prefix is not None else head.target
        # positional: target, client_ip, proto, request_id
        data = build_request_head(
            head, headers, target, down.client_ip, down.settings.proto, self.rid
        )
        pending = self.pending
        if reused and head.has_body and head.method in IDEMPOTENT:
            self.replay = list(pending) if pending else []
            self.replay_size = self.pending_size
        if pending:
            if head.chunked:
                data += b"".join([chunk(p) for p in pending])
            else:
                data += b"".join(pending)
            self.pending = None
            self.pending_size = 0
        if self.request_done and head.chunked:
            data += last_chunk(self.trailers)
        down.batch.write(conn.transport, data)
        if down.paused:
            down._resume(PAUSE_BUFFER)
        if down.write_paused:
            conn.pause_reading()
        self.last_activity = now
        if self.request_done:  # down._arm_at(X_RESPONSE, ...), inline
            down.tkind = X_RESPONSE
            down.deadline = deadline = now + self.response_timeout
        else:
            down.tkind = X_IDLE
            down.deadline = deadline = now + self.idle_timeout
        if deadline < down.timer_at:
            down._schedule(deadline)

    def request_body(self, data: bytes) -> None:
        self.body_received += len(data)
        if self.discard or self.done:
            return
        conn = self.upstream
        if conn is not None and not self.tunnel:
            self.last_activity = self.loop.time()
            conn.write(chunk(data) if self.head.chunked else data)
            replay = self.replay
            if replay is not None:
                self.replay_size += len(data)
                if self.replay_size > REPLAY_MAX:
                    self.replay = None  # too much to keep: no replay
                else:
                    replay.append(data)
            return
        if self.pending is None:
            self.pending = [data]
        else:
            self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > BUFFER_HIGH:
            self.down._pause(PAUSE_BUFFER)

    def request_end(self, trailers: Headers | None) -> None:
        if self.request_done:
            return
        self.request_done = True
        self.trailers = trailers
        if self.done:
            return
        if self.response_done:
            self._finish(self.keep_alive)
            return
        conn = self.upstream
        if conn is not None:
            if self.head.chunked:
                conn.write(last_chunk(trailers))
            if not self.response_started:
                self.down._arm_at(X_RESPONSE, self.loop.time() + self.response_timeout)

    def request_error(self, exc: ProtocolError) -> None:
        """The client's body broke framing or a limit mid-request."""
        if self.done:
            return
        self.request_done = True
        self._drop_upstream()
        self._release(Outcome.CANCELLED)
        if self.response_started:
            self._cut()
            return
        self.status = exc.status
        self.down.write(local_response(exc.status, self.rid, close=True, message=exc.reason))
        self.response_started = self.response_done = True
        self.down.unread = True  # the rest of the body comes still: drain it (lingering close)
        self._finish(False)

    # -- upstream_response (ResponseSink) -----------------------------------------------------

    def _emit(self, data: bytes) -> None:
        out = self.out
        if out is None:
            self.down.write(data)
        else:
            out.append(data)

    def _flush(self) -> None:
        out = self.out
        self.out = None
        if out:
            self.down.write(out[0] if len(out) == 1 else b"".join(out))

    def on_interim(self, resp: ResponseHead) -> None:
        if self.head.version == "1.1":
            self._emit(build_interim(resp))

    def on_response_head(self, resp: ResponseHead) -> None:
        self.replay = None  # the server answers: nothing will be replayed
        head = self.head
        down = self.down
        status = resp.status
        if status == 101 and (head.upgrade is None or resp.upgrade is None):
            raise ProtocolError(502, "unexpected 101 response", source="upstream")
        self.response_started = True
        self.resp = resp
        self.status = status
        http10 = head.version == "1.0"
        # response_mode(resp, http10), inline
        if resp.no_body:
            mode = BODY_NONE
        elif resp.content_length is not None and not resp.chunked:
            mode = BODY_LENGTH
        else:
            mode = BODY_CLOSE if http10 else BODY_CHUNKED
        keep = (
            head.keep_alive
            and self.request_done
            and head.upgrade is None
            and not down.closing
            and mode != BODY_CLOSE
        )
        headers = resp.headers
        route = self.route
        if route is not None and not route.response_actions.empty:
            ctx = self.ctx
            assert ctx is not None and self.lease is not None
            ctx.server = self.lease.server.name.encode()
            headers = route.response_actions.apply(headers, ctx)
        sticky = self.sticky
        if sticky is not None and self.lease is not None:
            server = self.lease.server.name
            if server != self.sticky_server:  # no valid cookie, or the server changed
                secure = down.settings.proto == b"https"
                headers = add_set_cookie(headers, sticky, server, secure)
        self.mode = mode
        self.keep_alive = keep
        data = build_response_head(resp, headers, mode, keep, http10, self.rid)
        out = self.out
        if out is None:
            down.write(data)
        else:
            out.append(data)
        down.tkind = X_IDLE  # down._arm_at(X_IDLE, ...), inline
        down.deadline = deadline = self.last_activity + self.idle_timeout
        if deadline < down.timer_at:
            down._schedule(deadline)

    def on_response_body(self, data: bytes) -> None:
        out = self.out
        if self.mode == BODY_CHUNKED:
            data = chunk(data)
        if out is None:
            self.down.write(data)
        else:
            out.append(data)

    def on_response_end(self, trailers: Headers | None) -> None:
        if self.mode == BODY_CHUNKED:
            self._emit(last_chunk(trailers))
        self.response_done = True

    # -- upstream events (from UpstreamConnection) ---------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        if self.tunnel:
            ws = self.ws
            if ws is not None:
                data = ws.from_server(data)
            if data:
                self.down.write(data)
            return
        conn = self.upstream
        assert conn is not None
        self.out = []
        try:
            leftover = conn.parser.feed(data)
        except ProtocolError as exc:
            self._flush()
            self._upstream_failed(exc.status, exc.reason, Outcome.RESET)
            return
        except Exception:
            log.exception("error in the HTTP data path")
            self._flush()
            self._upstream_failed(502, "internal error", Outcome.CANCELLED)
            return
        out = self.out  # _flush(), inline
        self.out = None
        if out:
            down = self.down
            data = out[0] if len(out) == 1 else b"".join(out)
            down.bytes_out += len(data)  # down.write(data), inline
            down.batch.write(down.transport, data)
        if self.done:
            return
        if self.response_done:
            if leftover is not None and self.resp is not None and self.resp.status == 101:
                self._start_tunnel(leftover)
            else:
                self._response_complete()

    def upstream_eof(self) -> None:
        if self.tunnel:
            self.end_tunnel()
            return
        conn = self.upstream
        if conn is None or self.done:
            return
        try:
            ended = conn.parser.feed_eof()
        except ProtocolError as exc:
            self._upstream_failed(exc.status, exc.reason, Outcome.RESET)
            return
        if ended or self.response_done:
            self._response_complete()
        else:
            self._upstream_failed(502, "server closed the connection", Outcome.RESET)

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.tunnel:
            self.end_tunnel()
            return
        if self.done or self.upstream is None:
            return
        self.upstream_eof()

    def upstream_pause_writing(self) -> None:
        self.down._pause(PAUSE_UPSTREAM)

    def upstream_resume_writing(self) -> None:
        self.last_activity = self.loop.time()
        self.down._resume(PAUSE_UPSTREAM)

    def downstream_pause_writing(self) -> None:
        conn = self.upstream
        if conn is not None:
            conn.pause_reading()
            self.down.listener.upstream_read_pauses += 1

    def downstream_resume_writing(self) -> None:
        self.last_activity = self.loop.time()
        conn = self.upstream
        if conn is not None:
            conn.resume_reading()

    # -- on_complete -------------------------------------------------------------------------

    def _response_complete(self) -> None:
        conn = self.upstream
        resp = self.resp
        assert resp is not None
        self.upstream = None
        if conn is not None:
            parser = conn.parser
            reusable = (
                parser.reusable
                and parser.complete
                and self.request_done
                and resp.keep_alive
                and self.head.upgrade is None
            )
            if reusable:  # (only after upstream_data, which set last_activity = loop.time())
                self.down.listener.pools.put(conn, self.last_activity)
            else:
                conn.exchange = None
                conn.close()
        lease = self.lease  # _release(), inline
        if lease is not None:
            self.lease = None
            lease.release(HTTP_5XX if resp.status >= 500 else OK)
        if self.request_done:
            self._finish(self.keep_alive)
        else:
            # the server answered before the body ended: we cannot keep this connection in step
            self._finish(False)

    def _release(self, outcome: Outcome) -> None:
        lease = self.lease
        if lease is not None:
            self.lease = None
            lease.release(outcome)

    def _drop_upstream(self) -> None:
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            conn.exchange = None
            conn.abort()
        task = self.connect_task
        if task is not None:
            task.cancel()

    def _upstream_failed(self, status: int, message: str, outcome: Outcome) -> None:
        conn = self.upstream
        if (
            conn is not None
            and outcome is Outcome.RESET
            and self.reused
            and not self.response_started
            and not conn.parser.started
            and (not self.head.has_body or self.replay is not None)
            and self.head.upgrade is None
            and not self.done
        ):
            # a pooled connection the server closed as we reused it: nothing was processed;
            # the body sent so far (if any) goes first on the fresh connection
            self.upstream = None
            conn.exchange = None
            conn.abort()
            self.reused = False
            replay = self.replay
            if replay:
                self.pending = replay + (self.pending or [])
                self.pending_size += self.replay_size
            self.replay = None
            self._connect()
            return
        self._drop_upstream()
        if self.done:
            return
        self._release(outcome)
        if (
            outcome is Outcome.RESET
            and not self.response_started
            and self.head.method in IDEMPOTENT
            and not self.head.has_body
            and self.head.upgrade is None
            and self.lease is None
            and self.pick is not None
            and self.attempts < int(getattr(self.backend_obj.config, "retries", 2))
        ):
            # nothing came back and the request can be replayed: another server, if any
            self._exclude(self.server or "")
            lease = self.backend_obj.acquire(self.pick)
            if lease is not None:
                self.attempts += 1
                self.retries += 1
                self._leased(lease)
                return
        if self.response_started:
            self._cut()
        else:
            self.local_error(status, message)

    def _cut(self) -> None:
        """The response head went out already: abort, never re-frame as complete."""
        self.down.abort()
        self._finish(False)

    def abort_server(self) -> None:
        self._upstream_failed(502, "server removed", Outcome.CANCELLED)

    def downstream_lost(self) -> None:
        if self.done:
            return
        self._drop_upstream()
        self._release(Outcome.CANCELLED)
        if not self.response_done and self.status is None:
            self.status = 499  # nginx's "client closed request"
        self._finish(False)

    def _finish(self, keep_alive: bool) -> None:
        if self.done:
            return
        self.done = True
        down = self.down
        if down.tkind >= X_RESPONSE:
            down.tkind = T_NONE
        if down.paused & (PAUSE_UPSTREAM | PAUSE_BUFFER):
            down._resume(PAUSE_UPSTREAM | PAUSE_BUFFER)  # what paused it belongs to this exchange
        if self.waiter is not None:
            self.waiter.cancel()
            self.waiter = None
        if self.wait_timer is not None:
            self.wait_timer.cancel()
            self.wait_timer = None
        if self.upstream is not None and not self.tunnel:
            self._drop_upstream()
        if self.lease is not None:
            self._release(Outcome.CANCELLED)
        # the record's fields (this exchange is the record)
        bytes_in = down.bytes_in
        n = bytes_in - down.in_mark
        body = self.body_received
        self.bytes_in = n if n >= body else body
        down.in_mark = bytes_in
        bytes_out = down.bytes_out
        self.bytes_out = bytes_out - down.out_mark
        down.out_mark = bytes_out
        recorders = down.listener.recorders
        if recorders:  # the strings only for those who read them (access log, metrics)
            head = self.head
            self.client = down.client_text()
            self.method = head.method.decode("latin-1")
            self.path = head.target.decode("latin-1")
            self.request_id = self.rid.decode()
            self.duration = _perf_counter() - self.t0
            for recorder in recorders:  # Engine.record, inline (compiled)
                recorder(self)
        down.exchange_done(self, keep_alive)

    # -- local replies -----------------------------------------------------------------------

    def local_error(self, status: int, message: str, *, retry_after: bool = False) -> None:
        headers = [(b"Retry-After", b"1")] if retry_after else None
        self._local_reply(status, message=message, headers=headers)

    def _local_reply(
        self,
        status: int,
        *,
        message: str = "",
        body: bytes | None = None,
        content_type: bytes = b"text/plain; charset=utf-8",
        headers: Headers | None = None,
    ) -> None:
        head = self.head
        down = self.down
        self.response_started = self.response_done = True
        self.status = status
        keep = head.keep_alive and not down.closing and head.upgrade is None
        if keep and not self.request_done:
            remaining = (head.content_length or 0) - self.body_received
            if head.content_length is not None and remaining <= DISCARD_MAX:
                self.discard = True
                self.pending = None
                self.last_activity = now = self.loop.time()
                down._arm_at(X_IDLE, now + self.idle_timeout)
            else:
                keep = False
        self.keep_alive = keep
        data = local_response(
            status,
            self.rid,
            close=not keep,
            message=message,
            body=body,
            content_type=content_type,
            headers=headers,
            head_only=head.method == b"HEAD",
            http10_client=head.version == "1.0",
        )
        down.write(data)
        if self.request_done or not keep:
            self._finish(keep)

    # -- tunnel (101 Switching Protocols) ----------------------------------------------------

    def _start_tunnel(self, leftover: bytes) -> None:
        down = self.down
        conn = self.upstream
        assert conn is not None
        self.tunnel = True
        down.tunnel = self
        down.upgrading = False
        lease = self.lease
        if lease is not None:  # latency sample: the time to the 101, not the tunnel's life
            now = self.loop.time()
            lease.server.ewma.observe(now - lease.started, now)
        ws = None
        if is_websocket(self.head.upgrade):  # frame boundaries: close frames on shutdown
            self.ws = ws = WebSocketTunnel(self)
        if leftover:
            down.write(leftover if ws is None else ws.from_server(leftover))
        if down.stash:
            stashed = b"".join(down.stash)
            conn.write(stashed if ws is None else ws.from_client(stashed))
            down.stash = []
            down.stash_size = 0
        down._resume(PAUSE_BUFFER)
        self.idle_timeout = down.settings.tunnel_timeout
        self.last_activity = now = self.loop.time()
        down._arm_at(X_IDLE, now + self.idle_timeout)

    def tunnel_from_downstream(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        conn = self.upstream
        ws = self.ws
        if ws is not None:
            data = ws.from_client(data)
        if conn is not None and data:
            conn.write(data)

    def tunnel_write_upstream(self, data: bytes) -> None:
        conn = self.upstream
        if conn is not None and conn.transport is not None:
            conn.write(data)

    def tunnel_write_downstream(self, data: bytes) -> None:
        if not self.down.closed:
            self.down.write(data)

    def go_away(self, grace: float = GRACE) -> None:
        """End the tunnel now: a WebSocket one with a 1001 close frame to both sides, which
        have `grace` seconds to answer it (net/http_tunnel.py), any other by closing both
        connections."""
        if self.done:
            return
        if self.ws is not None:
            self.ws.go_away(grace)
        else:
            self.end_tunnel()

    def end_tunnel(self) -> None:
        if self.done:
            return
        ws = self.ws
        if ws is not None and ws.timer is not None:
            ws.timer.cancel()
            ws.timer = None
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            conn.exchange = None
            conn.close()
        # says nothing about the server: the latency sample was taken at the 101
        self._release(Outcome.CANCELLED)
        self.down.tunnel = None
        self._finish(False)

    def tunnel_cut(self) -> None:
        """A closing tunnel whose peer stayed inside a frame: abort both connections."""
        if self.done:
            return
        self._drop_upstream()
        self._release(Outcome.CANCELLED)
        self.down.tunnel = None
        self.down.abort()
        self._finish(False)

    # -- timeouts (the connection's timer calls this) ---------------------------------------

    def timed_out(self, kind: int) -> None:
        if self.done:
            return
        if self.tunnel:
            self.go_away()  # timeouts.tunnel: quiet for too long
        elif kind == X_RESPONSE:
            self._upstream_failed(504, "server did not answer in time", Outcome.TIMEOUT)
        elif not self.request_done and not self.response_started:
            # the client stopped sending its body
            self._drop_upstream()
            self._release(Outcome.CANCELLED)
            self.down.closing = True
            self._local_reply(408, message="request body not received in time")
            self._finish(False)
        else:
            self._upstream_failed(504, "server stopped sending", Outcome.TIMEOUT)

    def __repr__(self) -> str:
        return (
            f"Exchange({self.head.method!r} {self.head.target!r} id={self.rid!r} "
            f"server={self.server} attempts={self.attempts} "
            f"request_done={self.request_done} response_started={self.response_started} "
            f"response_done={self.response_done} tunnel={self.tunnel} done={self.done})"
        )
