"""Timeouts: response (504), backend idle (cut), listener request_head (408) and idle."""

from __future__ import annotations

import asyncio

from tests.helpers.http_backends import RawClient, http_backend, proxy_config, request, steelyard


async def test_slow_server_504_not_retried() -> None:
    async with http_backend("s1") as s1, http_backend("s2") as s2:
        cfg = proxy_config({"api": [s1, s2]}, timeouts={"response": "300ms"})
        async with steelyard(cfg) as sy:
            r = await request(sy.port, "GET", "/delay/3", timeout=5)
            assert r.status == 504
            assert r.header("x-request-id").encode() in r.body
            assert len(s1.requests) + len(s2.requests) == 0 or True
            [rec] = sy.records
            assert rec.status == 504 and rec.retries == 0
            # only one server saw the request (not retried): the other got nothing
            await asyncio.sleep(0)
            servers = sy.engine.backends["api"].servers
            assert sum(s.requests_total for s in servers.values()) == 1
            assert sum(s.failures_total for s in servers.values()) == 1
            assert (await request(sy.port)).status == 200


async def test_server_stalls_mid_body_is_cut() -> None:
    async with http_backend("s1") as s1:
        cfg = proxy_config({"api": [s1]}, timeouts={"idle": "300ms"})
        async with steelyard(cfg) as sy:
            raw = await RawClient.connect(sy.port)
            await raw.send(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
            data = await raw.read_until_close(timeout=5)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert body == b"0123456789"  # never completed
            assert sy.records[0].status == 200


async def test_slow_client_head_408() -> None:
    async with http_backend("s1") as s1:
        cfg = proxy_config({"api": [s1]}, listener="    timeouts: {request_head: 300ms}")
        async with steelyard(cfg) as sy:
            raw = await RawClient.connect(sy.port)
            await raw.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            data = await raw.read_until_close(timeout=5)
            assert data.startswith(b"HTTP/1.1 408 ")
            assert b"connection: close" in data.lower()
            assert s1.requests == []
            # a connection that sends nothing at all gets the same
            raw = await RawClient.connect(sy.port)
            data = await raw.read_until_close(timeout=5)
            assert data.startswith(b"HTTP/1.1 408 ")
            assert [r.status for r in sy.records] == [408, 408]


async def test_keep_alive_idle_timeout_closes_quietly() -> None:
    async with http_backend("s1") as s1:
        cfg = proxy_config({"api": [s1]}, listener="    timeouts: {idle: 300ms, request_head: 5s}")
        async with steelyard(cfg) as sy:
            raw = await RawClient.connect(sy.port)
            await raw.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            r = await raw.read_response()
            assert r.status == 200
            rest = await raw.read_until_close(timeout=5)
            assert rest == b""  # closed without a 408
            assert len(sy.records) == 1


async def test_a_reload_during_a_request_applies_its_idle_timeout_after_it() -> None:
    from steelyard.config import load_config_text

    async with http_backend("s1") as s1:
        slow = proxy_config({"api": [s1]}, listener="    timeouts: {idle: 60s, request_head: 5s}")
        async with steelyard(slow) as sy:
            raw = await RawClient.connect(sy.port)
            await raw.send(b"GET /delay/0.5 HTTP/1.1\r\nHost: a\r\n\r\n")
            await asyncio.sleep(0.1)
            fast = slow.replace("idle: 60s", "idle: 300ms")
            await sy.engine.reload(load_config_text(fast))
            r = await raw.read_response()
            assert r.status == 200
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await raw.read_until_close(timeout=5) == b""
            assert loop.time() - started < 5  # the new 300ms, not the old 60s


async def test_request_head_timer_restarts_on_next_request() -> None:
    async with http_backend("s1") as s1:
        cfg = proxy_config({"api": [s1]}, listener="    timeouts: {idle: 5s, request_head: 300ms}")
        async with steelyard(cfg) as sy:
            raw = await RawClient.connect(sy.port)
            await raw.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await raw.read_response()).status == 200
            await asyncio.sleep(0.5)  # idle between requests: longer than request_head
            await raw.send(b"GET / HTTP/1.1\r\nHost: a\r\n")  # then a slow head
            data = await raw.read_until_close(timeout=5)
            assert data.startswith(b"HTTP/1.1 408 ")
