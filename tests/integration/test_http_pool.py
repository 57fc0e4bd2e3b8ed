"""Upstream connection pools: reuse, idle cap, idle timeout, stale connections."""

from __future__ import annotations

import asyncio

import pytest
from tests.helpers.http_backends import (
    Behaviour,
    H11Client,
    http_backend,
    proxy_config,
    request,
    steelyard,
)

from steelyard.net.pool import UpstreamPools


async def _open(pools: UpstreamPools, host: str, port: int):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: pools.new_connection((host, port)), host, port)
    return conn


async def test_idle_cap_per_server() -> None:
    async with http_backend("s1") as s1:
        pools = UpstreamPools(asyncio.get_running_loop(), max_idle_per_server=2)
        conns = [await _open(pools, s1.host, s1.port) for _ in range(3)]
        for c in conns:
            pools.put(c)
        assert pools.idle_count((s1.host, s1.port)) == 2
        assert pools.discarded == 1
        taken = pools.take((s1.host, s1.port))
        assert taken is conns[1]  # the most recently returned goes first
        pools.close_all()
        assert pools.idle_count() == 0


async def test_idle_timeout_sweeps() -> None:
    async with http_backend("s1") as s1:
        pools = UpstreamPools(asyncio.get_running_loop(), idle_timeout=0.2)
        pools.put(await _open(pools, s1.host, s1.port))
        assert pools.idle_count() == 1
        for _ in range(50):
            if pools.idle_count() == 0:
                break
            await asyncio.sleep(0.05)
        assert pools.idle_count() == 0
        assert pools.take((s1.host, s1.port)) is None
        for _ in range(50):
            if s1.open == 0:
                break
            await asyncio.sleep(0.02)
        assert s1.open == 0  # and the socket was closed
        pools.close_all()


async def test_server_closing_an_idle_connection_removes_it() -> None:
    async with http_backend("s1") as s1:
        pools = UpstreamPools(asyncio.get_running_loop())
        conn = await _open(pools, s1.host, s1.port)
        pools.put(conn)
        s1.close_idle_connections()
        for _ in range(50):
            if pools.idle_count() == 0:
                break
            await asyncio.sleep(0.02)
        assert pools.idle_count() == 0 and conn.closed
        assert "closed" in repr(conn)
        pools.close_all()


async def test_keep_alive_race_is_retried_on_a_fresh_connection() -> None:
    async with (
        http_backend("s1", Behaviour(reset_reused=True)) as s1,
        steelyard(proxy_config({"api": [s1]})) as sy,
    ):
        assert (await request(sy.port)).status == 200
        r = await request(sy.port)  # the pooled connection is reset as it is reused
        assert r.status == 200 and r.header("x-server") == "s1"
        assert s1.connections == 2
        state = sy.engine.backends["api"].servers["s1"]
        assert state.failures_total == 0


@pytest.mark.parametrize("chunked", [False, True])
async def test_keep_alive_race_replays_an_idempotent_request_body(chunked: bool) -> None:
    """A PUT whose pooled connection is reset as it is reused: its body (kept while on the
    reused connection, up to 64 KiB) goes again on a fresh connection; the server sees it
    once, whole."""
    async with (
        http_backend("s1", Behaviour(reset_reused=True)) as s1,
        steelyard(proxy_config({"api": [s1]})) as sy,
    ):
        assert (await request(sy.port)).status == 200
        body = b"0123456789" * 3000
        parts = [body[:10000], body[10000:]] if chunked else body
        r = await request(sy.port, "PUT", "/echo", body=parts)
        assert r.status == 200
        assert [x.method for x in s1.requests] == ["GET", "PUT"]
        assert s1.requests[1].body == body
        assert s1.connections == 2


async def test_keep_alive_race_does_not_replay_a_post_or_a_large_body() -> None:
    # not idempotent (RFC 9110 9.2.2; nginx does not retry it either): 502, not sent twice
    async with (
        http_backend("s1", Behaviour(reset_reused=True)) as s1,
        steelyard(proxy_config({"api": [s1]})) as sy,
    ):
        assert (await request(sy.port)).status == 200
        r = await request(sy.port, "POST", "/echo", body=b"x" * 1000)
        assert r.status == 502
        assert [x.method for x in s1.requests] == ["GET"]
        # nor an idempotent one over the 64 KiB kept for a replay
        assert (await request(sy.port)).status == 200
        r = await request(sy.port, "PUT", "/echo", body=[b"x" * 40000, b"y" * 40000])
        assert r.status == 502


async def test_concurrent_requests_open_more_connections_then_reuse_them() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        results = await asyncio.gather(*(request(sy.port, "GET", "/delay/0.2") for _ in range(5)))
        assert all(r.status == 200 for r in results)
        assert s1.connections == 5
        assert sy.engine.pools.idle_count() == 5
        results = await asyncio.gather(*(request(sy.port, "GET", "/delay/0.1") for _ in range(5)))
        assert all(r.status == 200 for r in results)
        assert s1.connections == 5  # all reused


async def test_client_leaving_mid_response_frees_everything() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        client = await H11Client.connect(sy.port)
        client.writer.write(b"GET /big/104857600 HTTP/1.1\r\nHost: a\r\n\r\n")
        await client.reader.read(65536)
        client.writer.transport.abort()
        for _ in range(100):
            if sy.listener().connections_active == 0 and s1.open == 0:
                break
            await asyncio.sleep(0.02)
        assert sy.listener().connections_active == 0
        assert s1.open == 0  # the upstream connection was not pooled mid-body
        state = sy.engine.backends["api"].servers["s1"]
        assert state.active == 0 and state.failures_total == 0
        assert sy.records[-1].status == 200
        assert (await request(sy.port)).status == 200
