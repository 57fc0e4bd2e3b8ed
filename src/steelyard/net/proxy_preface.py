"""`accept_proxy_protocol` in front of a listener's own protocol: HTTP listeners, and TLS-
terminating TCP listeners (a plain TCP listener reads the header in its own PREFACE phase,
net/tcp_proxy.py).

How this works. The listener's server is created without TLS and every accepted connection
starts with a `ProxyPreface` protocol. It reads the PROXY v1/v2 header (core.proxy_protocol)
within `timeout` seconds (the listener's `timeouts.request_head`); a connection whose first
bytes are not a valid header, or that sends none in time, is closed -- the header is required
(§2 of the PROXY spec: the receiver must not guess). Then the connection is handed to the
listener's protocol, which gets the parsed header (core.proxy_protocol.ProxyHeader) through
its `proxied` attribute, set before its `connection_made()`, and takes the client address
from it:

- plain: the protocol replaces the preface on the same transport and is fed whatever came
  after the header in the same read;
- TLS: the header must come off the socket without reading a byte of the ClientHello behind it
  (asyncio's start_tls() takes over the socket as it is and could not be handed bytes already
  read). So the transport's reading is paused from the start, the header is parsed from a
  MSG_PEEK of a duplicate of the socket, exactly its length is then received (dropped), and
  `loop.start_tls()` runs the handshake on the transport with the listener's protocol behind
  it. A header still incomplete is peeked at again every PEEK_RETRY seconds (the socket stays
  readable while its bytes are only peeked at, so waiting for readability would spin).

A LOCAL (v2) or UNKNOWN (v1) header -- a health check from the proxy in front -- keeps the
connection's own peer address as the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

from steelyard.core.proxy_protocol import V2_HEADER, V2_MAX_PAYLOAD, ParseStatus, parse_header

log = logging.getLogger("steelyard")

PEEK_MAX: Final = V2_HEADER + V2_MAX_PAYLOAD  # the longest header we accept (v1 is at most 107)
PEEK_RETRY: Final = 0.005
WARN_EVERY = 60.0  # seconds between warnings about refused connections, per listener

_refusals: dict[str, list[float]] = {}  # listener -> [last warning (monotonic), refused since]


def warn_refused(listener: str, client: str, reason: str) -> None:
    """A refused connection is worth a warning (a PROXY header missing from every connection
    means the proxy in front is not sending one), but not one per connection: at most one per
    listener every WARN_EVERY seconds, counting the ones in between."""
    now = time.monotonic()
    entry = _refusals.get(listener)
    if entry is None:
        entry = _refusals[listener] = [-WARN_EVERY, 0.0]
    entry[1] += 1
    if now - entry[0] < WARN_EVERY:
        return
    log.warning(
        "%s: refused %d connection(s) requiring a PROXY header since the last warning; "
        "latest from %s: %s",
        listener, int(entry[1]), client or "?", reason,
    )  # fmt: skip
    entry[0] = now
    entry[1] = 0.0


class ProxyPreface(asyncio.Protocol):
    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None,
        timeout: float,
        name: str = "",
    ) -> None:
        self.factory = factory
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.raw: socket.socket | None = None  # the duplicate peeked at (TLS)
        self.retry: asyncio.TimerHandle | None = None
        self.handshake: asyncio.Task[None] | None = None  # held: the loop keeps weak references
        self.done = False

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = self.loop.call_later(self.timeout, self._refuse, "no PROXY header in time")
        if self.ssl_context is None:
            return
        transport.pause_reading()  # type: ignore[attr-defined]  # not a byte of the ClientHello
        sock = transport.get_extra_info("socket")
        try:
            self.raw = socket.socket(fileno=os.dup(sock.fileno()))
            self.raw.setblocking(False)
        except (OSError, AttributeError) as exc:
            self._refuse(f"cannot read the PROXY header: {exc}")
            return
        self.loop.add_reader(self.raw.fileno(), self._peek)

    def data_received(self, data: bytes) -> None:  # plain listeners only
        if self.done:
            return
        self.buffer += data
        result = parse_header(bytes(self.buffer))
        if result.status is ParseStatus.INCOMPLETE:
            return
        if result.status is not ParseStatus.OK:
            self._refuse(f"no PROXY header ({result.reason})")
            return
        rest = bytes(self.buffer[result.consumed :])
        self._finish()
        proto = self._protocol(result.header)
        transport = self.transport
        assert transport is not None
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if rest:
            proto.data_received(rest)

    def eof_received(self) -> bool | None:
        return None  # close: there is no one to talk to yet

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    # -- TLS: peek, drop the header, start TLS -----------------------------------------------

    def _peek(self) -> None:
        raw = self.raw
        if raw is None or self.done:
            return
        try:
            data = raw.recv(PEEK_MAX, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._refuse(f"cannot read the PROXY header: {exc}")
            return
        if not data:
            self._refuse("closed before its PROXY header")
            return
        result = parse_header(data)
        if result.status is ParseStatus.INCOMPLETE:
            self.loop.remove_reader(raw.fileno())  # readable until read: look again shortly
            self.retry = self.loop.call_later(PEEK_RETRY, self._peek_again)
            return
        if result.status is not ParseStatus.OK:
            self._refuse(f"no PROXY header ({result.reason})")
            return
        try:
            raw.recv(result.consumed)  # exactly the header: the ClientHello stays queued
        except OSError as exc:
            self._refuse(f"cannot read the PROXY header: {exc}")
            return
        self._finish()
        self.handshake = self.loop.create_task(self._start_tls(result.header))

    def _peek_again(self) -> None:
        self.retry = None
        if self.raw is not None and not self.done:
            self.loop.add_reader(self.raw.fileno(), self._peek)

    async def _start_tls(self, header: Any) -> None:
        transport = self.transport
        assert transport is not None and self.ssl_context is not None
        proto = self._protocol(header)
        try:
            tls = await self.loop.start_tls(
                transport, proto, self.ssl_context, server_side=True,
                ssl_handshake_timeout=self.timeout,
            )  # fmt: skip
        except Exception as exc:  # a failed handshake is the client's problem, not ours
            log.debug("%s: TLS handshake after the PROXY header failed: %r", self.name, exc)
            transport.abort()
            return
        if tls is None:  # the connection went away during the handshake
            transport.abort()
            return
        proto.connection_made(tls)

    # -- helpers -----------------------------------------------------------------------------

    def _protocol(self, header: Any) -> asyncio.Protocol:
        proto = self.factory()
        proto.proxied = header  # type: ignore[attr-defined]
        return proto

    def _refuse(self, reason: str) -> None:
        if self.done:
            return
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        warn_refused(self.name, str(peer[0]) if isinstance(peer, tuple) else "", reason)
        self._finish()
        if self.transport is not None:
            self.transport.close()

    def _finish(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        raw = self.raw
        if raw is not None:
            self.raw = None
            with contextlib.suppress(Exception):
                self.loop.remove_reader(raw.fileno())
            raw.close()
