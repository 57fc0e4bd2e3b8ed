"""Sticky sessions from real responses: the inserted cookie (`sticky`), and the alternatives
that insert nothing (`ip_hash`, `hash_on: cookie:NAME`)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import trustme
from tests.helpers.http_backends import (
    H11Client,
    Reply,
    http_backend,
    proxy_config,
    request,
    steelyard,
)

from steelyard.config import load_config_text

STICKY = {"sticky": {"cookie": "SY_SRV", "ttl": "1h"}}


def cookie_of(reply: Reply, name: str = "SY_SRV") -> tuple[str, list[str]] | None:
    """(value, attributes) of our Set-Cookie, or None."""
    for header in reply.header_all("set-cookie"):
        first, *attrs = [p.strip() for p in header.split(";")]
        key, _, value = first.partition("=")
        if key == name:
            return value, attrs
    return None


async def get(client: H11Client, cookie: str | None = None, name: str = "SY_SRV") -> Reply:
    headers = [("cookie", f"other=1; {name}={cookie}")] if cookie is not None else []
    return await client.request("GET", "/", headers=headers)


async def test_cookie_pins_fifty_requests_and_is_not_resent() -> None:
    async with (
        http_backend("s1") as s1,
        http_backend("s2") as s2,
        http_backend("s3") as s3,
        steelyard(proxy_config({"api": [s1, s2, s3]}, **STICKY)) as sy,
    ):
        client = await H11Client.connect(sy.port)
        first = await get(client)
        set_cookie = cookie_of(first)
        assert set_cookie is not None
        value, attrs = set_cookie
        server = first.header("x-server")
        assert server is not None
        assert sorted(attrs) == sorted(["Path=/", "Max-Age=3600", "HttpOnly", "SameSite=Lax"])
        # opaque: neither the name nor the address of the server
        assert server not in value and "127.0.0.1" not in value
        for _ in range(50):
            r = await get(client, value)
            assert r.header("x-server") == server
            assert cookie_of(r) is None  # not re-sent while it holds
        # without the cookie the balancer spreads requests as usual
        seen = {(await get(client)).header("x-server") for _ in range(6)}
        assert seen == {"s1", "s2", "s3"}
        await client.close()


async def test_disabled_server_moves_the_session_with_a_new_cookie() -> None:
    async with (
        http_backend("s1") as s1,
        http_backend("s2") as s2,
        steelyard(proxy_config({"api": [s1, s2]}, **STICKY)) as sy,
    ):
        client = await H11Client.connect(sy.port)
        first = await get(client)
        old = cookie_of(first)
        assert old is not None
        server = first.header("x-server")
        assert server is not None
        sy.engine.backends["api"].disable(server)
        moved = await get(client, old[0])
        new_server = moved.header("x-server")
        assert new_server is not None and new_server != server
        new = cookie_of(moved)
        assert new is not None and new[0] != old[0]
        for _ in range(5):
            r = await get(client, new[0])
            assert r.header("x-server") == new_server and cookie_of(r) is None
        # back in rotation: the new cookie still holds (no flapping back)
        sy.engine.backends["api"].enable(server)
        r = await get(client, new[0])
        assert r.header("x-server") == new_server and cookie_of(r) is None
        await client.close()


async def test_admin_drain_moves_the_session() -> None:
    async with http_backend("s1") as s1, http_backend("s2") as s2:
        text = proxy_config({"api": [s1, s2]}, **STICKY) + "admin:\n  bind: 127.0.0.1:0\n"
        async with steelyard(text) as sy:
            admin_port = int(sy.engine.admin.url.rsplit(":", 1)[1].strip("/"))
            client = await H11Client.connect(sy.port)
            first = await get(client)
            old = cookie_of(first)
            assert old is not None
            server = first.header("x-server")
            r = await request(
                admin_port, "POST", f"/api/v1/backends/api/servers/{server}/drain", body=b""
            )
            assert r.status == 200
            moved = await get(client, old[0])
            assert moved.header("x-server") != server
            assert cookie_of(moved) is not None
            await client.close()


async def test_tampered_or_foreign_cookie_counts_as_none() -> None:
    async with (
        http_backend("s1") as s1,
        http_backend("s2") as s2,
        steelyard(proxy_config({"api": [s1, s2]}, **STICKY)) as sy,
    ):
        client = await H11Client.connect(sy.port)
        good = cookie_of(await get(client))
        assert good is not None
        value = good[0]
        tampered = ("A" if value[0] != "A" else "B") + value[1:]
        for bad in (tampered, "s1", "s2", "", "127.0.0.1:1"):
            r = await get(client, bad)
            assert r.status == 200
            issued = cookie_of(r)
            assert issued is not None  # treated as no cookie: a valid one is issued
            assert issued[0] != bad
            # the new cookie works
            again = await get(client, issued[0])
            assert again.header("x-server") == r.header("x-server")
            assert cookie_of(again) is None
        await client.close()


async def test_cookies_survive_a_reload_and_follow_a_configured_secret() -> None:
    opts = {"sticky": {"cookie": "LB", "ttl": "1d", "secret": "s3cr3t-for-tests"}}
    async with http_backend("s1") as s1, http_backend("s2") as s2:
        text = proxy_config({"api": [s1, s2]}, **opts)
        async with steelyard(text) as sy:
            client = await H11Client.connect(sy.port)
            first = await get(client, name="LB")
            issued = cookie_of(first, "LB")
            assert issued is not None and "Max-Age=86400" in issued[1]
            server = first.header("x-server")
            await sy.engine.reload(load_config_text(text))
            r = await get(client, issued[0], name="LB")
            assert r.header("x-server") == server and cookie_of(r, "LB") is None
            await client.close()
        # another instance with the same secret accepts the cookie
        async with steelyard(text) as other:
            for _ in range(4):
                r = await request(other.port, "GET", "/", headers=[("cookie", f"LB={issued[0]}")])
                assert r.header("x-server") == server and cookie_of(r, "LB") is None


async def test_random_secret_cookies_survive_reload_without_a_secret() -> None:
    async with http_backend("s1") as s1, http_backend("s2") as s2:
        text = proxy_config({"api": [s1, s2]}, **STICKY)
        async with steelyard(text) as sy:
            client = await H11Client.connect(sy.port)
            first = await get(client)
            issued = cookie_of(first)
            assert issued is not None
            await sy.engine.reload(load_config_text(text.replace("1h", "2h")))
            r = await get(client, issued[0])
            assert r.header("x-server") == first.header("x-server")
            assert cookie_of(r) is None
            r = await get(client)
            fresh = cookie_of(r)
            assert fresh is not None and "Max-Age=7200" in fresh[1]  # the new ttl
            await client.close()


async def test_secure_attribute_on_https(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "c.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    listener = (
        f"    tls:\n      certificates:\n        - {{cert: '{cert_path}', key: '{key_path}'}}"
    )
    async with (
        http_backend("s1") as s1,
        steelyard(proxy_config({"api": [s1]}, listener=listener, **STICKY)) as sy,
    ):
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", sy.port, ssl=ctx, server_hostname="localhost"
        )
        client = H11Client(reader, writer)
        issued = cookie_of(await get(client))
        assert issued is not None and "Secure" in issued[1] and "HttpOnly" in issued[1]
        await client.close()


async def test_sticky_follows_a_retry_to_the_server_that_answered() -> None:
    from tests.helpers.http_backends import DeadServer

    dead = DeadServer("d1")
    try:
        async with (
            http_backend("s1") as s1,
            steelyard(proxy_config({"api": [dead, s1]}, **STICKY)) as sy,
        ):
            for _ in range(2):  # round robin: one of these starts on the dead server
                r = await request(sy.port, "GET", "/")
                assert r.header("x-server") == "s1"
                issued = cookie_of(r)
                assert issued is not None
                check = await request(
                    sy.port, "GET", "/", headers=[("cookie", f"SY_SRV={issued[0]}")]
                )
                assert check.header("x-server") == "s1" and cookie_of(check) is None
    finally:
        dead.close()


async def test_ip_hash_and_cookie_hash_pin_without_inserting_cookies() -> None:
    async with (
        http_backend("s1") as s1,
        http_backend("s2") as s2,
        http_backend("s3") as s3,
    ):
        async with steelyard(proxy_config({"api": [s1, s2, s3]}, algorithm="ip_hash")) as sy:
            servers = set()
            for _ in range(20):
                r = await request(sy.port, "GET", "/")
                assert not r.header_all("set-cookie")
                servers.add(r.header("x-server"))
            assert len(servers) == 1
        text = proxy_config(
            {"api": [s1, s2, s3]}, algorithm="consistent_hash", hash_on="cookie:session"
        )
        async with steelyard(text) as sy:
            client = await H11Client.connect(sy.port)
            by_session: dict[str, set[str | None]] = {}
            for i in range(30):
                session = f"user-{i % 10}"
                r = await client.request("GET", "/", headers=[("cookie", f"session={session}")])
                assert not r.header_all("set-cookie")
                by_session.setdefault(session, set()).add(r.header("x-server"))
            await client.close()
            assert all(len(v) == 1 for v in by_session.values())
            assert len({next(iter(v)) for v in by_session.values()}) > 1  # sessions spread
