"""Health and draining behind an L4 (`protocol: tcp`) listener: checked servers, a killed
server avoided by new connections, and a drained server's long-lived connection cut after
drain_timeout."""

from __future__ import annotations

import asyncio
import functools

from tests.helpers.engine_setup import state_of, tcp_config, until
from tests.helpers.flaky_backend import flaky_backend

from steelyard.config import load_config_text
from steelyard.engine import Engine


async def get_once(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


CHECK = (
    "    health_check: {type: tcp, interval: 200ms, timeout: 100ms, "
    "healthy_threshold: 1, unhealthy_threshold: 1}\n"
)


async def test_l4_connections_avoid_an_unhealthy_server() -> None:
    async with flaky_backend("s1") as s1, flaky_backend("s2") as s2:
        engine = Engine(
            load_config_text(tcp_config([s1, s2], CHECK)), loop=asyncio.get_running_loop()
        )
        await engine.start()
        try:
            port = engine.bound["l4"][1]
            st = functools.partial(state_of, engine)

            await until(lambda: st("s1") == st("s2") == "healthy")
            await s1.kill()
            await until(lambda: st("s1") == "unhealthy")
            for _ in range(6):
                data = await get_once(port)
                assert data.startswith(b"HTTP/1.1 200")
                assert b"x-server: s2" in data
            await s1.revive()
            await until(lambda: st("s1") == "healthy")
            seen = set()
            for _ in range(6):
                data = await get_once(port)
                seen.add(b"x-server: s1" in data)
            assert seen == {True, False}
        finally:
            await engine.shutdown(1.0)


async def test_l4_drain_cuts_long_lived_connection_after_drain_timeout() -> None:
    async with flaky_backend("s1") as s1, flaky_backend("s2") as s2:
        text = tcp_config([s1, s2], "    drain_timeout: 300ms\n")
        engine = Engine(load_config_text(text), loop=asyncio.get_running_loop())
        await engine.start()
        try:
            port = engine.bound["l4"][1]
            backend = engine.backends["api"]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: stays open
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            busy = "s1" if b"x-server: s1" in head else "s2"
            await until(lambda: backend.servers[busy].active == 1)
            backend.drain(busy)
            # new connections go to the other server at once
            other = "s2" if busy == "s1" else "s1"
            assert f"x-server: {other}".encode() in await get_once(port)

            async def drained() -> None:
                while True:
                    try:
                        data = await reader.read(65536)
                    except ConnectionError:
                        return
                    if not data:
                        return

            await asyncio.wait_for(drained(), 10)
            await until(lambda: backend.servers[busy].active == 0)
            writer.close()
        finally:
            await engine.shutdown(1.0)
