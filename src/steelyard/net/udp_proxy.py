"""L4 UDP listener: a session per client address, datagrams relayed to one server and back.

How this works. The listening socket is one datagram endpoint (the engine creates it with
`protocol_factory`). The first datagram from a client address opens a `UdpSession`: the
backend picks a server (hash algorithms hash the client IP, so a client stays on one server),
a Lease is taken for the life of the session (`least_connections` counts sessions), and a
connected, non-blocking UDP socket to that server is opened and watched with
`loop.add_reader`. Datagrams from the client go out on that socket; whatever the server sends
back on it is returned to that client from the listening socket, so the client sees the
address it talked to. A connected socket only receives from its server, which is what keeps
replies with the right client.

Sessions live in an OrderedDict in least-recently-used order (client datagrams move a session
to the end). The table is bounded (`max_sessions`): a new client evicts the least recently
used session. A session ends after `session_idle_timeout` without traffic in either
direction (one call_later handle per session, re-armed lazily from the last-activity time),
when its server's drain times out, or when the server refuses (ICMP port unreachable shows up
as ECONNREFUSED on the connected socket: the Lease is released as CONNECT_FAILED and the next
datagram picks again). One RequestRecord per session.

Shutdown: new clients are ignored at once; sessions end when they have been quiet for
`SHUTDOWN_QUIET` seconds, and whatever is left at the deadline is closed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections import OrderedDict
from typing import Any, Final, cast

from steelyard.core.balancing import HASHING
from steelyard.core.balancing.base import PickContext
from steelyard.core.load import Lease, Outcome
from steelyard.core.records import RequestRecord

log = logging.getLogger("steelyard")

MAX_DATAGRAM: Final = 65535
_LOCAL_ERRORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
READS_PER_WAKEUP: Final = 64  # datagrams read from one server socket before yielding
SHUTDOWN_QUIET: Final = 1.0

Address = tuple[Any, ...]


def _fmt(addr: Address) -> str:
    host, port = str(addr[0]), int(addr[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class UdpSession:
    """One client address talking to one server through one connected socket."""

    __slots__ = (
        "listener",
        "client",
        "sock",
        "fd",
        "lease",
        "record",
        "started",
        "last_activity",
        "timer",
        "bytes_in",
        "bytes_out",
        "closed",
        "backend_name",
    )

    def __init__(
        self,
        listener: UdpListener,
        client: Address,
        sock: socket.socket,
        lease: Lease,
        backend_name: str,
        record: RequestRecord,
    ) -> None:
        self.listener = listener
        self.client = client
        self.sock = sock
        self.fd = sock.fileno()
        self.lease = lease
        self.backend_name = backend_name
        self.record = record
        # the logged duration: perf_counter, as uvloop's loop.time() moves in whole ms;
        # the idle timer stays on the loop's clock
        self.started = time.perf_counter()
        self.last_activity = listener.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.closed = False
        listener.loop.add_reader(self.fd, self._readable)
        self._arm(listener.idle_timeout)

    def _arm(self, delay: float) -> None:
        if delay > 0:
            self.timer = self.listener.loop.call_later(delay, self._idle_check)

    def _idle_check(self) -> None:
        self.timer = None
        if self.closed:
            return
        listener = self.listener
        limit = SHUTDOWN_QUIET if listener.closing else listener.idle_timeout
        quiet = listener.loop.time() - self.last_activity
        if quiet >= limit:
            self.close(Outcome.OK)
        else:
            self._arm(limit - quiet)

    def send(self, data: bytes) -> None:
        """A datagram from the client, to the server."""
        self.bytes_in += len(data)
        self.last_activity = self.listener.loop.time()
        try:
            self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            pass  # socket buffer full: UDP may drop, and so do we
        except ConnectionRefusedError:
            self.close(Outcome.CONNECT_FAILED)
        except OSError as exc:
            log.debug("%s: send to %s failed: %s", self.listener.name, self.lease.server.name, exc)

    def _readable(self) -> None:
        listener = self.listener
        transport = listener.transport
        for _ in range(READS_PER_WAKEUP):
            try:
                data = self.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                self.close(Outcome.CONNECT_FAILED)
                return
            except OSError as exc:
                log.debug("%s: recv failed: %s", listener.name, exc)
                self.close(Outcome.RESET)
                return
            self.bytes_out += len(data)
            self.last_activity = listener.loop.time()
            if listener.writing_paused:
                listener.replies_dropped += 1  # the listening socket is full: see pause_writing
            elif transport is not None and not transport.is_closing():
                transport.sendto(data, self.client)

    def close(self, outcome: Outcome) -> None:
        if self.closed:
            return
        self.closed = True
        listener = self.listener
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        try:
            listener.loop.remove_reader(self.fd)
        except (ValueError, OSError):
            pass
        self.sock.close()
        self.lease.release(outcome)
        record = self.record
        record.bytes_in = self.bytes_in
        record.bytes_out = self.bytes_out
        if listener.engine.recorders:  # the client's text only for those who read it
            record.client = _fmt(self.client)
            record.duration = time.perf_counter() - self.started
        listener.session_closed(self, record)

    def __repr__(self) -> str:
        return (
            f"UdpSession({_fmt(self.client)} -> {self.backend_name}/{self.lease.server.name} "
            f"in={self.bytes_in} out={self.bytes_out} closed={self.closed})"
        )


class UdpListener(asyncio.DatagramProtocol):
    """The runtime of one `protocol: udp` listener (created and driven by the Engine)."""

    def __init__(self, engine: Any, listener_config: Any) -> None:
        self.engine = engine
        self.loop: asyncio.AbstractEventLoop = engine.loop
        self.name: str = listener_config.name
        self.transport: asyncio.DatagramTransport | None = None
        self.sessions: OrderedDict[Address, UdpSession] = OrderedDict()
        self.closing = False
        self.sessions_total = 0
        self.dropped = 0  # client datagrams: no session could be opened, or shutting down
        self.writing_paused = False
        self.replies_dropped = 0  # server datagrams not sent on while writing was paused
        self._dropped_before = 0  # replies_dropped when the pause began
        self._empty: asyncio.Event | None = None
        self.config: Any = listener_config
        self.idle_timeout = 30.0
        self.max_sessions = 10000
        self.update(listener_config)

    def update(self, cfg: Any) -> None:
        """Reload: new sessions use the new config; open ones carry on."""
        self.config = cfg
        self.idle_timeout = float(getattr(cfg, "session_idle_timeout", 30.0))
        self.max_sessions = int(getattr(cfg, "max_sessions", 10000))
        while len(self.sessions) > self.max_sessions:
            _, oldest = next(iter(self.sessions.items()))
            oldest.close(Outcome.OK)

    @property
    def connections_active(self) -> int:
        """Open sessions (the `steelyard_connections_active` gauge counts them for UDP)."""
        return len(self.sessions)

    def protocol_factory(self) -> UdpListener:
        return self

    # -- datagram protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        session = self.sessions.get(addr)
        if session is None:
            if self.closing:
                self.dropped += 1
                return
            session = self._open(addr)
            if session is None:
                self.dropped += 1
                return
        else:
            self.sessions.move_to_end(addr)
        session.send(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("%s: %s", self.name, exc)

    def pause_writing(self) -> None:
        """The listening socket's send buffer is full and the transport holds more than its
        high-water mark: datagrams from servers to clients are dropped until it drains, as a
        full socket would drop them (nginx and HAProxy do not queue them either), rather than
        queued without bound."""
        self.writing_paused = True
        self._dropped_before = self.replies_dropped
        log.warning(
            "%s: the listening socket is full: dropping datagrams to clients until it drains",
            self.name,
        )

    def resume_writing(self) -> None:
        self.writing_paused = False
        log.info(
            "%s: the listening socket drained; %d datagrams to clients were dropped",
            self.name,
            self.replies_dropped - self._dropped_before,
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # -- sessions ------------------------------------------------------------------------------

    def _open(self, addr: Address) -> UdpSession | None:
        backend_name = self.config.backend
        backend = self.engine.backends.get(backend_name) if backend_name else None
        if backend is None:
            return None
        while len(self.sessions) >= self.max_sessions:
            _, oldest = next(iter(self.sessions.items()))
            oldest.close(Outcome.OK)  # LRU eviction
        key = str(addr[0]).encode("ascii") if backend.settings.algorithm in HASHING else None
        record = RequestRecord(self.name, "", time.time())  # (client: in UdpSession.close)
        record.backend = backend_name
        tried: set[str] = set()
        retries = int(getattr(backend.config, "retries", 0) or 0)
        for attempt in range(retries + 1):
            lease = backend.acquire(PickContext(key, frozenset(tried)))
            if lease is None:
                return None
            server = lease.server.server
            try:
                sock = self._connect(server.host, server.port)
            except OSError as exc:
                if exc.errno in _LOCAL_ERRORS:
                    # out of descriptors or buffers: our problem, not the server's
                    log.warning("%s: cannot open a session socket: %s", self.name, exc)
                    lease.release(Outcome.CANCELLED)
                    return None
                log.info("%s: cannot open a socket to %s: %s", self.name, server.name, exc)
                lease.release(Outcome.CONNECT_FAILED)
                tried.add(server.name)
                continue
            record.server = server.name
            record.retries = attempt
            session = UdpSession(self, addr, sock, lease, backend_name, record)
            self.sessions[addr] = session
            self.sessions_total += 1
            return session
        return None

    @staticmethod
    def _connect(host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((host, port))  # no handshake: sets the peer, picks a local port
        except OSError:
            sock.close()
            raise
        return sock

    def session_closed(self, session: UdpSession, record: RequestRecord) -> None:
        if self.sessions.get(session.client) is session:
            del self.sessions[session.client]
        if self.engine.recorders:  # (none with `access: off` and no admin API)
            try:
                self.engine.record(record)
            except Exception:
                log.exception("recording a session failed")
        if not self.sessions and self._empty is not None:
            self._empty.set()

    # -- engine hooks --------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        self.closing = True
        now = self.loop.time()
        for session in list(self.sessions.values()):
            if now - session.last_activity >= SHUTDOWN_QUIET:
                session.close(Outcome.OK)
            else:
                if session.timer is not None:
                    session.timer.cancel()
                session._arm(SHUTDOWN_QUIET - (now - session.last_activity))

    async def wait_closed(self, timeout: float | None) -> None:
        if self.sessions:
            self._empty = asyncio.Event()
            try:
                async with asyncio.timeout(timeout):
                    await self._empty.wait()
            except TimeoutError:
                pass
        for session in list(self.sessions.values()):
            session.close(Outcome.CANCELLED)

    def close_server(self, backend_name: str, state: Any) -> None:
        for session in list(self.sessions.values()):
            if session.backend_name == backend_name and session.lease.server is state:
                session.close(Outcome.CANCELLED)

    def __repr__(self) -> str:
        return (
            f"UdpListener({self.name} sessions={len(self.sessions)}/{self.max_sessions} "
            f"total={self.sessions_total} dropped={self.dropped} "
            f"replies_dropped={self.replies_dropped} closing={self.closing})"
        )
