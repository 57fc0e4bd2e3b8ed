"""The HTTP/1.1 proxy end to end: real sockets, h11 test backends and h11 clients as oracles."""

from __future__ import annotations

import asyncio

import h11
from tests.helpers.http_backends import (
    H11Client,
    RawClient,
    http_backend,
    open_echo_tunnel,
    parse_responses,
    proxy_config,
    request,
    steelyard,
)


async def test_forwards_and_names_the_server() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        r = await request(sy.port, "GET", "/hello?x=1")
        assert r.status == 200
        assert r.header("x-server") == "s1"
        assert r.body == b"s1"
        assert s1.requests[0].target == "/hello?x=1"
        assert s1.requests[0].method == "GET"
        [rec] = sy.records
        assert (rec.status, rec.backend, rec.server, rec.path) == (200, "api", "s1", "/hello?x=1")


async def test_round_robin_over_servers() -> None:
    async with (
        http_backend("s1") as s1,
        http_backend("s2") as s2,
        steelyard(proxy_config({"api": [s1, s2]})) as sy,
    ):
        names = [(await request(sy.port)).header("x-server") for _ in range(4)]
        assert sorted(names) == ["s1", "s1", "s2", "s2"]
        assert names[0] != names[1]


async def test_forwarded_headers() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        r = await request(
            sy.port,
            "GET",
            "/echo",
            host="app.example:8080",
            headers=[
                ("X-Forwarded-For", "203.0.113.7"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "evil.example"),
            ],
        )
        seen = s1.requests[0]
        assert seen.header_all("x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
        assert seen.header_all("x-forwarded-proto") == ["http"]
        assert seen.header_all("x-forwarded-host") == ["app.example:8080"]
        assert seen.header("host") == "app.example:8080"
        assert r.status == 200


async def test_request_id_kept_when_valid_and_echoed() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        r = await request(sy.port, "GET", "/", headers=[("X-Request-Id", "abc.DEF_1-2")])
        assert r.header("x-request-id") == "abc.DEF_1-2"
        assert s1.requests[0].header_all("x-request-id") == ["abc.DEF_1-2"]
        assert sy.records[0].request_id == "abc.DEF_1-2"


async def test_request_id_generated_when_invalid() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        for bad in ("x" * 129, "a b", "id/1", "semi;colon"):
            r = await request(sy.port, "GET", "/", headers=[("X-Request-Id", bad)])
            rid = r.header("x-request-id")
            assert rid and rid != bad and len(rid) <= 128
            assert s1.requests[-1].header_all("x-request-id") == [rid]
        r1 = await request(sy.port)
        r2 = await request(sy.port)
        assert r1.header("x-request-id") != r2.header("x-request-id")


async def test_hop_by_hop_removed_upstream() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        raw = await RawClient.connect(sy.port)
        await raw.send(
            b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Private\r\n"
            b"X-Private: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
            b"TE: trailers\r\nTrailer: x-t\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n"
        )
        r = await raw.read_response()
        await raw.close()
        assert r.status == 200
        names = {n for n, _ in s1.requests[0].headers}
        for hop in ("connection", "x-private", "keep-alive", "proxy-connection", "te", "trailer"):
            assert hop not in names, hop
        assert "upgrade" not in names
        assert s1.requests[0].header("x-kept") == "yes"


async def test_hop_by_hop_removed_downstream() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        r = await request(sy.port, "GET", "/hop")
        assert r.status == 200 and r.body == b"ok"
        names = [n for n, _ in r.headers]
        for hop in ("x-secret", "keep-alive", "proxy-connection", "trailer", "upgrade", "te"):
            assert hop not in names, hop
        assert r.header_all("x-request-id") != ["from-server"]
        assert len(r.header_all("x-request-id")) == 1


async def test_keep_alive_downstream_and_pooled_upstream() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        client = await H11Client.connect(sy.port)
        for i in range(10):
            r = await client.request("GET", f"/n{i}")
            assert r.status == 200 and r.body == b"s1"
        await client.close()
        assert sy.listener().accepted == 1
        assert s1.connections == 1  # one upstream connection carried all ten
        # fresh client connections reuse the pooled upstream connection too
        for _ in range(5):
            assert (await request(sy.port)).status == 200
        assert s1.connections == 1
        assert sy.engine.pools.reuses >= 14


async def test_stale_pooled_connection_is_not_used() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        assert (await request(sy.port)).status == 200
        assert sy.engine.pools.idle_count() == 1
        s1.close_idle_connections()  # the server's keep-alive timeout
        for _ in range(50):
            if sy.engine.pools.idle_count() == 0:
                break
            await asyncio.sleep(0.02)
        assert sy.engine.pools.idle_count() == 0
        r = await request(sy.port)
        assert r.status == 200
        assert s1.connections == 2


async def test_pipelined_requests_answered_in_order() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        raw = await RawClient.connect(sy.port)
        await raw.send(
            b"GET /delay/0.2 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /status/202 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        data = await raw.read_until_close()
        replies = parse_responses(data)
        assert [r.status for r in replies] == [200, 201, 200, 202]
        assert replies[2].json()["body"] == "hello"
        assert [q.target for q in s1.requests] == [
            "/delay/0.2",
            "/status/201",
            "/echo",
            "/status/202",
        ]


async def test_chunked_request_streamed_with_trailers() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        r = await request(
            sy.port,
            "POST",
            "/echo",
            body=[b"one-", b"two-", b"three"],
            trailers=[("x-digest", "abc")],
        )
        assert r.status == 200
        echo = r.json()
        assert echo["body"] == "one-two-three"
        assert ["x-digest", "abc"] in echo["trailers"]
        assert s1.requests[0].header("transfer-encoding") == "chunked"


async def test_chunked_response_with_trailers() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        r = await request(sy.port, "GET", "/chunked")
        assert r.body == b"abbccc"
        assert ("x-checksum", "42") in r.trailers
        assert r.header("transfer-encoding") == "chunked"


async def test_close_delimited_response() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        client = await H11Client.connect(sy.port)
        r = await client.request("GET", "/no-length")
        assert r.body == b"s1"
        assert r.header("transfer-encoding") == "chunked"  # re-framed for an HTTP/1.1 client
        r = await client.request("GET", "/")  # and the client connection lives on
        assert r.status == 200
        await client.close()
        raw = await RawClient.connect(sy.port)
        await raw.send(b"GET /no-length HTTP/1.0\r\n\r\n")
        data = await raw.read_until_close()
        assert data.endswith(b"\r\n\r\ns1")
        assert b"transfer-encoding" not in data.lower()


async def test_head_204_304_framing() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        client = await H11Client.connect(sy.port)
        r = await client.request("HEAD", "/")
        assert r.status == 200 and r.body == b""
        assert r.header("content-length") == "2"
        r = await client.request("HEAD", "/head-only")
        assert r.status == 200 and r.body == b""
        r = await client.request("GET", "/status/204")
        assert r.status == 204 and r.body == b""
        r = await client.request("GET", "/status/304")
        assert r.status == 304 and r.body == b""
        r = await client.request("GET", "/")
        assert r.status == 200 and r.body == b"s1"
        await client.close()
        assert sy.listener().accepted == 1


async def test_expect_100_continue_relayed() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        raw = await RawClient.connect(sy.port)
        await raw.send(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        line = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
        assert line.startswith(b"HTTP/1.1 100 ")
        await raw.send(b"data")
        r = await raw.read_response()
        assert r.status == 200 and r.json()["body"] == "data"
        await raw.close()


async def test_upgrade_becomes_a_tunnel() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        raw, head = await open_echo_tunnel(sy.port, b"early")
        assert b"upgrade: echo" in head.lower()
        assert await raw.read_exactly(5) == b"EARLY"
        await raw.send(b"hello")
        assert await raw.read_exactly(5) == b"HELLO"
        await raw.close()
        for _ in range(100):
            if not sy.listener().connections:
                break
            await asyncio.sleep(0.02)
        assert sy.listener().connections_active == 0
        assert sy.records[-1].status == 101


async def test_http10_client() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        raw = await RawClient.connect(sy.port)
        await raw.send(b"GET / HTTP/1.0\r\n\r\n")
        data = await raw.read_until_close()
        assert data.startswith(b"HTTP/1.1 200 ")
        assert data.endswith(b"\r\n\r\ns1")
        assert b"connection: close" in data.lower()
        raw = await RawClient.connect(sy.port)
        await raw.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = await raw.read_response()
        assert r.header("connection") == "keep-alive"
        await raw.send(b"GET / HTTP/1.0\r\n\r\n")
        data = await raw.read_until_close()
        assert data.endswith(b"s1")


async def test_large_bodies_both_ways() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        body = bytes(range(256)) * 4096  # 1 MiB
        r = await request(sy.port, "POST", "/echo", body=body, timeout=30)
        assert r.json()["body"].encode("latin-1") == body
        r = await request(sy.port, "GET", f"/big/{3 * 1024 * 1024}", timeout=30)
        assert len(r.body) == 3 * 1024 * 1024
        r = await request(sy.port, "GET", f"/stream/{2 * 1024 * 1024 + 5}", timeout=30)
        assert len(r.body) == 2 * 1024 * 1024 + 5


async def test_h11_accepts_what_we_send_downstream() -> None:
    """h11 as the oracle: every response on a kept-alive connection parses cleanly."""
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        client = await H11Client.connect(sy.port)
        for target in ("/", "/chunked", "/no-length", "/status/204", "/hop", "/echo"):
            r = await client.request("GET", target)
            assert r.status in (200, 204)
            assert client.conn.our_state is h11.DONE and client.conn.their_state is h11.DONE
        await client.close()


async def test_upgrade_refused_by_the_server_closes_after_the_answer() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        raw = await RawClient.connect(sy.port)
        await raw.send(
            b"GET /status/400 HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"  # after an upgrade request: tunnel bytes
        )
        data = await raw.read_until_close()
        replies = parse_responses(data)
        assert [r.status for r in replies] == [400]
        assert replies[0].header("connection") == "close"
        assert [q.target for q in s1.requests] == ["/status/400"]


async def test_pipelined_upgrade_behind_a_request() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        raw = await RawClient.connect(sy.port)
        await raw.send(
            b"GET /delay/0.1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /upgrade HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nhi"
        )
        data = b""
        while not data.endswith(b"\r\n\r\nHI"):
            more = await asyncio.wait_for(raw.reader.read(65536), 5)
            assert more, data
            data += more
        first, _, rest = data.partition(b"\r\n\r\ns1")
        assert first.startswith(b"HTTP/1.1 200 ")
        assert rest.startswith(b"HTTP/1.1 101 ")
        await raw.close()
