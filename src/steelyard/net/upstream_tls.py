"""TLS toward the servers of a backend (`tls: {verify, ca, server_name}`).

One client SSLContext per distinct TLS identity (verify, CA file and its modification time,
server name), built on first use and kept by the listener until a reload. The identity is
part of the upstream pool key, so a pooled connection is only reused by requests that would
have made the same handshake: a backend whose `tls` changes on reload never gets a
connection that was verified under the old settings.

The server name is sent as SNI and is the name the certificate must match; without
`server_name` the server's host from its address is used (an IP address is then matched
against the certificate's IP subjectAltNames). `verify: false` turns off both the chain and
the name check (encryption without authentication).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from typing import Any


class UpstreamTLS:
    """What a connection to one server of a TLS backend needs."""

    __slots__ = ("ident", "context", "server_name")

    def __init__(self, ident: tuple[Any, ...], context: ssl.SSLContext, server_name: str | None):
        self.ident = ident
        self.context = context
        self.server_name = server_name

    def server_hostname(self, host: str) -> str | None:
        """The SNI / verification name for a server at `host`."""
        if self.server_name:
            return self.server_name
        if not self.context.check_hostname:
            # no verification: send SNI only for names (an IP address is not valid SNI)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                return host
            return None
        return host

    def __repr__(self) -> str:
        return f"UpstreamTLS(verify={self.ident[0]}, ca={self.ident[1]}, sni={self.server_name})"


def client_context(verify: bool, ca: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class UpstreamTLSContexts:
    """Backend `tls` config -> UpstreamTLS, cached per identity (cleared on reload)."""

    __slots__ = ("_by_config", "_by_ident")

    def __init__(self) -> None:
        self._by_config: dict[int, tuple[Any, UpstreamTLS]] = {}
        self._by_ident: dict[tuple[Any, ...], UpstreamTLS] = {}

    def get(self, cfg: Any) -> UpstreamTLS:
        cached = self._by_config.get(id(cfg))
        if cached is not None and cached[0] is cfg:
            return cached[1]
        verify = bool(getattr(cfg, "verify", True))
        ca = getattr(cfg, "ca", None) or None
        server_name = getattr(cfg, "server_name", None) or None
        try:
            mtime = os.stat(ca).st_mtime_ns if ca else 0
        except OSError:
            mtime = -1
        ident = (verify, ca, mtime, server_name)
        entry = self._by_ident.get(ident)
        if entry is None:
            entry = UpstreamTLS(ident, client_context(verify, ca), server_name)
            self._by_ident[ident] = entry
        self._by_config[id(cfg)] = (cfg, entry)
        return entry

    def clear(self) -> None:
        self._by_config.clear()
        self._by_ident.clear()

    def __repr__(self) -> str:
        return f"UpstreamTLSContexts({len(self._by_ident)} contexts)"
