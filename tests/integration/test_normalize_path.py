"""`normalize_path: true` on an HTTP listener: routes match the RFC 3986 normal form of the
path (core/http1/paths.py), and the server gets that form -- so a route that answers 403 for
/admin cannot be walked around with /%61dmin, //admin or /x/../admin. Without it, routes see
the path as received (HAProxy's default), which the last test pins."""

from __future__ import annotations

import pytest
from tests.helpers.http_backends import http_backend, proxy_config, request, steelyard

from steelyard.config import ConfigError, load_config_text

ROUTES = """      - match: {path_prefix: /admin}
        respond: {status: 403, body: "no"}
      - match: {path_prefix: /}
        backend: api
"""

SPELLINGS = ["/admin", "/%61dmin", "//admin", "/x/../admin", "/a/%2e%2e/admin", "/./admin/"]


async def test_every_spelling_of_a_denied_path_is_denied() -> None:
    async with http_backend("s1") as s1:
        cfg = proxy_config({"api": [s1]}, ROUTES, listener="    normalize_path: true")
        async with steelyard(cfg) as sy:
            for target in SPELLINGS:
                r = await request(sy.port, "GET", target)
                assert r.status == 403, target
            assert s1.requests == []
            # the rest is served in its normal form; the query is left alone
            r = await request(sy.port, "GET", "/x/./%7euser//files/../a?q=%2e%2e/&x=1")
            assert r.status == 200
            assert s1.requests[-1].target == "/x/~user/a?q=%2e%2e/&x=1"
            assert sy.records[-1].path == "/x/~user/a?q=%2e%2e/&x=1"  # logged as forwarded
            r = await request(sy.port, "GET", "/a%2fb")  # an encoded slash stays encoded
            assert s1.requests[-1].target == "/a%2Fb"
            # a malformed percent-encoding cannot be normalized: 400, never forwarded
            r = await request(sy.port, "GET", "/files/%zz")
            assert r.status == 400 and b"percent-encoding" in r.body
            assert len(s1.requests) == 2


async def test_without_the_option_routes_see_the_path_as_received() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]}, ROUTES)) as sy:
        assert (await request(sy.port, "GET", "/admin")).status == 403
        r = await request(sy.port, "GET", "/%61dmin")
        assert r.status == 200 and s1.requests[-1].target == "/%61dmin"


def test_normalize_path_is_for_http_listeners() -> None:
    text = (
        "version: 1\nlisteners:\n  - name: t\n    protocol: tcp\n    bind: 127.0.0.1:1\n"
        "    backend: b\n    normalize_path: true\n"
        "backends:\n  b:\n    servers:\n      - {address: 127.0.0.1:2}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    assert "'normalize_path' is only for http listeners" in str(info.value)
