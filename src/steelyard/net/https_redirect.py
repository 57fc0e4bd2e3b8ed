"""`redirect_https: true` on a plain http listener: 308 to the same URL over https.

The host is the request's Host without its port; the port is that of the engine's first
listener that terminates TLS for HTTP (left out when it is 443, or when there is none, so
that a proxy in front that owns 443 gets a plain https URL). The path and query are kept
as received (an absolute-form target contributes only its path and query).
"""

from __future__ import annotations

from typing import Any

from steelyard.core.http1.parser import RequestHead
from steelyard.core.routing import normalize_host


def https_port(engine: Any) -> int | None:
    for name, handle in getattr(engine, "listeners", {}).items():
        cfg = getattr(handle, "config", None)
        if handle.protocol == "http" and getattr(cfg, "tls", None) is not None:
            bound = engine.bound.get(name)
            return int(bound[1]) if bound else None
    return None


def https_location(engine: Any, head: RequestHead, fallback_host: bytes) -> bytes:
    host = normalize_host(head.host) or fallback_host
    if b":" in host and not host.startswith(b"["):
        host = b"[" + host + b"]"  # an IPv6 address as the fallback
    port = https_port(engine)
    authority = host if port in (None, 443) else host + b":%d" % port
    target = head.path
    if head.query is not None:
        target += b"?" + head.query
    return b"https://" + authority + target
