"""Draining a server end to end: admin drain and removal, in-flight work finishing, the
drain_timeout cut, and kept-alive upstream connections not being reused."""

from __future__ import annotations

import asyncio

from tests.helpers.engine_setup import api_config, served, until
from tests.helpers.flaky_backend import flaky_backend
from tests.helpers.http_backends import H11Client, request, steelyard


async def test_drain_stops_new_requests_and_lets_in_flight_finish() -> None:
    async with (
        flaky_backend("s1") as s1,
        flaky_backend("s2") as s2,
        steelyard(api_config([s1, s2], "    drain_timeout: 30s\n")) as sy,
    ):
        backend = sy.engine.backends["api"]
        # warm a keep-alive upstream connection to each server
        for _ in range(4):
            assert (await request(sy.port, "GET", "/")).status == 200
        pinned = asyncio.create_task(request(sy.port, "GET", "/delay/0.5"))
        await until(lambda: backend.servers["s1"].active + backend.servers["s2"].active == 1)
        busy = "s1" if backend.servers["s1"].active else "s2"
        busy_backend, other = (s1, s2) if busy == "s1" else (s2, s1)
        backend.drain(busy)
        before = served(busy_backend)
        connections = busy_backend.connections
        replies = [await request(sy.port, "GET", "/") for _ in range(6)]
        assert {r.header("x-server") for r in replies} == {other.name}
        reply = await pinned
        assert (reply.status, reply.header("x-server")) == (200, busy)
        assert served(busy_backend) == before  # nothing new reached it
        assert busy_backend.connections == connections  # no new connection either
        state = backend.servers[busy]
        assert state.state(sy.engine.clock()) == "draining"  # until enabled
        assert state.active == 0
        backend.enable(busy)
        seen = {(await request(sy.port, "GET", "/")).header("x-server") for _ in range(4)}
        assert seen == {"s1", "s2"}


async def test_drain_timeout_cuts_what_is_left() -> None:
    async with (
        flaky_backend("s1") as s1,
        flaky_backend("s2") as s2,
        steelyard(api_config([s1, s2], "    drain_timeout: 300ms\n")) as sy,
    ):
        backend = sy.engine.backends["api"]
        client = await H11Client.connect(sy.port)
        stuck = asyncio.create_task(client.request("GET", "/delay/30", timeout=20))
        await until(lambda: any(s.active for s in backend.servers.values()))
        busy = next(s.name for s in backend.servers.values() if s.active)
        backend.drain(busy)
        try:
            reply = await stuck
        except ConnectionError:
            pass  # cut after the head went out would close; here the head never came
        else:
            assert reply.status == 502
        await until(lambda: backend.servers[busy].active == 0, what="lease released")
        await client.close()


async def test_removed_server_is_listed_draining_until_idle_then_gone() -> None:
    async with (
        flaky_backend("s1") as s1,
        flaky_backend("s2") as s2,
        steelyard(api_config([s1, s2], "    drain_timeout: 30s\n")) as sy,
    ):
        backend = sy.engine.backends["api"]
        pinned = asyncio.create_task(request(sy.port, "GET", "/delay/0.5"))
        await until(lambda: any(s.active for s in backend.servers.values()))
        busy = next(s.name for s in backend.servers.values() if s.active)
        backend.remove_server(busy)
        assert backend.servers[busy].state(sy.engine.clock()) == "draining"
        assert (await pinned).status == 200
        await until(lambda: busy not in backend.servers, what="removed once idle")
        replies = [await request(sy.port, "GET", "/") for _ in range(4)]
        assert all(r.status == 200 and r.header("x-server") != busy for r in replies)


async def test_disabled_server_is_out_at_once_but_in_flight_finishes() -> None:
    async with (
        flaky_backend("s1") as s1,
        flaky_backend("s2") as s2,
        steelyard(api_config([s1, s2])) as sy,
    ):
        backend = sy.engine.backends["api"]
        pinned = asyncio.create_task(request(sy.port, "GET", "/delay/0.3"))
        await until(lambda: any(s.active for s in backend.servers.values()))
        busy = next(s.name for s in backend.servers.values() if s.active)
        backend.disable(busy)
        replies = [await request(sy.port, "GET", "/") for _ in range(4)]
        assert all(r.header("x-server") != busy for r in replies)
        assert (await pinned).status == 200
