"""L4 TCP listener: pick a server, connect, and move bytes both ways untouched.

How this works. One `TcpConnection` per accepted connection is the downstream Protocol; an
`_Upstream` Protocol forwards the server's side of events to it. A connection goes through

    PREFACE ──► CONNECTING ──► RELAY ──► CLOSED

- PREFACE (only when needed): with `accept_proxy_protocol` the PROXY v1/v2 header is read and
  stripped (a connection without one is refused) and its source address becomes the client
  address; with `sni_routes` the TLS ClientHello is peeked at (core.sni: nothing is consumed;
  the bytes are forwarded as they came) and its server name picks the backend: exact name, then
  `*.` wildcard; no SNI, no match, no valid ClientHello or no hello within the listener's
  `timeouts.request_head` -> the listener's `backend`, or close when there is none.
- CONNECTING: what the client sends is kept (plain TCP keeps reading, so a client that
  leaves is noticed at once; past CONNECT_BUFFER, and always with TLS, reading pauses).
  `backend.acquire()` picks a server (hash algorithms hash the client IP, or the SNI name with
  `hash_on: sni`), the connect gets the backend's `timeouts.connect`, and a failed connect is
  retried on a different server up to `retries` times. When every server is at
  `max_connections_per_server`, the connection waits in the backend's FIFO queue
  (Backend.wait: at most `max_queue` waiters, each for at most `queue_timeout`); a freed
  slot is handed to the longest waiter, which then connects; one that times out is closed.
  With `proxy_protocol: v1|v2` on the backend the header goes out first, then whatever the
  client already sent.
- RELAY: each side's data_received writes to the other transport. Back-pressure on both legs:
  when a transport's write buffer passes its high-water mark, its protocol's pause_writing()
  pauses reading on the *other* transport; resume_writing() resumes it. Half-close: an EOF
  from one side is passed on with write_eof() (shutdown(SHUT_WR)) and eof_received() returns
  True so the other direction keeps flowing; when both sides have sent EOF, both are closed.
  A reset (connection_lost with an error) on one side aborts the other with SO_LINGER 0, so
  the peer sees a reset too. The idle timeout (backend `timeouts.idle`) is one timer per
  connection, on the listener's timer wheel (net/timers.py: fires up to 25 ms late, and costs
  a dictionary entry where a loop timer handle cost ~6,800 instructions to create and cancel);
  data only stores the time of last activity and the timer re-arms itself lazily when it
  fires early.
  Bulk fast path (Linux, no TLS): once a connection has relayed SPLICE_AFTER bytes and a read
  is large, both sockets are handed to a SpliceRelay (splice(2) through pipes, no copies into
  Python; see its docstring). Small-message streams never switch: per message, splice costs
  more system calls than recv + send.
- CLOSED: when both transports are gone, the Lease is released (held for the whole life of
  the connection, so `least_connections` counts open connections) and one RequestRecord is
  handed to the engine.

Outcomes given to the Lease: OK for a normal end (and for an idle timeout: a quiet client is
no fault of the server), RESET when the server reset the connection, CANCELLED when the
client did, CONNECT_FAILED / TIMEOUT for connect attempts.

Transports: on Linux a plain listener's sockets live on an epoll set of the listener's own
(net/rawsock.py: RawServer accepts, RawConnect connects, RawTransport is what the protocols
see); TLS listeners, and connects to servers given by host name, use the loop's transports.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import fcntl
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Final

from steelyard.core.backend import Backend
from steelyard.core.balancing import HASHING
from steelyard.core.balancing.base import PickContext
from steelyard.core.load import Lease, Outcome
from steelyard.core.proxy_protocol import (
    ParseStatus,
    ProxyHeader,
    encode,
    encode_v1_unknown,
    encode_v2_local,
    parse_header,
)
from steelyard.core.records import RequestRecord
from steelyard.core.sni import HelloStatus, SniTable, parse_client_hello
from steelyard.net.proxy_preface import warn_refused
from steelyard.net.rawsock import SUPPORTED as RAW_SUPPORTED
from steelyard.net.rawsock import RawConnect, RawServer, RawTransport, Reactor, ip_family
from steelyard.net.timers import TimerWheel, WheelTimer

# bound once (compiled: a module attribute is a lookup per use, a Final a C constant)
_perf_counter: Final = time.perf_counter
_wall_time: Final = time.time

log = logging.getLogger("steelyard")

HIGH_WATER: Final = 1024 * 1024  # per transport write buffer before we pause the other side
LOW_WATER: Final = 256 * 1024
# what a client may send while we connect before we stop reading from it
CONNECT_BUFFER: Final = 64 * 1024
# ClientHello (bounded by core.sni) + PROXY v2 header + slack
MAX_PREFACE: Final = 16384 + 4096 + 512
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
_LOCAL_ERRORS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL}
)

# splice(2) fast path (Linux): bytes go socket -> pipe -> socket inside the kernel
SPLICE_SUPPORTED: Final = hasattr(os, "splice") and hasattr(os, "SPLICE_F_MOVE")
SPLICE_CHUNK: Final = 1024 * 1024  # bytes per splice() call, and the pipe size we ask for
SPLICE_ROUNDS: Final = 16
# a connection moves to splice once it has relayed this much: short connections stay on the
# Protocol path (setting up pipes costs more than it saves), bulk ones switch
SPLICE_AFTER = 1024 * 1024
# ...and only on a large read: a stream of small messages (keep-alive request/response) costs
# three splice() calls per message against one recv and one send, so it stays on Protocols
SPLICE_MIN_READ = 64 * 1024
_NEVER: Final = 1 << 62  # splice() rounds per wakeup before yielding to other connections
_F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)
SPLICE_DEFAULT = os.environ.get("STEELYARD_SPLICE", "1") != "0"
# plain (not TLS) listeners accept and connect on an epoll set of their own (net/rawsock.py)
RAW_DEFAULT = os.environ.get("STEELYARD_RAW_TCP", "1") != "0"
_NO_SERVERS: Final[frozenset[str]] = frozenset()


def accepts_raw(tls: object) -> bool:
    """Whether a tcp listener with this TLS setting (config or context; None = plain) accepts
    on its own epoll set, up to 64 connections per event on one socket (net/rawsock.py)."""
    return RAW_SUPPORTED and RAW_DEFAULT and tls is None


# the pick of a first attempt without a hash key: nothing to carry, so one shared context
# (balancers only read it)
_ANY_SERVER: Final = PickContext(None, _NO_SERVERS)


class Phase(enum.Enum):
    PREFACE = "preface"
    CONNECTING = "connecting"
    RELAY = "relay"
    CLOSED = "closed"


# Looking a member up through its Enum class costs ~150 ns on 3.11 (about ten times a global
# look-up), and the relay path does it per chunk and the connection path a dozen times per
# connection: they use these aliases
_PREFACE, _CONNECTING, _RELAY, _CLOSED = Phase.PREFACE, Phase.CONNECTING, Phase.RELAY, Phase.CLOSED
_OK, _CANCELLED, _RESET = Outcome.OK, Outcome.CANCELLED, Outcome.RESET
_TIMEOUT, _CONNECT_FAILED = Outcome.TIMEOUT, Outcome.CONNECT_FAILED


def reset_transport(transport: asyncio.Transport | None) -> None:
    """Abort with SO_LINGER 0: the peer gets a TCP RST, not a FIN."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
    transport.abort()


def _write_eof(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()  # TLS: no half-close; close after the flush


def write_eof_soon(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport) -> None:
    """Pass an EOF on, one loop iteration later.

    The deferral was added for a uvloop 0.23 crash once blamed on write_eof() inside
    eof_received(); the crash was later traced to the cyclic GC freeing a transport whose
    shutdown request was pending (docs/l4.md, "A uvloop hazard the relay avoids"), which the
    relay rules out by keeping every connection referenced until both transports are lost.
    The deferral stays: it is tested on every relay path and costs one callback per EOF."""
    loop.call_soon(_write_eof, transport)


def _address(peer: Any) -> tuple[str, int]:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return "", 0


def _fmt(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class _Upstream(asyncio.Protocol):
    """The server side of one TcpConnection: forwards every event to it."""

    __slots__ = ("conn", "transport")

    def __init__(self, conn: TcpConnection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance checks (and
        # no typing.cast: a function call per connection)
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        n = len(data)
        conn.bytes_out += n
        conn.last_activity = conn.loop.time()
        down = conn.transport
        if down is not None:
            down.write(data)
        if n >= SPLICE_MIN_READ and conn.bytes_in + conn.bytes_out >= conn.splice_at:
            conn.try_splice()

    def eof_received(self) -> bool:
        self.conn.upstream_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_downstream_reading()

    def resume_writing(self) -> None:
        self.conn.resume_downstream_reading()


class _ConnectAttempt:
    """One connect to one server, driven without a Task.

    loop.create_connection() is a coroutine; a Task to run it costs an allocation, a
    registration in the loop's task set and a get_running_loop() (a getpid() system call on
    3.11) per step, and asyncio.timeout() around it costs more. Here the coroutine is stepped
    by hand, as a Task would: send(None) runs it to its next awaited future, whose done-callback
    steps it again; StopIteration carries the (transport, protocol) pair. The connect timeout
    is the connection's one timer (TcpConnection._on_timer, which compares the loop's time with
    `deadline`); timing out or cancelling cancels the awaited future, so the coroutine sees
    CancelledError at its await and cleans up its half-made transport itself.

    On a listener with its own epoll set (net/rawsock.py) a server given by IP address is
    connected by a RawConnect instead, which reports through `_raw_done` on a later loop
    iteration; cancelling or timing out closes its socket and reports CancelledError the same
    way.
    """

    __slots__ = (
        "conn",
        "lease",
        "coro",
        "waiting",
        "raw",
        "deadline",
        "cancelled",
        "timed_out",
        "done",
    )

    def __init__(self, conn: TcpConnection, lease: Lease) -> None:
        self.conn = conn
        self.lease = lease
        self.coro: Any = None
        self.waiting: Any = None  # the future the coroutine awaits
        self.raw: RawConnect | None = None  # instead of the coroutine, on a raw listener
        self.deadline = 0.0  # loop time; 0: no connect timeout
        self.cancelled = False
        self.timed_out = False
        self.done = False

    def start(self) -> None:
        conn = self.conn
        server = self.lease.server.server
        listener = conn.listener
        reactor = listener.reactor
        if reactor is not None:
            host: str = server.host
            family = listener.families.get(host)
            if family is None:
                family = listener.families[host] = ip_family(host)
            if family:  # an IP address: connect in the listener's epoll set
                raw = self.raw = RawConnect(reactor, conn.new_upstream(), self._raw_done)
                raw.start(family, host, server.port)
                return
            # a host name: the loop resolves it (create_connection), and its transport
            # relays beside the raw one of the client
        loop = conn.loop
        try:
            self.coro = loop.create_connection(conn.new_upstream, server.host, server.port)
        except Exception as exc:
            self._finish(None, exc)
            return
        self._step(None)

    def _step(self, _arg: Any) -> None:
        if self.done:
            return
        self.waiting = None
        try:
            if _arg is None and (self.cancelled or self.timed_out):
                # interrupted after a bare yield: there is no future to cancel
                fut = self.coro.throw(asyncio.CancelledError())
            else:
                fut = self.coro.send(None)
        except StopIteration as stop:
            transport, upstream = stop.value
            self._finish((transport, upstream), None)
            return
        except BaseException as exc:  # OSError, CancelledError (timeout, cancel), bugs
            self._finish(None, exc)
            return
        if fut is None:  # a bare yield: run again on the next loop iteration
            self.conn.loop.call_soon(self._step, None)
            return
        self.waiting = fut
        fut.add_done_callback(self._step)
        if self.cancelled:
            fut.cancel()

    def _raw_done(self, transport: RawTransport | None, exc: BaseException | None) -> None:
        self.raw = None  # (it holds this method: no cycle left behind)
        if self.done:
            return
        if transport is not None:
            self._finish((transport, transport.protocol), None)
        else:
            self._finish(None, exc)

    def time_out(self) -> None:
        self.timed_out = True
        self._interrupt()

    def cancel(self) -> None:
        self.cancelled = True
        self._interrupt()

    def _interrupt(self) -> None:
        raw = self.raw
        if raw is not None:
            raw.cancel()  # done() follows on a later iteration, with CancelledError
            return
        fut = self.waiting
        if fut is not None and not self.done:
            fut.cancel()  # its done-callback steps the coroutine into CancelledError

    def _finish(self, pair: tuple[Any, Any] | None, exc: BaseException | None) -> None:
        self.done = True
        self.waiting = None
        if pair is not None:
            self.conn.connect_finished(self, pair[0], pair[1], None)
            return
        if isinstance(exc, asyncio.CancelledError) and self.timed_out and not self.cancelled:
            exc = TimeoutError("connect timed out")
        self.conn.connect_finished(self, None, None, exc)

    def __repr__(self) -> str:
        state = "done" if self.done else "cancelled" if self.cancelled else "connecting"
        return f"_ConnectAttempt({self.lease.server.name} {state})"


class _BackendProfile:
    """What a connection reads from its backend's config, read once per backend object (a
    reload builds new Backend objects; attribute reads on the config models cost more than
    plain ones)."""

    __slots__ = (
        "backend",
        "retries",
        "timeouts",
        "connect_timeout",
        "idle_timeout",
        "hashing",
        "hash_on_sni",
        "proxy_protocol",
    )

    def __init__(self, backend: Any) -> None:
        cfg = backend.config
        self.backend = backend
        self.retries: int = getattr(cfg, "retries", 0) if cfg is not None else 0
        timeouts = getattr(cfg, "timeouts", None)
        self.timeouts = timeouts is not None
        self.connect_timeout: float = timeouts.connect if timeouts is not None else 5.0
        self.idle_timeout: float = timeouts.idle if timeouts is not None else 0.0
        self.hashing = backend.settings.algorithm in HASHING
        self.hash_on_sni = getattr(cfg, "hash_on", "client_ip") == "sni"
        self.proxy_protocol: str | None = getattr(cfg, "proxy_protocol", None)


class TcpConnection(asyncio.Protocol):
    """One downstream connection and its upstream leg (see the module docstring)."""

    __slots__ = (
        "listener",
        "loop",
        "transport",
        "upstream",
        "up_transport",
        "phase",
        "buffer",
        "need_proxy",
        "proxied",
        "client_ip",
        "client_port",
        "local_ip",
        "local_port",
        "server_name",
        "backend_name",
        "lease",
        "record",
        "started",
        "bytes_in",
        "bytes_out",
        "last_activity",
        "idle_timeout",
        "wheel",
        "timer",
        "timer_due",
        "connector",
        "waiter",
        "backend",
        "retries",
        "attempts",
        "tried",
        "connect_timeout",
        "hash_key",
        "down_eof",
        "up_eof",
        "down_lost",
        "up_lost",
        "outcome",
        "reading_paused",
        "splice",
        "splice_at",
    )

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.up_transport: asyncio.Transport | None = None
        self.phase = _PREFACE
        self.buffer = bytearray()
        self.need_proxy = False
        self.proxied: ProxyHeader | None = None  # read by net/proxy_preface.py (TLS listeners)
        self.client_ip = ""
        self.client_port = 0
        self.local_ip = ""
        self.local_port = 0
        self.server_name: str | None = None
        self.backend_name: str | None = None
        self.lease: Lease | None = None
        self.record: RequestRecord | None = None
        self.started = 0.0  # time.perf_counter() at accept
        self.bytes_in = 0
        self.bytes_out = 0
        self.last_activity = 0.0
        self.idle_timeout = 0.0
        self.wheel = listener.wheel
        self.timer: WheelTimer | None = None
        self.timer_due = 0.0  # loop time at which `timer` fires, when it runs _on_timer
        self.connector: _ConnectAttempt | None = None
        self.waiter: Any = None  # a Backend Waiter while queued at max_connections_per_server
        self.backend: Any = None
        self.retries = 0
        self.attempts = 0
        self.tried = _NO_SERVERS
        self.connect_timeout = 5.0
        self.hash_key: bytes | None = None
        self.down_eof = False
        self.up_eof = False
        self.down_lost = False
        self.up_lost = True  # no upstream yet
        self.outcome = _OK
        self.reading_paused = False
        self.splice: SpliceRelay | None = None
        self.splice_at = _NEVER  # relayed byte count at which to try the splice path

    # -- downstream events ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance checks
        self.transport = transport  # type: ignore[assignment]
        listener = self.listener
        # the logged duration: perf_counter, as uvloop's loop.time() moves in whole ms
        self.started = _perf_counter()
        self.last_activity = self.loop.time()  # timers stay on the loop's clock
        peer = transport.get_extra_info("peername")
        if type(peer) is tuple:  # (ip, port) or (ip, port, flow, scope); anything else: ""
            self.client_ip, self.client_port = peer[0], peer[1]
        self.record = RequestRecord(listener.name, "", _wall_time())
        listener.connections.add(self)
        if listener.closing:
            self.close()
            return
        # positional: (high, low); keywords cost a dictionary per call
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
        cfg = listener.config
        if self.proxied is not None:  # a TLS listener: the header came before the handshake
            self._use_proxy_header(self.proxied)
        else:
            self.need_proxy = bool(cfg.accept_proxy_protocol)
        if self.need_proxy or listener.sni is not None:
            self.timer = self.wheel.call_later(listener.preface_timeout, self._preface_timeout)
            return
        self._connect(cfg.backend)

    def data_received(self, data: bytes) -> None:
        n = len(data)
        self.bytes_in += n
        if self.phase is _RELAY:
            self.last_activity = self.loop.time()
            up = self.up_transport
            if up is not None:
                up.write(data)
            if n >= SPLICE_MIN_READ and self.bytes_in + self.bytes_out >= self.splice_at:
                self.try_splice()
            return
        if self.phase is _CLOSED:
            return
        self.buffer += data
        if self.phase is _PREFACE:
            self._preface()
        elif len(self.buffer) >= CONNECT_BUFFER or self.listener.ssl_context is not None:
            # CONNECTING: what the client sends (usually its first request) is kept until the
            # server is there, up to CONNECT_BUFFER. Plain TCP keeps reading meanwhile, so a
            # client that resets or goes away is noticed at once and the connect is cancelled.
            # TLS pauses (a close_notify would end the connection before its data was passed
            # on), and pauses again here: uvloop may undo a pause made in connection_made
            self._pause_connecting()

    def eof_received(self) -> bool:
        self.down_eof = True
        keep_open = self.listener.ssl_context is None  # TLS has no half-close
        if self.phase is _RELAY:
            if self.up_eof:  # both sides are done: close (a FIN follows), no write_eof first
                self._close_both()
            else:
                up = self.up_transport
                if up is not None and not up.is_closing():
                    write_eof_soon(self.loop, up)
        elif self.phase is _PREFACE:
            # the client said all it will say: decide with what we have
            self._preface(final=True)
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        if self.splice is not None:
            return  # the transport was detached: the splice relay owns the socket now
        self.down_lost = True
        self.transport_gone()
        if self.phase is _CONNECTING:
            if self.connector is not None:
                self.connector.cancel()
            elif self.waiter is not None:
                self._stop_waiting()
        if exc is not None:
            if self.outcome is _OK:
                self.outcome = _CANCELLED
            reset_transport(self.up_transport)
        elif self.up_transport is not None and not self.up_transport.is_closing():
            self.up_transport.close()  # flushes what is still buffered for the server
        self._maybe_finish()

    def pause_writing(self) -> None:
        # the client is slow: stop reading from the server
        up = self.up_transport
        if up is not None and not up.is_closing():
            up.pause_reading()

    def resume_writing(self) -> None:
        up = self.up_transport
        if up is not None and not up.is_closing():
            up.resume_reading()

    # -- upstream events (from _Upstream) ----------------------------------------------------

    def upstream_eof(self) -> None:
        if self.splice is not None:
            return
        self.up_eof = True
        if self.down_eof:  # both sides are done: close, no write_eof first
            self._close_both()
            return
        down = self.transport
        if down is not None and not down.is_closing():
            write_eof_soon(self.loop, down)

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.splice is not None:
            return
        self.up_lost = True
        if exc is not None:
            if self.outcome is _OK:
                self.outcome = _RESET
            reset_transport(self.transport)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._maybe_finish()

    def pause_downstream_reading(self) -> None:
        down = self.transport
        if down is not None and not down.is_closing() and not self.reading_paused:
            self.reading_paused = True
            down.pause_reading()

    def resume_downstream_reading(self) -> None:
        down = self.transport
        if down is not None and not down.is_closing() and self.reading_paused:
            self.reading_paused = False
            down.resume_reading()

    # -- preface -------------------------------------------------------------------------------

    def _preface(self, final: bool = False) -> None:
        listener = self.listener
        if self.need_proxy:
            result = parse_header(bytes(self.buffer))
            if result.status is ParseStatus.INCOMPLETE and not final:
                return
            if result.status is not ParseStatus.OK or result.header is None:
                why = result.reason or "incomplete"
                warn_refused(listener.name, self.client_ip, f"no PROXY header ({why})")
                self.outcome = _CANCELLED
                self.close()
                return
            self._use_proxy_header(result.header)
            del self.buffer[: result.consumed]
            self.need_proxy = False
        sni = listener.sni
        backend = listener.config.backend
        if sni is not None:
            if not self.buffer and not final:
                return
            hello = parse_client_hello(bytes(self.buffer))
            if (
                hello.status is HelloStatus.INCOMPLETE
                and not final
                and len(self.buffer) <= MAX_PREFACE
            ):
                return
            if hello.status is HelloStatus.OK:
                self.server_name = hello.server_name
                backend = sni.lookup(hello.server_name) or backend
        self._connect(backend)

    def _use_proxy_header(self, header: ProxyHeader) -> None:
        client = header.client
        if client is not None:
            self.client_ip, self.client_port = client
            if header.destination is not None:
                self.local_ip = header.destination
                self.local_port = header.destination_port

    def _preface_timeout(self) -> None:
        self.timer = None
        if self.phase is not _PREFACE:
            return
        if self.need_proxy:
            warn_refused(self.listener.name, self.client_ip, "no PROXY header in time")
            self.outcome = _CANCELLED
            self.close()
            return
        self._preface(final=True)

    # -- connecting ----------------------------------------------------------------------------

    def _connect(self, backend_name: str | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if backend_name is None:
            self.close()
            return
        self.backend_name = backend_name
        self.phase = _CONNECTING
        if len(self.buffer) >= CONNECT_BUFFER or self.listener.ssl_context is not None:
            self._pause_connecting()
        listener = self.listener
        # typed: the engine is Any, and a method of an Any is a generic call
        backends: dict[str, Backend] = listener.engine.backends
        backend = backends.get(backend_name)
        if backend is None:
            log.warning("%s: unknown backend %s", listener.name, backend_name)
            self._connect_failed()
            return
        self.backend = backend
        profile = listener.profiles.get(backend_name)
        if profile is None or profile.backend is not backend:
            profile = listener.profiles[backend_name] = _BackendProfile(backend)
        self.retries = profile.retries
        if profile.timeouts:
            self.connect_timeout = profile.connect_timeout
            self.idle_timeout = profile.idle_timeout
        if profile.hashing:
            if profile.hash_on_sni and self.server_name:
                self.hash_key = self.server_name.encode("ascii")
            else:
                self.hash_key = self.client_ip.encode("ascii")
        record = self.record
        assert record is not None
        record.backend = backend_name
        self._attempt()

    def _pause_connecting(self) -> None:
        self.reading_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def _attempt(self) -> None:
        """Pick a server (not one that failed already) and start connecting to it."""
        ctx = _ANY_SERVER if self.hash_key is None and not self.tried else None
        if ctx is None:
            ctx = PickContext(self.hash_key, self.tried)
        backend: Backend = self.backend  # (typed: acquire() is then a native call)
        lease = backend.acquire(ctx)
        if lease is None:
            if backend.max_connections_per_server and self._wait_for_slot(ctx):
                return
            log.info(
                "%s: no server of %s could take the connection",
                self.listener.name,
                self.backend_name,
            )
            self._connect_failed()
            return
        self._connect_to(lease)

    def _connect_to(self, lease: Lease) -> None:
        if self.attempts:
            assert self.record is not None
            self.record.retries = self.attempts
        self.attempts += 1
        attempt = _ConnectAttempt(self, lease)
        self.connector = attempt
        timeout = self.connect_timeout
        if timeout > 0:
            attempt.deadline = self.loop.time() + timeout
            if self.timer is None:
                self.timer = self.wheel.call_later(timeout, self._on_timer)
                self.timer_due = attempt.deadline
            # else: the timer of an attempt that failed already, due before this deadline;
            # _on_timer moves it on
        attempt.start()

    # -- the connection-cap queue (Backend.wait; see docs/health.md) ----------------------------

    def _wait_for_slot(self, ctx: PickContext) -> bool:
        """Every server is at max_connections_per_server: queue for a slot, for at most the
        backend's queue_timeout. False: do not wait (nothing eligible, or the queue is full)."""
        waiter = self.backend.wait(ctx, self._slot_delivered)
        if waiter is None:
            return False
        self.waiter = waiter
        if self.timer is not None:  # a failed attempt's connect timer
            self.timer.cancel()
        timeout = float(getattr(self.backend, "queue_timeout", 5.0))
        self.timer = self.wheel.call_later(timeout, self._slot_timeout)
        return True

    def _slot_delivered(self, lease: Lease | None) -> bool:
        # called synchronously from another connection's lease release (or a snapshot
        # install): take the lease, and connect on a callback of our own
        if self.waiter is None or self.down_lost or self.record is None:
            return False  # gone meanwhile: the backend takes the lease back
        self.waiter = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.loop.call_soon(self._slot_ready, lease)
        return True

    def _slot_ready(self, lease: Lease | None) -> None:
        if self.down_lost or self.phase is not _CONNECTING:
            if lease is not None:
                lease.release(_CANCELLED)
            self._maybe_finish()
            return
        if lease is None:  # nothing is eligible any more
            log.info("%s: no server of %s is eligible", self.listener.name, self.backend_name)
            self._connect_failed()
            return
        # a reload may have moved the queue to the backend's successor: go on with it
        self.backend = lease.owner
        self._connect_to(lease)

    def _slot_timeout(self) -> None:
        self.timer = None
        waiter = self.waiter
        if waiter is None:
            return
        self.waiter = None
        waiter.cancel()
        log.info(
            "%s: every server of %s is at its connection limit",
            self.listener.name,
            self.backend_name,
        )
        self._connect_failed()

    def _stop_waiting(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter.cancel()
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def new_upstream(self) -> _Upstream:
        return _Upstream(self)

    def connect_finished(
        self, attempt: _ConnectAttempt, transport: Any, upstream: Any, exc: BaseException | None
    ) -> None:
        """The end of a connect attempt (from _ConnectAttempt)."""
        if self.connector is attempt:
            self.connector = None
        lease = attempt.lease
        if exc is None:
            if attempt.cancelled or self.down_lost or self.phase is _CLOSED:
                lease.release(_CANCELLED)
                transport.close()
                self._connect_failed()
                return
            try:
                self._start_relay(lease, transport, upstream)
            except Exception:  # a bug half-way into the relay: do not leave it hanging
                log.exception("%s: starting the relay failed", self.listener.name)
                self.abort()
            return
        if attempt.cancelled:
            lease.release(_CANCELLED)
            self._connect_failed()
            return
        listener = self.listener
        if not isinstance(exc, OSError):
            log.error("%s: connecting failed", listener.name, exc_info=exc)
            lease.release(_CANCELLED)
            self._connect_failed()
            return
        if exc.errno in _LOCAL_ERRORS:
            # out of descriptors, buffers or local ports: not the server's failure
            log.warning("%s: cannot open an upstream socket: %s", listener.name, exc)
            lease.release(_CANCELLED)
            self._connect_failed()
            return
        timed_out = isinstance(exc, TimeoutError)
        lease.release(_TIMEOUT if timed_out else _CONNECT_FAILED)
        server = lease.server.server
        log.info(
            "%s: connect to %s/%s failed: %s",
            listener.name,
            self.backend_name,
            server.name,
            "timeout" if timed_out else exc,
        )
        self.tried = self.tried | {server.name}
        if self.attempts <= self.retries and not self.down_lost:
            self._attempt()
            return
        log.info("%s: no server of %s could take the connection", listener.name, self.backend_name)
        self._connect_failed()

    def _connect_failed(self) -> None:
        """No server took it (or the client left while we were connecting)."""
        self.phase = _CLOSED
        self._close_both()
        self._maybe_finish()

    def _start_relay(self, lease: Lease, transport: Any, upstream: Any) -> None:
        self.lease = lease
        owner = lease.owner
        if isinstance(owner, Backend):
            owner.observe_latency(lease)  # the connect time is the server's latency sample
        self.upstream = upstream
        self.up_transport = transport
        self.up_lost = False
        self.phase = _RELAY
        record = self.record
        assert record is not None
        record.server = lease.server.name
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        backend = self.backend
        profile = self.listener.profiles.get(self.backend_name or "")
        if profile is None or profile.backend is not backend:  # e.g. queued across a reload
            profile = _BackendProfile(backend)
        version = profile.proxy_protocol
        if version:
            if not self.local_ip and self.transport is not None:
                # fetched only when needed: it costs a getsockname() per connection
                self.local_ip, self.local_port = _address(self.transport.get_extra_info("sockname"))
            try:
                header = encode(
                    version, self.client_ip, self.client_port, self.local_ip, self.local_port
                )
            except ValueError:  # no IP addresses to tell (should not happen on TCP)
                header = encode_v1_unknown() if version == "v1" else encode_v2_local()
            transport.write(header)
        if self.buffer:
            transport.write(bytes(self.buffer))
            self.buffer = bytearray()
        if self.down_eof:
            write_eof_soon(self.loop, transport)
        now = self.last_activity = self.loop.time()
        # the connect timer goes on as the idle timer (one timer per connection, see _on_timer)
        idle = self.idle_timeout
        timer = self.timer
        if idle > 0:
            if timer is None or self.timer_due > now + idle:
                if timer is not None:
                    timer.cancel()
                self.timer = self.wheel.call_later(idle, self._on_timer)
                self.timer_due = now + idle
        elif timer is not None:
            timer.cancel()
            self.timer = None
        if self.listener.use_splice:
            self.splice_at = self.bytes_in + self.bytes_out + SPLICE_AFTER
        if self.reading_paused and not self.down_eof:
            self.resume_downstream_reading()

    def try_splice(self) -> None:
        if self.phase is not _RELAY or self.splice is not None or self._start_splice():
            self.splice_at = _NEVER
        else:
            self.splice_at += SPLICE_AFTER // 8  # something was buffered: try again soon

    def _start_splice(self) -> bool:
        """Hand both sockets to a SpliceRelay when nothing is buffered in either transport."""
        down, up = self.transport, self.up_transport
        if down is None or up is None or self.down_eof or self.up_eof:
            return False
        if down.is_closing() or up.is_closing():
            return False
        if down.get_write_buffer_size() or up.get_write_buffer_size():
            return False  # e.g. a server greeting still on its way: stay on the Protocol path
        down_sock = down.get_extra_info("socket")
        up_sock = up.get_extra_info("socket")
        if down_sock is None or up_sock is None:
            return False
        try:
            relay = SpliceRelay(self, os.dup(down_sock.fileno()), os.dup(up_sock.fileno()))
        except OSError as exc:
            log.debug("%s: splice unavailable: %s", self.listener.name, exc)
            return False
        self.splice = relay
        self.listener.spliced_total += 1
        down.abort()  # closes the transports' descriptors; our duplicates keep the sockets
        up.abort()
        relay.start()
        return True

    def splice_finished(self, outcome: Outcome) -> None:
        if self.outcome is _OK:
            self.outcome = outcome
        self.down_lost = self.up_lost = True
        self._maybe_finish()

    # -- timers and closing --------------------------------------------------------------------

    def _on_timer(self) -> None:
        """The connection's one timer from its first connect on: the connect timeout while
        connecting, then the idle timeout. It is armed once and moved on lazily: a timer that
        fires before what it guards is due re-arms itself for the rest (activity only stores a
        time stamp), which costs less than a cancel and a new handle per change of phase."""
        self.timer = None
        now = self.loop.time()
        phase = self.phase
        if phase is _RELAY:
            idle = self.idle_timeout
            if idle <= 0:
                return
            quiet = now - self.last_activity
            if quiet >= idle:
                log.debug("%s: idle timeout after %.1fs", self.listener.name, quiet)
                self._close_both()
                return
            self._rearm(idle - quiet, now)
        elif phase is _CONNECTING:
            attempt = self.connector
            if attempt is None or attempt.deadline <= 0:
                return
            left = attempt.deadline - now
            if left > 0.001:  # the timer of an earlier attempt
                self._rearm(left, now)
                return
            attempt.time_out()

    def _rearm(self, delay: float, now: float) -> None:
        self.timer = self.wheel.call_later(delay, self._on_timer)
        self.timer_due = now + delay

    def _close_both(self) -> None:
        if self.splice is not None:
            self.splice.close(_OK)
            return
        for tr in (self.transport, self.up_transport):
            if tr is not None and not tr.is_closing():
                tr.close()

    def close(self) -> None:
        """Close both sides gracefully (what is buffered is still sent)."""
        if self.connector is not None:
            self.connector.cancel()
            self.connector = None
        self._stop_waiting()
        self._close_both()
        if self.phase is not _RELAY:
            self.phase = _CLOSED
            self._maybe_finish()

    def abort(self) -> None:
        """Cut both sides now (drain timeout, shutdown timeout)."""
        if self.connector is not None:
            self.connector.cancel()
            self.connector = None
        self._stop_waiting()
        if self.splice is not None:
            self.splice.close(_CANCELLED)
            return
        for tr in (self.transport, self.up_transport):
            if tr is not None:
                tr.abort()
        if self.phase is not _RELAY:
            self.phase = _CLOSED
            self._maybe_finish()

    def transport_gone(self) -> None:
        if self.phase is _PREFACE and self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _maybe_finish(self) -> None:
        if not (self.down_lost and self.up_lost):
            return
        if self.connector is not None:
            return  # the connect attempt finishes (and calls close) once cancelled
        if self.record is None:
            return  # finished already
        if self.waiter is not None:
            self._stop_waiting()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.phase = _CLOSED
        if self.lease is not None:
            self.lease.release(self.outcome)
        record = self.record
        self.record = None
        if self.listener.recorders:  # the client's text only for those who read it
            record.client = _fmt(self.client_ip, self.client_port)
            record.duration = _perf_counter() - self.started
        record.bytes_in = self.bytes_in
        record.bytes_out = self.bytes_out
        # break the protocol <-> transport cycles (uvloop keeps a closed transport's protocol):
        # reference counting frees the pair now, not the cyclic GC later
        self.transport = self.up_transport = None
        upstream = self.upstream
        if upstream is not None:
            upstream.transport = None
            self.upstream = None
        self.listener.finished(self, record)

    def __repr__(self) -> str:
        server = self.lease.server.name if self.lease is not None else None
        return (
            f"TcpConnection({_fmt(self.client_ip, self.client_port)} {self.phase.value} "
            f"backend={self.backend_name} server={server} in={self.bytes_in} "
            f"out={self.bytes_out} eof={self.down_eof}/{self.up_eof})"
        )


class _Leg:
    """One direction of a SpliceRelay: src socket -> pipe -> dst socket."""

    __slots__ = ("src", "dst", "rfd", "wfd", "pending", "eof", "waiting_write", "upstream_src")

    def __init__(self, src: int, dst: int, upstream_src: bool) -> None:
        self.src = src
        self.dst = dst
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.wfd, _F_SETPIPE_SZ, SPLICE_CHUNK)
        except OSError:
            pass  # the default (64 KiB) pipe works, just with more calls
        self.pending = 0  # bytes sitting in the pipe
        self.eof = False
        self.waiting_write = False
        self.upstream_src = upstream_src  # True: server -> client

    def close(self) -> None:
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass


class SpliceRelay:
    """Zero-copy relay of an established connection pair with splice(2) through pipes.

    Each direction moves bytes socket -> pipe -> socket without copying them into Python.
    Back-pressure: when the destination socket is full, the leg stops watching its source
    (remove_reader) and waits for the destination to become writable (add_writer).
    Half-close: a source EOF becomes shutdown(SHUT_WR) on the destination once the pipe is
    empty; both EOFs close the pair. A reset on either side resets the other (SO_LINGER 0).
    """

    __slots__ = ("conn", "loop", "down", "up", "legs", "closed")

    def __init__(self, conn: TcpConnection, down_fd: int, up_fd: int) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.down = down_fd
        self.up = up_fd
        self.closed = False
        legs: list[_Leg] = []
        try:
            legs.append(_Leg(down_fd, up_fd, upstream_src=False))
            legs.append(_Leg(up_fd, down_fd, upstream_src=True))
        except OSError:
            for leg in legs:
                leg.close()
            os.close(down_fd)
            os.close(up_fd)
            raise
        self.legs = legs

    def start(self) -> None:
        for leg in self.legs:
            self.loop.add_reader(leg.src, self._readable, leg)

    def _readable(self, leg: _Leg) -> None:
        self._pump(leg)

    def _writable(self, leg: _Leg) -> None:
        self._pump(leg)

    def _pump(self, leg: _Leg) -> None:
        if self.closed:
            return
        conn = self.conn
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        moved = 0
        failed_side: bool | None = None  # True: the server's socket failed, False: client's
        try:
            for _ in range(SPLICE_ROUNDS):
                if leg.pending == 0 and not leg.eof:
                    try:
                        n = os.splice(leg.src, leg.wfd, SPLICE_CHUNK, flags=flags)
                    except BlockingIOError:
                        break
                    except OSError:
                        failed_side = leg.upstream_src
                        raise
                    if n == 0:
                        leg.eof = True
                    leg.pending = n
                if leg.pending:
                    try:
                        m = os.splice(leg.rfd, leg.dst, leg.pending, flags=flags)
                    except BlockingIOError:
                        m = 0
                    except OSError:
                        failed_side = not leg.upstream_src
                        raise
                    if m == 0:
                        self._wait_writable(leg)
                        return
                    leg.pending -= m
                    moved += m
                if leg.eof and leg.pending == 0:
                    break
        except OSError as exc:
            if failed_side is None:
                raise
            log.debug(
                "splice relay: %s side failed: %s", "server" if failed_side else "client", exc
            )
            # whoever failed, the peer on the other side must see a reset too
            self.close(_RESET if failed_side else _CANCELLED, reset=True)
            return
        finally:
            if moved:
                if leg.upstream_src:
                    conn.bytes_out += moved
                else:
                    conn.bytes_in += moved
                conn.last_activity = self.loop.time()
        if leg.waiting_write:
            leg.waiting_write = False
            self.loop.remove_writer(leg.dst)
            if not leg.eof:
                self.loop.add_reader(leg.src, self._readable, leg)
        if leg.eof and leg.pending == 0:
            self._leg_done(leg)

    def _wait_writable(self, leg: _Leg) -> None:
        if not leg.waiting_write:
            leg.waiting_write = True
            self.loop.remove_reader(leg.src)
            self.loop.add_writer(leg.dst, self._writable, leg)

    def _leg_done(self, leg: _Leg) -> None:
        self.loop.remove_reader(leg.src)
        try:
            socket_shutdown(leg.dst)
        except OSError:
            pass
        if all(lg.eof and lg.pending == 0 for lg in self.legs):
            self.close(_OK)

    def close(self, outcome: Outcome, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for leg in self.legs:
            self.loop.remove_reader(leg.src)
            if leg.waiting_write:
                self.loop.remove_writer(leg.dst)
            leg.close()
        for fd in (self.down, self.up):
            if reset:
                try:
                    with socket.socket(fileno=os.dup(fd)) as s:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                except OSError:
                    pass
            try:
                os.close(fd)
            except OSError:
                pass
        self.conn.splice_finished(outcome)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        legs = ", ".join(f"pending={lg.pending} eof={lg.eof}" for lg in self.legs)
        return f"SpliceRelay({state}: {legs})"


def socket_shutdown(fd: int) -> None:
    """shutdown(fd, SHUT_WR) on a raw descriptor (without taking ownership of it)."""
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_WR)
    finally:
        sock.detach()


class TcpListener:
    """The runtime of one `protocol: tcp` listener (created and driven by the Engine)."""

    def __init__(self, engine: Any, listener_config: Any) -> None:
        self.engine = engine
        self.loop: asyncio.AbstractEventLoop = engine.loop
        self.recorders: list[Callable[[RequestRecord], None]] = engine.recorders
        self.name: str = listener_config.name
        self.ssl_context: Any = None  # set by the engine when the listener terminates TLS
        self.connections: set[TcpConnection] = set()
        self.closing = False
        self.connections_total = 0
        self.spliced_total = 0  # connections handed to the splice fast path
        self._empty: asyncio.Event | None = None
        self.config: Any = listener_config
        self.sni: SniTable | None = None
        self.preface_timeout = 10.0
        # backend name -> what its connections read from its config (rebuilt when the
        # engine's Backend object under that name changes)
        self.profiles: dict[str, _BackendProfile] = {}
        # the splice fast path: plain TCP on both legs (TLS termination needs the bytes)
        self.use_splice = SPLICE_SUPPORTED and SPLICE_DEFAULT
        # the epoll set of a plain listener (serve_raw); None: the loop's own transports
        self.reactor: Reactor | None = None
        self.families: dict[str, int] = {}  # server host -> address family (0: a name)
        self.wheel = TimerWheel(self.loop)  # the connections' timers (net/timers.py)
        self.update(listener_config)

    def update(self, cfg: Any) -> None:
        """Reload: new connections use the new config; open ones carry on untouched.
        Certificate files are read again: new handshakes get them, connections stay."""
        self.config = cfg
        self.profiles = {}  # the reload may have rebuilt backends: read their configs again
        tls = getattr(cfg, "tls", None)
        if tls is not None:
            self.use_splice = False
            if self.ssl_context is not None:  # None on the first call, from __init__
                # imported here: plain L4 listeners need neither ssl nor cryptography
                from steelyard.net.tls import TLSConfigError, reload_certificates

                try:
                    reload_certificates(self.ssl_context, tls)
                except TLSConfigError as exc:
                    log.error("listener %s keeps its certificates: %s", cfg.name, exc)
        routes = getattr(cfg, "sni_routes", ()) or ()
        self.sni = SniTable((r.server_name, r.backend) for r in routes) if routes else None
        timeouts = getattr(cfg, "timeouts", None)
        self.preface_timeout = getattr(timeouts, "request_head", 10.0) or 10.0

    def serve_raw(self, sock: socket.socket) -> RawServer | None:
        """Accept on `sock` in an epoll set of this listener's own (net/rawsock.py), when
        the listener is plain TCP on Linux; None: the engine uses loop.create_server()."""
        if not accepts_raw(self.ssl_context):
            return None
        if self.reactor is None:
            self.reactor = Reactor(self.loop)
        return RawServer(self.reactor, sock, self.protocol_factory)

    @property
    def connections_active(self) -> int:
        """Open downstream connections (the `steelyard_connections_active` gauge)."""
        return len(self.connections)

    def protocol_factory(self) -> asyncio.Protocol:
        self.connections_total += 1
        return TcpConnection(self)

    def finished(self, conn: TcpConnection, record: RequestRecord) -> None:
        self.connections.discard(conn)
        if self.recorders:  # (none with `access: off` and no admin API)
            try:
                self.engine.record(record)
            except Exception:  # a broken recorder must not break the data path
                log.exception("recording a connection failed")
        if not self.connections and self._empty is not None:
            self._empty.set()

    def begin_shutdown(self) -> None:
        """Stop new work: connections still reading their preface are closed."""
        self.closing = True
        for conn in list(self.connections):
            if conn.phase is _PREFACE:
                conn.close()

    async def wait_closed(self, timeout: float | None) -> None:
        """Let open connections finish for up to `timeout` seconds, then cut them."""
        if self.connections:
            self._empty = asyncio.Event()
            try:
                async with asyncio.timeout(timeout):
                    await self._empty.wait()
            except TimeoutError:
                pass
        for conn in list(self.connections):
            conn.abort()
        # give aborted transports a turn of the loop to report connection_lost
        for _ in range(3):
            if not self.connections:
                break
            await asyncio.sleep(0)
        if self.reactor is not None and self.closing:
            self.reactor.close()  # every socket in it is closed by now

    def close_server(self, backend_name: str, state: Any) -> None:
        """A server's drain timed out: cut what still runs on it."""
        for conn in list(self.connections):
            lease = conn.lease
            if conn.backend_name == backend_name and lease is not None and lease.server is state:
                conn.abort()

    def __repr__(self) -> str:
        return (
            f"TcpListener({self.name} open={len(self.connections)} "
            f"total={self.connections_total} spliced={self.spliced_total} "
            f"closing={self.closing})"
        )
