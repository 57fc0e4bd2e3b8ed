"""Compiled routes: config -> matchers built once; per request, first match wins.

How this works. Each route of a listener (SPEC §2) is compiled into a CompiledRoute: method set,
path prefix and host as bytes, the path regex compiled once (search semantics, as nginx's `~`:
anchor with ^ and $ yourself), header/query/cookie conditions as (name, value) pairs. All
conditions of a route must hold; the checks run cheapest first. The Router walks its routes in
order and returns the first that matches, or None (the proxy answers 404).

Matching is on the request target as received (no percent-decoding); host matching ignores case
and the port; `*.example.com` matches exactly one label, not example.com itself. Header values
and query/cookie values match exactly (case-sensitive).

A route picks its backend directly or by a weighted split (a cumulative table, one random draw
per request). Route actions (header rules, strip/rewrite prefix, redirect, respond) are compiled
here too; placeholders are Templates (core/http1/headers.py).

HashKey turns a backend's `hash_on` (client_ip | header:NAME | cookie:NAME | query:NAME | path)
into the bytes the hashing balancers consume.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from steelyard.core.http1.headers import HeaderActions, Template
from steelyard.core.http1.parser import RequestHead


def normalize_host(host: bytes | None) -> bytes:
    """Lower-case host without the port ('Example.COM:8080' -> b'example.com')."""
    if not host:
        return b""
    host = host.lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    colon = host.rfind(b":")
    if colon >= 0:
        return host[:colon]
    return host


def parse_cookies(head: RequestHead) -> dict[bytes, bytes]:
    cookies: dict[bytes, bytes] = {}
    for name, value in head.headers:
        if len(name) == 6 and name.lower() == b"cookie":
            for pair in value.split(b";"):
                key, eq, val = pair.partition(b"=")
                if eq:
                    key = key.strip(b" \t")
                    if key and key not in cookies:
                        cookies[key] = val.strip(b" \t").strip(b'"')
    return cookies


def parse_query(query: bytes | None) -> dict[bytes, bytes]:
    if not query:
        return {}
    out: dict[bytes, bytes] = {}
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        k = key.encode("latin-1", "replace")
        if k not in out:
            out[k] = value.encode("latin-1", "replace")
    return out


def header_value(head: RequestHead, lname: bytes) -> bytes | None:
    for name, value in head.headers:
        if name.lower() == lname:
            return value
    return None


class _RequestView:
    """Lazily computed request facts shared by all routes tried for one request."""

    __slots__ = ("head", "_host", "_query", "_cookies")

    def __init__(self, head: RequestHead) -> None:
        self.head = head
        self._host: bytes | None = None
        self._query: dict[bytes, bytes] | None = None
        self._cookies: dict[bytes, bytes] | None = None

    @property
    def host(self) -> bytes:
        if self._host is None:
            self._host = normalize_host(self.head.host)
        return self._host

    @property
    def query(self) -> dict[bytes, bytes]:
        if self._query is None:
            self._query = parse_query(self.head.query)
        return self._query

    @property
    def cookies(self) -> dict[bytes, bytes]:
        if self._cookies is None:
            self._cookies = parse_cookies(self.head)
        return self._cookies


def _b(value: str) -> bytes:
    return value.encode("utf-8")


class Redirect:
    __slots__ = ("to", "status")

    def __init__(self, to: Template, status: int) -> None:
        self.to = to
        self.status = status

    def __repr__(self) -> str:
        return f"Redirect({self.status} {self.to.source!r})"


class Respond:
    __slots__ = ("status", "body", "content_type")

    def __init__(self, status: int, body: Template, content_type: bytes) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type

    def __repr__(self) -> str:
        return f"Respond({self.status} {self.body.source!r})"


class CompiledRoute:
    __slots__ = (
        "index",
        "methods",
        "path_prefix",
        "host",
        "host_suffix",
        "path_regex",
        "headers",
        "query",
        "cookies",
        "backend",
        "_split_names",
        "_split_cum",
        "_split_total",
        "request_actions",
        "response_actions",
        "strip_prefix",
        "rewrite_prefix",
        "redirect",
        "respond",
        "needs_context",
        "fixed",
        "simple_prefix",
    )

    def __init__(self, index: int, cfg: Any) -> None:
        self.index = index
        match = getattr(cfg, "match", None)
        methods = getattr(match, "method", None)
        if isinstance(methods, str):
            methods = (methods,)
        self.methods: frozenset[bytes] | None = (
            frozenset(_b(m.upper()) for m in methods) if methods else None
        )
        prefix = getattr(match, "path_prefix", None)
        self.path_prefix: bytes | None = _b(prefix) if prefix else None
        host = getattr(match, "host", None)
        self.host: bytes | None = None
        self.host_suffix: bytes | None = None
        if host:
            hb = _b(host.lower())
            if hb.startswith(b"*."):
                self.host_suffix = hb[1:]  # b".example.com"
            else:
                self.host = normalize_host(hb)
        regex = getattr(match, "path_regex", None)
        self.path_regex: re.Pattern[bytes] | None = re.compile(_b(regex)) if regex else None
        self.headers = _pairs(getattr(match, "headers", None), lower_names=True)
        self.query = _pairs(getattr(match, "query", None), lower_names=False)
        self.cookies = _pairs(getattr(match, "cookies", None), lower_names=False)

        self.backend: str | None = getattr(cfg, "backend", None)
        split = getattr(cfg, "split", None) or ()
        names: list[str] = []
        cum: list[float] = []
        total = 0.0
        for entry in split:
            weight = float(getattr(entry, "weight", 1))
            if weight <= 0:
                continue
            total += weight
            names.append(entry.backend)
            cum.append(total)
        self._split_names = tuple(names)
        self._split_cum = tuple(cum)
        self._split_total = total

        self.request_actions = HeaderActions.from_config(getattr(cfg, "request_headers", None))
        self.response_actions = HeaderActions.from_config(getattr(cfg, "response_headers", None))
        strip = getattr(cfg, "strip_prefix", None)
        rewrite = getattr(cfg, "rewrite_prefix", None)
        if rewrite and not strip:
            strip = prefix  # rewrite_prefix alone replaces match.path_prefix
        self.strip_prefix: bytes | None = _b(strip).rstrip(b"/") or None if strip else None
        self.rewrite_prefix: bytes | None = _b(rewrite) if rewrite else None
        if self.rewrite_prefix is not None and self.strip_prefix is None and strip:
            self.strip_prefix = b""  # the prefix is "/": the rewrite goes in front of the path
        redirect = getattr(cfg, "redirect", None)
        self.redirect: Redirect | None = (
            Redirect(Template(redirect.to), int(redirect.status)) if redirect else None
        )
        respond = getattr(cfg, "respond", None)
        self.respond: Respond | None = (
            Respond(
                int(respond.status),
                Template(respond.body or ""),
                _b(respond.content_type or "text/plain; charset=utf-8"),
            )
            if respond
            else None
        )
        self.fixed = not self._split_names  # `backend:`, no split: no draw per request
        # a route with only a path prefix (the common case) is matched without a request view
        self.simple_prefix: bytes | None = None
        if (
            self.methods is None
            and self.host is None
            and self.host_suffix is None
            and self.path_regex is None
            and not self.headers
            and not self.query
            and not self.cookies
        ):
            self.simple_prefix = self.path_prefix or b""
        self.needs_context = not (
            self.request_actions.empty
            and self.response_actions.empty
            and self.redirect is None
            and self.respond is None
        )

    def matches(self, view: _RequestView) -> bool:
        head = view.head
        if self.methods is not None and head.method not in self.methods:
            return False
        if self.path_prefix is not None and not head.path.startswith(self.path_prefix):
            return False
        if self.host is not None and view.host != self.host:
            return False
        if self.host_suffix is not None:
            host = view.host
            if not host.endswith(self.host_suffix):
                return False
            label = host[: -len(self.host_suffix)]
            if not label or b"." in label:
                return False
        if self.headers:
            for lname, value in self.headers:
                if header_value(head, lname) != value:
                    return False
        if self.query:
            query = view.query
            for qname, value in self.query:
                if query.get(qname) != value:
                    return False
        if self.cookies:
            cookies = view.cookies
            for cname, value in self.cookies:
                if cookies.get(cname) != value:
                    return False
        return self.path_regex is None or self.path_regex.search(head.path) is not None

    def pick_backend(self, rng: random.Random) -> str | None:
        """The backend for one request: fixed, or drawn from the weighted split."""
        if self._split_names:
            if len(self._split_names) == 1:
                return self._split_names[0]
            x = rng.random() * self._split_total
            i = bisect.bisect_right(self._split_cum, x)
            return self._split_names[min(i, len(self._split_names) - 1)]
        return self.backend

    def rewrite_target(self, head: RequestHead) -> bytes:
        """The request target to send upstream after strip_prefix / rewrite_prefix."""
        prefix = self.strip_prefix
        if prefix is None:
            return head.target
        path = head.path
        if not path.startswith(prefix) or (len(path) > len(prefix) and path[len(prefix)] != 47):
            return head.target  # only on a segment boundary: /api strips /api/x, not /apiary
        rest = path[len(prefix) :]
        if self.rewrite_prefix is not None:
            new = self.rewrite_prefix.rstrip(b"/") + rest if rest else self.rewrite_prefix
        else:
            new = rest or b"/"
        if not new.startswith(b"/"):
            new = b"/" + new
        if head.query is not None:
            return new + b"?" + head.query
        return new

    def __repr__(self) -> str:
        cond = []
        if self.methods:
            cond.append(f"method={sorted(m.decode() for m in self.methods)}")
        if self.host or self.host_suffix:
            cond.append(f"host={(self.host or b'*' + (self.host_suffix or b'')).decode()}")
        if self.path_prefix:
            cond.append(f"path_prefix={self.path_prefix.decode()}")
        if self.path_regex is not None:
            cond.append(f"path_regex={self.path_regex.pattern.decode()}")
        if self.headers:
            cond.append(f"headers={len(self.headers)}")
        if self.query:
            cond.append(f"query={len(self.query)}")
        if self.cookies:
            cond.append(f"cookies={len(self.cookies)}")
        if self.redirect:
            target = repr(self.redirect)
        elif self.respond:
            target = repr(self.respond)
        elif self._split_names:
            target = "split(" + ",".join(self._split_names) + ")"
        else:
            target = str(self.backend)
        return f"CompiledRoute(#{self.index} {' '.join(cond) or '*'} -> {target})"


def _pairs(
    mapping: Mapping[str, str] | None, *, lower_names: bool
) -> tuple[tuple[bytes, bytes], ...]:
    if not mapping:
        return ()
    return tuple(
        ((_b(k.lower()) if lower_names else _b(k)), _b(str(v))) for k, v in mapping.items()
    )


class _CatchAll:
    """The route config of a listener with `backend:` and no routes (module level: mypyc
    compiles no nested classes)."""

    match = None
    split = None
    request_headers = None
    response_headers = None
    strip_prefix = None
    rewrite_prefix = None
    redirect = None
    respond = None

    def __init__(self, backend: str) -> None:
        self.backend = backend


class Router:
    """The routes of one listener, compiled once; `match()` is first-match-wins."""

    __slots__ = ("routes",)

    def __init__(self, routes: Iterable[Any]) -> None:
        self.routes: tuple[CompiledRoute, ...] = tuple(
            CompiledRoute(i, cfg) for i, cfg in enumerate(routes)
        )

    @classmethod
    def single_backend(cls, backend: str) -> Router:
        """A listener with `backend:` and no routes: every request goes there."""
        router = cls(())
        router.routes = (CompiledRoute(0, _CatchAll(backend)),)
        return router

    def match(self, head: RequestHead) -> CompiledRoute | None:
        view: _RequestView | None = None
        for route in self.routes:
            prefix = route.simple_prefix
            if prefix is not None:
                if head.path.startswith(prefix):
                    return route
                continue
            if view is None:
                view = _RequestView(head)
            if route.matches(view):
                return route
        return None

    def __repr__(self) -> str:
        return f"Router({len(self.routes)} routes)"


class HashKey:
    """Extracts the hash key of a backend's `hash_on` from a request; None when absent."""

    __slots__ = ("spec", "_kind", "_name")

    def __init__(self, spec: str) -> None:
        self.spec = spec
        kind, _, name = spec.partition(":")
        kind = kind.strip().lower()
        if kind not in ("client_ip", "header", "cookie", "query", "path"):
            raise ValueError(f"invalid hash_on {spec!r}")
        if kind in ("header", "cookie", "query") and not name.strip():
            raise ValueError(f"hash_on {spec!r} needs a name")
        self._kind = kind
        name = name.strip()
        self._name = _b(name.lower() if kind == "header" else name)

    def extract(self, head: RequestHead, client_ip: bytes) -> bytes | None:
        kind = self._kind
        if kind == "client_ip":
            return client_ip
        if kind == "path":
            return head.path
        if kind == "header":
            return header_value(head, self._name)
        if kind == "cookie":
            return parse_cookies(head).get(self._name)
        return parse_query(head.query).get(self._name)

    def __repr__(self) -> str:
        return f"HashKey({self.spec})"


class HashKeys:
    """hash_on string -> compiled HashKey, built on first use (one per distinct spec)."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[str, HashKey] = {}

    def get(self, spec: str) -> HashKey:
        key = self._cache.get(spec)
        if key is None:
            key = self._cache[spec] = HashKey(spec)
        return key

    def __repr__(self) -> str:
        return f"HashKeys({sorted(self._cache)})"


def split_backends(routes: Sequence[CompiledRoute]) -> set[str]:
    """Every backend name the routes may send to (for checks and metrics)."""
    names: set[str] = set()
    for route in routes:
        if route.backend:
            names.add(route.backend)
        names.update(route._split_names)
    return names
