"""Sticky sessions for the HTTP proxy: the LB-inserted affinity cookie (SPEC §2 `sticky`).

How this works. The engine keeps one StickyRegistry (created on first use), which keeps one
core.sticky.StickyCookies per backend name for the life of the process, across reloads, so
cookies handed out before a reload stay valid after it (a per-process random secret unless
`sticky.secret` is set; a changed secret starts a new table). Per request:

  * select: the request's cookie value is looked up (a dict hit; unknown, tampered or foreign
    values name no server). If it names a server of the backend that may take traffic now
    (eligible or panic, weight > 0, under max_connections_per_server), a lease is taken on that
    server directly; otherwise the balancer picks as usual.
  * response: when the server that answered is not the one a valid cookie named (no cookie, a
    bad one, or a move), `Set-Cookie` names the new server; while the cookie holds nothing is
    sent. `Secure` is added on TLS listeners.

The cookie is left in the request forwarded to the server (as nginx's sticky does).
"""

from __future__ import annotations

import os
from typing import Any

from steelyard.core.http1.parser import Headers, RequestHead
from steelyard.core.load import Lease
from steelyard.core.routing import parse_cookies
from steelyard.core.sticky import StickyCookies


class StickyRegistry:
    """backend name -> StickyCookies, kept across reloads (one per engine)."""

    __slots__ = ("_secret", "_by_backend")

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or os.urandom(32)
        self._by_backend: dict[str, tuple[Any, StickyCookies]] = {}

    def get(self, backend: str, cfg: Any) -> StickyCookies:
        entry = self._by_backend.get(backend)
        if entry is not None and entry[0] is cfg:
            return entry[1]
        configured = getattr(cfg, "secret", None)
        secret = configured.encode() if configured else self._secret
        cookie = str(getattr(cfg, "cookie", "SY_SRV"))
        ttl = float(getattr(cfg, "ttl", 86400.0))
        sticky = entry[1] if entry is not None else None
        if sticky is None or sticky.secret != secret:
            sticky = StickyCookies(secret, backend, cookie, ttl)
        else:  # same secret: values stay valid; name and lifetime follow the config
            sticky.cookie = cookie
            sticky.ttl = ttl
        self._by_backend[backend] = (cfg, sticky)
        return sticky

    def __repr__(self) -> str:
        return f"StickyRegistry(backends={sorted(self._by_backend)})"


def registry_of(engine: Any) -> StickyRegistry:
    registry = getattr(engine, "sticky_cookies", None)
    if registry is None:
        registry = StickyRegistry()
        engine.sticky_cookies = registry
    return registry


def cookie_server(sticky: StickyCookies, backend: Any, head: RequestHead) -> str | None:
    """The server a valid affinity cookie on the request names, or None."""
    value = parse_cookies(head).get(sticky.cookie.encode())
    if not value:
        return None
    return sticky.server_for(value.decode("latin-1"), backend.servers)


def sticky_lease(backend: Any, name: str) -> Lease | None:
    """A lease on the named server if it may take this request now, else None."""
    lease: Lease | None = backend.acquire_server(name)
    return lease


def add_set_cookie(headers: Headers, sticky: StickyCookies, server: str, secure: bool) -> Headers:
    """The response headers plus our Set-Cookie naming `server`."""
    headers = list(headers)
    headers.append((b"Set-Cookie", sticky.set_cookie(server, secure).encode()))
    return headers
