"""Listening sockets: one address, several accept queues (Linux), so a loop pass can accept
several connections.

Why. libuv, under uvloop, accepts one connection per listening socket per loop pass (it
stopped accepting in a loop in 2022, libuv PR #3696, and relies on the level-triggered
poll to report the socket again). Under a burst of new connections -- every request on a
new connection, as with `Connection: close` clients -- the loop then admits one connection
per pass: the rest wait in the kernel's accept queue, each pass carries about one request,
and every request pays a whole pass (the poll, the epoll_ctl batch, the loop's idle and
check phases, a write batch of one). Measured under `wrk -c50` with `Connection: close`
(bench/PROFILE.md, "accept queues"): one `accept4` and one `epoll_pwait` per request.
HAProxy accepts several connections per wake-up (`tune.maxaccept`), nginx all pending ones
(`multi_accept on`).

How. A stream listener served by the loop binds `count` sockets to its address with
SO_REUSEPORT; the kernel spreads new connections over their accept queues (by a hash of the
connection's addresses), and each pass accepts up to one connection per ready socket. A
listener that accepts in a loop of its own (a TCP listener on its own epoll set) asks for one.

SO_REUSEPORT would also let another process of the same user bind the same address
silently (two instances sharing the port, instead of the second one failing with "address
in use"). So the address is first bound by a plain socket, without SO_REUSEPORT: that fails
as it always did when anything holds the address, and it resolves port 0 to the port all the
sockets then share. Our sockets in turn refuse any later plain bind, as a single one did.

`STEELYARD_ACCEPT_SOCKETS` (default 64; 1 = one socket, as before) sets the count. Platforms
without SO_REUSEPORT's load balancing (anything but Linux) get one socket.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any, Final

log = logging.getLogger("steelyard")


def _env_count() -> int:
    raw = os.environ.get("STEELYARD_ACCEPT_SOCKETS", "64")
    try:
        n = int(raw)
    except ValueError:
        log.warning("STEELYARD_ACCEPT_SOCKETS=%r is not a number: using 64", raw)
        return 64
    return max(1, min(n, 64))


SUPPORTED: Final = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
ACCEPT_SOCKETS: Final = _env_count() if SUPPORTED else 1
BACKLOG: Final = 1024


def _bound(host: str, port: int, reuseport: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only then
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets listening on (host, port) (module docstring); raises OSError as a
    single bind would (the address is in use, not ours to bind, ...)."""
    probe = _bound(host, port, reuseport=False)
    if count <= 1:
        socks = [probe]
    else:
        port = probe.getsockname()[1]
        probe.close()  # a bound socket that never listened leaves nothing behind
        socks = []
    try:
        while len(socks) < count:
            socks.append(_bound(host, port, reuseport=True))
        for s in socks:
            s.listen(BACKLOG)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


class ServerGroup:
    """The loop's servers of one listener's sockets, closed together."""

    __slots__ = ("servers",)

    def __init__(self, servers: list[Any]) -> None:
        self.servers = servers

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def __repr__(self) -> str:
        return f"ServerGroup({len(self.servers)} servers)"
