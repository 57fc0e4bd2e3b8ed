"""Graceful shutdown: stop accepting at once, let in-flight requests finish up to
shutdown_timeout, cut the rest, exit 0 (in-process Engine and a real SIGTERM)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import h11
import pytest
from tests.helpers.engine_setup import api_config, start_engine, until
from tests.helpers.flaky_backend import flaky_backend
from tests.helpers.http_backends import H11Client, request
from tests.helpers.steelyard_process import SteelyardProcess

# what a client sees when its connection is closed before the response
CUT = (ConnectionError, asyncio.IncompleteReadError, h11.RemoteProtocolError)


async def test_shutdown_stops_accepting_and_lets_in_flight_finish() -> None:
    async with flaky_backend("s1") as s1:
        engine, port = await start_engine(api_config([s1]))
        try:
            slow = asyncio.create_task(request(port, "GET", "/delay/0.5"))
            await until(lambda: engine.backends["api"].servers["s1"].active == 1)
            idle = await H11Client.connect(port)
            await asyncio.sleep(0.05)
            stopping = asyncio.create_task(engine.shutdown(5.0))
            await asyncio.sleep(0.05)
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
            reply = await slow
            assert reply.status == 200
            assert reply.header("connection") == "close"
            # an idle keep-alive connection is closed, not left hanging
            assert await asyncio.wait_for(idle.reader.read(), 5) == b""
            await asyncio.wait_for(stopping, 10)
            assert engine.health is None or engine.health.stopped
        finally:
            await engine.shutdown(0.1)


async def test_shutdown_timeout_cuts_what_is_left() -> None:
    async with flaky_backend("s1") as s1:
        engine, port = await start_engine(api_config([s1]))
        try:
            client = await H11Client.connect(port)
            stuck = asyncio.create_task(client.request("GET", "/delay/30", timeout=20))
            await until(lambda: engine.backends["api"].servers["s1"].active == 1)
            await asyncio.wait_for(engine.shutdown(0.3), 10)
            with pytest.raises(CUT):
                await stuck
        finally:
            await engine.shutdown(0.1)


async def test_shutdown_stops_health_checks() -> None:
    async with flaky_backend("s1") as s1:
        check = "    health_check: {type: http, path: /health, interval: 100ms, timeout: 50ms}\n"
        engine, _ = await start_engine(api_config([s1], check))
        await until(lambda: s1.health_checks >= 2)
        tasks = [c.task for c in engine.health.checks.values()]
        await engine.shutdown(1.0)
        await engine.health.wait_stopped()
        assert all(t.done() for t in tasks)
        seen = s1.health_checks
        await asyncio.sleep(0.3)
        assert s1.health_checks == seen


async def test_sigterm_finishes_in_flight_and_exits_0(tmp_path: Path) -> None:
    async with flaky_backend("s1") as s1:
        path = tmp_path / "steelyard.yaml"
        path.write_text(
            api_config(
                [s1],
                top=f"shutdown_timeout: 10s\nlog: {{access: {tmp_path / 'access.log'}}}\n",
            )
        )
        with SteelyardProcess(path) as sy:
            port = await asyncio.to_thread(sy.port, "web")
            assert (await request(port, "GET", "/")).status == 200
            slow = asyncio.create_task(request(port, "GET", "/delay/0.7"))
            await until(lambda: any(r.target == "/delay/0.7" for r in s1.requests))
            sy.send(signal.SIGTERM)
            reply = await slow
            assert reply.status == 200
            assert await asyncio.to_thread(sy.wait, 20) == 0
            lines = "\n".join(sy.lines)
            assert "shutting down" in lines


async def test_sigterm_cuts_after_shutdown_timeout_and_still_exits_0(tmp_path: Path) -> None:
    async with flaky_backend("s1") as s1:
        path = tmp_path / "steelyard.yaml"
        path.write_text(
            api_config(
                [s1],
                top=f"shutdown_timeout: 300ms\nlog: {{access: {tmp_path / 'access.log'}}}\n",
            )
        )
        with SteelyardProcess(path) as sy:
            port = await asyncio.to_thread(sy.port, "web")
            client = await H11Client.connect(port)
            stuck = asyncio.create_task(client.request("GET", "/delay/30", timeout=20))
            await until(lambda: any(r.target == "/delay/30" for r in s1.requests))
            sy.send(signal.SIGTERM)
            with pytest.raises(CUT):
                await stuck
            assert await asyncio.to_thread(sy.wait, 20) == 0
