"""Bodies stream with back-pressure: nothing is buffered whole."""

from __future__ import annotations

import asyncio

from tests.helpers.http_backends import (
    Behaviour,
    RawClient,
    http_backend,
    proxy_config,
    request,
    steelyard,
)

MiB = 1024 * 1024


async def test_slow_reader_pauses_the_upstream() -> None:
    size = 32 * MiB
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        raw = await RawClient.connect(sy.port)
        await raw.send(b"GET /big/%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
        listener = sy.listener()
        await asyncio.sleep(0.5)  # read nothing: every buffer on the way fills
        [down] = list(listener.connections)
        peak = 0
        got = 0
        head_seen = False
        buf = b""
        while True:
            data = await asyncio.wait_for(raw.reader.read(256 * 1024), 10)
            if not data:
                break
            if not head_seen:
                buf += data
                if b"\r\n\r\n" in buf:
                    head_seen = True
                    got = len(buf.split(b"\r\n\r\n", 1)[1])
            else:
                got += len(data)
            if not down.closed:
                peak = max(peak, down.transport.get_write_buffer_size())
            if got >= size:
                break
            await asyncio.sleep(0.001)
        await raw.close()
        assert got == size
        assert listener.upstream_read_pauses > 0  # the upstream leg was paused
        assert peak < 2 * MiB  # the proxy never held the body


async def test_slow_server_pauses_the_client() -> None:
    size = 32 * MiB
    async with (
        http_backend("s1", Behaviour(read_delay=1.0)) as s1,
        steelyard(proxy_config({"api": [s1]})) as sy,
    ):
        r = await request(
            sy.port, "POST", "/echo", body=[b"z" * MiB for _ in range(size // MiB)], timeout=60
        )
        assert r.status == 200
        assert len(r.json()["body"]) == size
        assert sy.listener().downstream_read_pauses > 0


async def test_body_buffered_while_connecting_is_bounded() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        body = b"q" * (3 * MiB)
        r = await request(sy.port, "POST", "/echo", body=body, timeout=30)
        assert r.status == 200 and len(r.json()["body"]) == len(body)
