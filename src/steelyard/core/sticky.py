"""LB-inserted affinity cookies (SPEC §2 `sticky`).

The cookie value is opaque and signed: base64url(HMAC-SHA256(secret, backend NUL server)[:16]).
It names a server without revealing its name or address, and a client cannot mint a value
for a server it was never sent to without the secret. A value that matches no current server
(tampered, expired server, other secret) counts as no cookie. Validation is a dict lookup;
the table is filled lazily from the backend's current server names.

The secret comes from `sticky.secret` when set (needed when several instances must agree);
otherwise it is random per process, so cookies do not survive a restart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable


class StickyCookies:
    __slots__ = ("secret", "backend", "cookie", "ttl", "_by_value", "_by_server")

    def __init__(self, secret: bytes, backend: str, cookie: str, ttl: float) -> None:
        self.secret = secret
        self.backend = backend
        self.cookie = cookie
        self.ttl = ttl
        self._by_value: dict[str, str] = {}
        self._by_server: dict[str, str] = {}

    def value_for(self, server: str) -> str:
        value = self._by_server.get(server)
        if value is None:
            mac = hmac.new(
                self.secret, f"{self.backend}\0{server}".encode(), hashlib.sha256
            ).digest()
            value = base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode()
            self._by_server[server] = value
            self._by_value[value] = server
        return value

    def server_for(self, value: str, servers: Iterable[str]) -> str | None:
        """The server a cookie value names, or None (unknown, tampered, or gone)."""
        name = self._by_value.get(value)
        if name is None:
            for server in servers:
                self.value_for(server)
            name = self._by_value.get(value)
        return name

    def set_cookie(self, server: str, secure: bool) -> str:
        """The Set-Cookie header value for a response that was sent to `server`."""
        parts = [
            f"{self.cookie}={self.value_for(server)}",
            "Path=/",
            f"Max-Age={int(self.ttl)}",
            "HttpOnly",
            "SameSite=Lax",
        ]
        if secure:
            parts.append("Secure")
        return "; ".join(parts)

    def __repr__(self) -> str:
        return f"StickyCookies({self.backend}, cookie={self.cookie}, known={len(self._by_server)})"
