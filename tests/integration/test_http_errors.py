"""Local errors, limits, strict framing (smuggling) and upstream failures."""

from __future__ import annotations

import asyncio

import h11
import pytest
from tests.helpers.http_backends import (
    Behaviour,
    DeadServer,
    H11Client,
    RawClient,
    http_backend,
    parse_responses,
    proxy_config,
    request,
    steelyard,
)


async def _raw_exchange(port: int, data: bytes) -> bytes:
    raw = await RawClient.connect(port)
    await raw.send(data)
    out = await raw.read_until_close()
    await raw.close()
    return out


def _status(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:80]
    return int(data[9:12])


async def test_no_route_is_404_naming_the_request_id() -> None:
    routes = "      - match: {path_prefix: /api/}\n        backend: api\n"
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]}, routes)) as sy:
        r = await request(sy.port, "GET", "/other", headers=[("x-request-id", "rid-404")])
        assert r.status == 404
        assert r.header(
            "content-type",
        ).startswith("text/plain")
        assert b"rid-404" in r.body
        assert r.header("x-request-id") == "rid-404"
        assert s1.requests == []
        assert sy.records[0].status == 404
        r = await request(sy.port, "GET", "/api/x")
        assert r.status == 200


SMUGGLING = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "two_content_lengths": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "content_length_list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
    "invalid_chunk_size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
    "bare_lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare_lf_in_header": b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
    "bare_cr": b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "te_gzip": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "te_gzip_chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te_twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_on_http10": b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "no_host": b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
    "http2_version": b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    "chunk_bare_lf": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
    "nul_in_header": b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    "negative_length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "connect": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    "space_in_target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
async def test_ambiguous_requests_refused_and_never_forwarded(name: str) -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        # a valid request first on the same connection, then the bad one
        data = await _raw_exchange(
            sy.port, b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n" + SMUGGLING[name]
        )
        first, rest = data.split(b"\r\n\r\ns1", 1)
        assert _status(first) == 200
        assert _status(rest) == 400, rest
        assert b"connection: close" in rest.lower()
        assert [q.target for q in s1.requests] == ["/first"]  # nothing else reached it


async def test_uri_too_long_414() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        data = await _raw_exchange(
            sy.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        assert _status(data) == 414
        assert s1.requests == []


async def test_head_too_large_431() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        data = await _raw_exchange(
            sy.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n"
        )
        assert _status(data) == 431
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
        data = await _raw_exchange(sy.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")
        assert _status(data) == 431
        ok = b"".join(b"X-H%d: v\r\n" % i for i in range(98))
        data = await _raw_exchange(
            sy.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + ok + b"\r\n"
        )
        assert _status(data) == 200
        assert len(s1.requests) == 1


async def test_body_over_the_limit_413() -> None:
    async with http_backend("s1") as s1:
        cfg = proxy_config({"api": [s1]}, listener="    max_body_size: 1KiB")
        async with steelyard(cfg) as sy:
            r = await request(sy.port, "POST", "/echo", body=b"x" * 1024)
            assert r.status == 200
            data = await _raw_exchange(
                sy.port, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n\r\n"
            )
            assert _status(data) == 413
            assert len(s1.requests) == 1
            r = None
            with pytest.raises((ConnectionError, AssertionError)):
                r = await request(sy.port, "POST", "/echo", body=[b"x" * 600, b"y" * 600])
                assert r.status == 200
            assert r is None or r.status == 413


async def test_truncated_head_then_close_does_not_hang() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        raw = await RawClient.connect(sy.port)
        await raw.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Partial: ")
        await raw.close()
        for _ in range(100):
            if sy.listener().connections_active == 0:
                break
            await asyncio.sleep(0.02)
        assert sy.listener().connections_active == 0
        assert s1.requests == []
        assert (await request(sy.port)).status == 200


async def test_client_disconnects_mid_body() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        raw = await RawClient.connect(sy.port)
        await raw.send(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000
        )
        await asyncio.sleep(0.1)
        await raw.close()
        for _ in range(100):
            if sy.listener().connections_active == 0 and sy.records:
                break
            await asyncio.sleep(0.02)
        assert sy.listener().connections_active == 0
        [rec] = sy.records
        assert rec.status == 499
        server = sy.engine.backends["api"].servers["s1"]
        assert server.active == 0  # the lease was released
        assert server.failures_total == 0  # and not blamed on the server
        assert (await request(sy.port)).status == 200


async def test_every_connect_fails_503_with_retry_after() -> None:
    dead = [DeadServer("d1"), DeadServer("d2"), DeadServer("d3"), DeadServer("d4")]
    async with steelyard(proxy_config({"api": dead}, retries=2)) as sy:
        r = await request(sy.port)
        assert r.status == 503
        assert r.header("retry-after") is not None
        assert sy.records[0].retries == 2  # three servers tried


async def test_connect_failure_retried_on_another_server() -> None:
    async with http_backend("s1") as s1:
        dead = DeadServer("d1")
        async with steelyard(proxy_config({"api": [dead, s1]}, retries=1)) as sy:
            for _ in range(4):
                r = await request(sy.port)
                assert r.status == 200 and r.header("x-server") == "s1"
            assert any(rec.retries == 1 for rec in sy.records)


async def test_no_eligible_server_503() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        sy.engine.backends["api"].disable("s1")
        r = await request(sy.port)
        assert r.status == 503 and r.header("retry-after")
        assert s1.requests == []


async def test_upstream_reset_before_head_502() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        r = await request(sy.port, "GET", "/reset-before-head")
        assert r.status == 502
        assert r.header("x-request-id").encode() in r.body
        assert (await request(sy.port)).status == 200


async def test_upstream_reset_after_head_cuts_the_response() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        raw = await RawClient.connect(sy.port)
        await raw.send(b"GET /reset-after-head HTTP/1.1\r\nHost: a\r\n\r\n")
        data = await raw.read_until_close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert _status(head) == 200
        assert b"content-length: 100" in head.lower()
        assert body == b"0123456789"  # cut off, never completed
        with pytest.raises((ConnectionError, h11.RemoteProtocolError)):
            await request(sy.port, "GET", "/reset-after-head")
        assert (await request(sy.port)).status == 200


async def test_server_5xx_passes_through() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        r = await request(sy.port, "GET", "/status/503")
        assert r.status == 503 and r.body == b"s1"
        assert sy.engine.backends["api"].servers["s1"].failures_total == 1


async def test_redirect_and_respond_routes() -> None:
    routes = (
        "      - match: {path_prefix: /old/}\n"
        "        redirect: {to: 'https://{host}{path}?{query}', status: 308}\n"
        "      - match: {path_prefix: /maintenance}\n"
        "        respond: {status: 503, body: 'down {request_id} for {client_ip}'}\n"
        "      - match: {path_prefix: /}\n        backend: api\n"
    )
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]}, routes)) as sy:
        client = await H11Client.connect(sy.port)
        r = await client.request("GET", "/old/x?y=1", host="example.com")
        assert r.status == 308
        assert r.header("location") == "https://example.com/old/x?y=1"
        r = await client.request("GET", "/maintenance", headers=[("x-request-id", "m1")])
        assert r.status == 503 and r.body == b"down m1 for 127.0.0.1"
        r = await client.request("GET", "/")
        assert r.status == 200
        await client.close()
        assert len(s1.requests) == 1


async def test_local_reply_to_request_with_body_keeps_connection_in_step() -> None:
    routes = "      - match: {path_prefix: /api/}\n        backend: api\n"
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]}, routes)) as sy:
        raw = await RawClient.connect(sy.port)
        await raw.send(
            b"POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        data = await raw.read_until_close()
        assert [r.status for r in parse_responses(data)] == [404, 200]


async def test_backend_behaviour_close_after_response_not_reused() -> None:
    async with (
        http_backend("s1", Behaviour(close_after_response=True)) as s1,
        steelyard(proxy_config({"api": [s1]})) as sy,
    ):
        for _ in range(3):
            r = await request(sy.port)
            assert r.status == 200
            assert r.header("connection") is None  # hop-by-hop: not relayed
        assert s1.connections == 3


async def test_pipelined_bad_request_answered_after_the_good_ones() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        data = await _raw_exchange(
            sy.port,
            b"GET /delay/0.1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        )
        replies = parse_responses(data)
        assert [r.status for r in replies] == [200, 200, 400]
        assert [q.target for q in s1.requests] == ["/delay/0.1", "/echo"]


async def test_connect_timeout_is_retried_elsewhere_then_503() -> None:
    from tests.helpers.http_backends import BlackholeServer

    hole = BlackholeServer("hole")
    try:
        await asyncio.sleep(0.1)
        async with http_backend("s1") as s1:
            cfg = proxy_config({"api": [hole, s1]}, retries=1, timeouts={"connect": "200ms"})
            async with steelyard(cfg) as sy:
                for _ in range(2):
                    r = await request(sy.port)
                    assert r.status == 200 and r.header("x-server") == "s1"
                assert any(rec.retries == 1 for rec in sy.records)
                hole_state = sy.engine.backends["api"].servers["hole"]
                assert hole_state.failures_total >= 1
        cfg = proxy_config({"api": [hole]}, retries=0, timeouts={"connect": "200ms"})
        async with steelyard(cfg) as sy:
            r = await request(sy.port)
            assert r.status == 503 and r.header("retry-after")
    finally:
        hole.close()


async def test_registered_methods_pass_and_an_invented_one_is_400() -> None:
    # llhttp knows the registered methods (WebDAV, PURGE, ...); an invented token is refused
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        for method in ("PURGE", "PROPFIND", "MKCALENDAR", "PATCH"):
            data = await _raw_exchange(
                sy.port, f"{method} /m HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
            )
            assert _status(data) == 200, method
        assert [r.method for r in s1.requests] == ["PURGE", "PROPFIND", "MKCALENDAR", "PATCH"]
        data = await _raw_exchange(sy.port, b"FOO /m HTTP/1.1\r\nHost: a\r\n\r\n")
        assert _status(data) == 400
        assert len(s1.requests) == 4
