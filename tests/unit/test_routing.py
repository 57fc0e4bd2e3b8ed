"""Compiled routes: conditions, first match wins, weighted split, actions, hash keys."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from tests.unit.test_http1_parser import Collect

from steelyard.config import load_config_text
from steelyard.core.http1.parser import RequestHead, RequestParser
from steelyard.core.routing import HashKey, Router, normalize_host


def routes(yaml_routes: str) -> Router:
    text = (
        "version: 1\nlisteners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n"
        + yaml_routes
        + "backends:\n"
        + "".join(
            f"  {b}:\n    servers: [{{address: '127.0.0.1:1'}}]\n"
            for b in ("api", "static", "canary", "v2", "other", "admin")
        )
    )
    return Router(load_config_text(text).listeners[0].routes)


def req(raw: bytes) -> RequestHead:
    sink = Collect()
    RequestParser(sink).feed(raw)
    head = sink.events[0][1]
    assert isinstance(head, RequestHead)
    return head


def get(
    path: str = "/", host: str = "a.example", extra: str = "", method: str = "GET"
) -> RequestHead:
    return req(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())


ROUTER = """\
      - match: {path_prefix: /api/, method: [GET, POST]}
        backend: api
      - match: {host: static.example.com}
        backend: static
      - match: {host: "*.example.org"}
        backend: other
      - match: {headers: {x-canary: "on"}}
        backend: canary
      - match: {query: {v: "2"}, cookies: {beta: "yes"}}
        backend: v2
      - match: {path_regex: "^/admin/[0-9]+$"}
        backend: admin
"""


@pytest.mark.parametrize(
    ("head", "backend"),
    [
        (get("/api/x"), "api"),
        (get("/api/x", method="DELETE"), None),
        (get("/apix"), None),
        (get("/x", host="STATIC.example.com:8080"), "static"),
        (get("/api/x", host="static.example.com"), "api"),  # first match wins
        (get("/x", host="www.example.org"), "other"),
        (get("/x", host="example.org"), None),  # the wildcard needs one label
        (get("/x", host="a.b.example.org"), None),
        (get("/x", extra="X-Canary: on\r\n"), "canary"),
        (get("/x", extra="X-Canary: off\r\n"), None),
        (get("/x?v=2&w=1", extra="Cookie: a=1; beta=yes\r\n"), "v2"),
        (get("/x?v=2"), None),  # every condition must hold
        (get("/x", extra="Cookie: beta=yes\r\n"), None),
        (get("/admin/12"), "admin"),
        (get("/admin/12/x"), None),
    ],
)
def test_matching(head: RequestHead, backend: str | None) -> None:
    route = routes(ROUTER).match(head)
    assert (route.pick_backend(random.Random(0)) if route else None) == backend


def test_regex_compiled_once() -> None:
    router = routes(ROUTER)
    [admin] = [r for r in router.routes if r.path_regex is not None]
    assert isinstance(admin.path_regex, re.Pattern)
    pattern = admin.path_regex
    router.match(get("/admin/1"))
    assert admin.path_regex is pattern


def test_weighted_split() -> None:
    router = routes(
        "      - match: {path_prefix: /}\n        split:\n"
        "          - {backend: api, weight: 90}\n          - {backend: v2, weight: 10}\n"
        "          - {backend: other, weight: 0}\n"
    )
    [route] = router.routes
    rng = random.Random(7)
    counts = Counter(route.pick_backend(rng) for _ in range(10000))
    assert set(counts) == {"api", "v2"}
    assert 8700 < counts["api"] < 9300


def test_strip_and_rewrite_prefix() -> None:
    router = routes(
        "      - match: {path_prefix: /api}\n        strip_prefix: /api\n        backend: api\n"
        "      - match: {path_prefix: /old}\n        strip_prefix: /old\n"
        "        rewrite_prefix: /new\n        backend: api\n"
    )
    strip, rewrite = router.routes
    assert strip.rewrite_target(get("/api/x?y=1")) == b"/x?y=1"
    assert strip.rewrite_target(get("/api")) == b"/"
    assert strip.rewrite_target(get("/apiary")) == b"/apiary"  # only on a segment boundary
    assert rewrite.rewrite_target(get("/old/a")) == b"/new/a"
    assert rewrite.rewrite_target(get("/old")) == b"/new"


def test_actions_compiled() -> None:
    router = routes(
        "      - match: {path_prefix: /}\n        backend: api\n"
        "        request_headers: {set: {x-a: '{client_ip}'}, remove: [x-b]}\n"
        "        response_headers: {add: {x-c: '1'}}\n"
    )
    [route] = router.routes
    assert route.needs_context
    assert not route.request_actions.empty and not route.response_actions.empty
    assert "api" in repr(route)


def test_no_routes_and_single_backend() -> None:
    assert Router(()).match(get()) is None
    route = Router.single_backend("api").match(get("/anything"))
    assert route is not None and route.pick_backend(random.Random()) == "api"


@pytest.mark.parametrize(
    ("spec", "head", "key"),
    [
        ("client_ip", get(), b"10.1.1.1"),
        ("path", get("/p?q=1"), b"/p"),
        ("header:X-User", get(extra="x-user: u1\r\n"), b"u1"),
        ("header:X-User", get(), None),
        ("cookie:sid", get(extra="Cookie: a=b; sid=s9\r\n"), b"s9"),
        ("query:k", get("/?k=v&k=w"), b"v"),
    ],
)
def test_hash_keys(spec: str, head: RequestHead, key: bytes | None) -> None:
    assert HashKey(spec).extract(head, b"10.1.1.1") == key


@pytest.mark.parametrize("spec", ["header:", "cookies:x", "nothing"])
def test_bad_hash_on(spec: str) -> None:
    with pytest.raises(ValueError):
        HashKey(spec)


@pytest.mark.parametrize(
    ("host", "norm"),
    [(b"A.Example:80", b"a.example"), (b"[::1]:8080", b"[::1]"), (b"h", b"h"), (None, b"")],
)
def test_normalize_host(host: bytes | None, norm: bytes) -> None:
    assert normalize_host(host) == norm
