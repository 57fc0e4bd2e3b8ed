"""Active health checks against real backends on 127.0.0.1 (net/health_check.py + core).

Timing is never asserted: "out within interval × unhealthy_threshold" is shown by counting
checks — the flip happens exactly at the unhealthy_threshold-th failing check in a row, and
checks run every interval — and every wait is a bounded poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.helpers.engine_setup import api_config, served, state_of, until
from tests.helpers.flaky_backend import FlakyBackend, RawTcpServer, flaky_backend
from tests.helpers.http_backends import request, steelyard

from steelyard.core.events import Event
from steelyard.core.proxy_protocol import encode_v1_unknown, encode_v2_local
from steelyard.net.health_check import CheckSpec, probe

INTERVAL = 0.2


def config(
    backends: list[FlakyBackend],
    *,
    check: str = "",
    extra: str = "",
) -> str:
    check = check or (
        f"{{type: http, path: /health, interval: {INTERVAL}s, timeout: 150ms, "
        "healthy_threshold: 2, unhealthy_threshold: 3}"
    )
    return api_config(backends, f"    health_check: {check}\n{extra}")


@contextlib.asynccontextmanager
async def two_backends() -> AsyncIterator[tuple[FlakyBackend, FlakyBackend]]:
    async with flaky_backend("s1") as s1, flaky_backend("s2") as s2:
        yield s1, s2


class FlipLog:
    """Health flips with the check counts at the moment they happened."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.flips: list[tuple[str, str, str, int, int]] = []
        engine.events.subscribe(self)

    def __call__(self, event: Event) -> None:
        if event.type != "health":
            return
        counts = self.engine.check_counts
        ok = counts.get(("api", event.server, "ok"), 0)
        fail = counts.get(("api", event.server, "fail"), 0)
        self.flips.append((event.server or "", event.state or "", event.reason or "", ok, fail))


async def test_server_goes_out_after_unhealthy_threshold_and_back_after_healthy_threshold() -> None:
    async with two_backends() as (s1, s2), steelyard(config([s1, s2])) as sy:
        engine = sy.engine
        flips = FlipLog(engine)
        await until(lambda: state_of(engine, "s1") == state_of(engine, "s2") == "healthy")
        replies = [await request(sy.port, "GET", "/") for _ in range(4)]
        assert sorted(r.header("x-server") for r in replies) == ["s1", "s1", "s2", "s2"]

        fails_before = engine.check_counts.get(("api", "s1", "fail"), 0)
        s1.health = "503"
        await until(lambda: state_of(engine, "s1") == "unhealthy", what="s1 out")
        server, state, reason, _, fails = flips.flips[-1]
        assert (server, state, reason) == ("s1", "unhealthy", "status 503")
        assert fails - fails_before == 3  # the flip came with the 3rd failing check
        last = engine.backends["api"].servers["s1"].last_check
        assert (last.ok, last.reason) == (False, "status 503")
        for _ in range(6):
            reply = await request(sy.port, "GET", "/")
            assert (reply.status, reply.header("x-server")) == (200, "s2")

        oks_before = engine.check_counts.get(("api", "s1", "ok"), 0)
        s1.health = "ok"
        await until(lambda: state_of(engine, "s1") == "healthy", what="s1 back")
        server, state, reason, oks, _ = flips.flips[-1]
        assert (server, state, reason) == ("s1", "healthy", "status 200")
        assert oks - oks_before == 2  # back with the 2nd passing check
        seen = {(await request(sy.port, "GET", "/")).header("x-server") for _ in range(6)}
        assert seen == {"s1", "s2"}


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("503", "status 503"),
        ("hang", "timeout"),
        ("reset", "connection reset"),
        ("garbage", "invalid response"),
        ("close", "connection closed before a response"),
        ("body", "body mismatch"),
    ],
)
async def test_failure_reasons(mode: str, reason: str) -> None:
    check = (
        f"{{type: http, path: /health, interval: {INTERVAL}s, timeout: 150ms, "
        "expect_body: 'all good', healthy_threshold: 1, unhealthy_threshold: 1}"
    )
    async with two_backends() as (s1, s2), steelyard(config([s1, s2], check=check)) as sy:
        engine = sy.engine
        await until(lambda: state_of(engine, "s1") == "healthy")
        s1.health = mode
        await until(lambda: state_of(engine, "s1") == "unhealthy", what=mode)
        last = engine.backends["api"].servers["s1"].last_check
        assert last.reason == reason
        assert last.ok is False
        assert abs(last.time - time.time()) < 60  # wall clock, for the admin API


async def test_connection_refused_and_revival() -> None:
    check = (
        f"{{type: http, path: /health, interval: {INTERVAL}s, timeout: 150ms, "
        "healthy_threshold: 1, unhealthy_threshold: 1}"
    )
    async with two_backends() as (s1, s2), steelyard(config([s1, s2], check=check)) as sy:
        engine = sy.engine
        await until(lambda: state_of(engine, "s1") == "healthy")
        await s1.kill()
        await until(lambda: state_of(engine, "s1") == "unhealthy")
        assert engine.backends["api"].servers["s1"].last_check.reason == "connection refused"
        await s1.revive()
        await until(lambda: state_of(engine, "s1") == "healthy")


async def test_unknown_takes_no_traffic_until_the_first_check_answers() -> None:
    check = (
        "{type: http, path: /health, interval: 2s, timeout: 1500ms, "
        "healthy_threshold: 2, unhealthy_threshold: 3}"
    )
    async with flaky_backend("s1") as s1:
        s1.health = "hang"
        async with steelyard(config([s1], check=check)) as sy:
            await until(lambda: s1.health_checks >= 1)
            assert state_of(sy.engine, "s1") == "unknown"
            reply = await request(sy.port, "GET", "/")
            assert reply.status == 503
            assert reply.header("retry-after") is not None
            assert served(s1) == 0


async def test_first_result_decides() -> None:
    # a timeout that a loaded test machine cannot hit: the first check of s1 timed out once at
    # 150 ms (pure-Python pass, eager GC, two workers) and rightly made s1 unhealthy
    check = (
        "{type: http, path: /health, interval: 2s, timeout: 1500ms, "
        "healthy_threshold: 2, unhealthy_threshold: 3}"
    )
    async with two_backends() as (s1, s2):
        s2.health = "503"
        async with steelyard(config([s1, s2], check=check)) as sy:
            engine = sy.engine
            await until(lambda: "unknown" not in (state_of(engine, "s1"), state_of(engine, "s2")))
            last = engine.backends["api"].servers["s1"].last_check
            assert state_of(engine, "s1") == "healthy", last
            assert state_of(engine, "s2") == "unhealthy"
            # one check each decided it, not a threshold's worth (the next checks are 2 s away)
            assert engine.check_counts[("api", "s1", "ok")] == 1
            assert engine.check_counts[("api", "s2", "fail")] == 1


async def test_tcp_check() -> None:
    check = (
        f"{{type: tcp, interval: {INTERVAL}s, timeout: 150ms, "
        "healthy_threshold: 1, unhealthy_threshold: 2}"
    )
    async with two_backends() as (s1, s2), steelyard(config([s1, s2], check=check)) as sy:
        engine = sy.engine
        await until(lambda: state_of(engine, "s1") == "healthy")
        assert engine.backends["api"].servers["s1"].last_check.reason == "connected"
        s1.health = "503"  # a tcp check does not look at HTTP
        await asyncio.sleep(INTERVAL * 3)
        assert state_of(engine, "s1") == "healthy"
        await s1.kill()
        await until(lambda: state_of(engine, "s1") == "unhealthy")
        await s1.revive()
        await until(lambda: state_of(engine, "s1") == "healthy")


async def test_check_counts_feed_metrics_and_host_header() -> None:
    check = (
        f"{{type: http, path: /health, host: health.example, interval: {INTERVAL}s, "
        "timeout: 150ms, expect_status: '200'}"
    )
    async with two_backends() as (s1, s2), steelyard(config([s1, s2], check=check)) as sy:
        engine = sy.engine
        await until(lambda: engine.check_counts.get(("api", "s1", "ok"), 0) >= 2)
        health = [r for r in s1.requests if r.target == "/health"]
        assert health
        assert health[0].header("host") == "health.example"
        assert health[0].header("connection") == "close"
        assert health[0].method == "GET"


async def test_checks_follow_admin_add_and_remove() -> None:
    async with two_backends() as (s1, s2), steelyard(config([s1])) as sy:
        engine = sy.engine
        backend = engine.backends["api"]
        await until(lambda: state_of(engine, "s1") == "healthy")
        from steelyard.core.balancing.base import Server

        backend.add_server(Server("s2", s2.host, s2.port))
        assert state_of(engine, "s2") == "unknown"
        await until(lambda: state_of(engine, "s2") == "healthy", what="added server checked")
        assert ("api", "s2") in engine.health.checks
        backend.remove_server("s2")
        await until(lambda: ("api", "s2") not in engine.health.checks)
        seen = s2.health_checks
        await asyncio.sleep(INTERVAL * 2)
        assert s2.health_checks == seen  # nobody checks a removed server


async def test_reload_restarts_changed_checks_and_keeps_health(tmp_path: Any) -> None:
    async with two_backends() as (s1, s2), steelyard(config([s1, s2])) as sy:
        engine = sy.engine
        await until(lambda: state_of(engine, "s1") == state_of(engine, "s2") == "healthy")
        from steelyard.config import load_config_text

        task_before = engine.health.checks[("api", "s1")].task
        same = load_config_text(config([s1, s2]))
        await engine.reload(same)
        assert engine.health.checks[("api", "s1")].task is task_before  # unchanged: kept
        assert state_of(engine, "s1") == "healthy"  # health carried over, no unknown gap
        changed = config([s1, s2]).replace("path: /health", "path: '/health?v=2'")
        await engine.reload(load_config_text(changed))
        assert engine.health.checks[("api", "s1")].task is not task_before
        assert state_of(engine, "s1") == "healthy"
        await until(lambda: any(r.target == "/health?v=2" for r in s1.requests))
        assert task_before.done()


async def test_stop_cancels_every_check() -> None:
    async with two_backends() as (s1, s2), steelyard(config([s1, s2])) as sy:
        supervisor = sy.engine.health
        await until(lambda: len(supervisor.checks) == 2)
        tasks = [c.task for c in supervisor.checks.values()]
        supervisor.stop()
        await supervisor.wait_stopped()
        assert all(t.done() for t in tasks)
        supervisor.sync()  # stopped: no new checks
        assert supervisor.checks == {}


def spec(port: int, kind: str = "tcp", proxy: str | None = None) -> CheckSpec:
    return CheckSpec(
        kind=kind,
        host="127.0.0.1",
        port=port,
        path="/",
        host_header=f"127.0.0.1:{port}",
        statuses=((200, 399),),
        expect_body=None,
        interval=1.0,
        timeout=0.5,
        tls=None,
        proxy_protocol=proxy,
    )


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_tcp_check_sends_a_proxy_protocol_local_header(version: str) -> None:
    server = RawTcpServer()
    await server.start()
    try:
        ok, reason = await probe(spec(server.port, "tcp", version))
        assert (ok, reason) == (True, "connected")
        await until(lambda: bool(server.first))
        expected = encode_v2_local() if version == "v2" else encode_v1_unknown()
        assert server.first[0] == expected
    finally:
        await server.stop()


async def test_probe_refused_on_a_closed_port() -> None:
    server = RawTcpServer()
    await server.start()
    port = server.port
    await server.stop()
    assert await probe(spec(port)) == (False, "connection refused")
    assert await probe(spec(port, "http")) == (False, "connection refused")


async def test_every_flip_is_logged_on_the_steelyard_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    check = (
        f"{{type: http, path: /health, interval: {INTERVAL}s, timeout: 150ms, "
        "healthy_threshold: 1, unhealthy_threshold: 1}"
    )
    caplog.set_level("INFO", logger="steelyard")
    async with two_backends() as (s1, s2), steelyard(config([s1, s2], check=check)) as sy:
        await until(lambda: state_of(sy.engine, "s1") == "healthy")
        s1.health = "503"
        await until(lambda: state_of(sy.engine, "s1") == "unhealthy")
    flips = [
        r.getMessage()
        for r in caplog.records
        if r.name == "steelyard" and r.getMessage().startswith("health ")
    ]
    assert "health backend=api server=s1 state=healthy reason=status 200" in flips
    assert "health backend=api server=s1 state=unhealthy reason=status 503" in flips


async def test_http_check_over_tls(tmp_path: Any) -> None:
    import ssl
    from types import SimpleNamespace

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("backend.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        from steelyard.net.health_check import _client_ssl_context

        def tls_spec(tls: Any) -> tuple[CheckSpec, Any]:
            s = spec(port, "http")
            s = CheckSpec(**{**{f: getattr(s, f) for f in s.__slots__}, "tls": tls})
            return s, _client_ssl_context(tls)

        good = SimpleNamespace(verify=True, ca=str(ca_path), server_name="backend.test")
        assert await probe(*tls_spec(good)) == (True, "status 200")
        lax = SimpleNamespace(verify=False, ca=None, server_name=None)
        assert await probe(*tls_spec(lax)) == (True, "status 200")
        strict = SimpleNamespace(verify=True, ca=None, server_name="backend.test")
        ok, reason = await probe(*tls_spec(strict))
        assert not ok
        assert reason.startswith("tls error")
    finally:
        server.close()
        await server.wait_closed()
