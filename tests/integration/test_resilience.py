"""Resilience end to end: retries on a different server, 503 + Retry-After, passive outlier
detection on real traffic (ejection, cap, return after a passing check), connection caps
with a bounded wait queue. Real sockets, real backends (tests/helpers)."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from typing import Any

from tests.helpers.engine_setup import api_config, served, state_of, until
from tests.helpers.flaky_backend import FlakyBackend, flaky_backend
from tests.helpers.http_backends import Behaviour, H11Client, request, steelyard


class Backends:
    def __init__(self, *names: str) -> None:
        self.names = names
        self.items: list[FlakyBackend] = []
        self._cms: list[Any] = []

    async def __aenter__(self) -> list[FlakyBackend]:
        for name in self.names:
            cm = flaky_backend(name)
            self._cms.append(cm)
            self.items.append(await cm.__aenter__())
        return self.items

    async def __aexit__(self, *exc: object) -> None:
        for cm in reversed(self._cms):
            await cm.__aexit__(None, None, None)


# -- retries -------------------------------------------------------------------------------


async def test_connect_failure_is_retried_on_a_different_server() -> None:
    async with Backends("s1", "s2", "s3") as (s1, s2, s3):
        await s1.kill()
        async with steelyard(api_config([s1, s2, s3], "    retries: 2\n")) as sy:
            for _ in range(12):
                reply = await request(sy.port, "GET", "/")
                assert reply.status == 200
                assert reply.header("x-server") in ("s2", "s3")
            retried = [r for r in sy.records if r.retries]
            assert retried
            assert all(r.server in ("s2", "s3") for r in sy.records)


async def test_every_connect_refused_is_503_with_retry_after() -> None:
    async with Backends("s1", "s2") as (s1, s2):
        await s1.kill()
        await s2.kill()
        async with steelyard(api_config([s1, s2], "    retries: 5\n")) as sy:
            reply = await request(sy.port, "GET", "/")
            assert reply.status == 503
            assert reply.header("retry-after") is not None
            # both servers tried, never the same twice: one first try, one retry
            assert sy.records[-1].retries == 1
            assert sy.records[-1].server in ("s1", "s2")


async def test_nothing_eligible_is_503_at_once_with_retry_after() -> None:
    async with Backends("s1", "s2") as (s1, s2), steelyard(api_config([s1, s2])) as sy:
        backend = sy.engine.backends["api"]
        backend.disable("s1")
        backend.drain("s2")
        reply = await request(sy.port, "GET", "/")
        assert reply.status == 503
        assert reply.header("retry-after") is not None
        assert served(s1) == served(s2) == 0


async def test_idempotent_request_reset_before_the_response_is_retried_elsewhere() -> None:
    async with Backends("s1", "s2") as (s1, s2):
        s1.behaviour = Behaviour(reset_before_head=True)
        async with steelyard(api_config([s1, s2], "    retries: 1\n")) as sy:
            for _ in range(6):
                reply = await request(sy.port, "GET", "/")
                assert (reply.status, reply.header("x-server")) == (200, "s2")
            assert served(s1) >= 1  # s1 was tried and reset


async def test_request_with_a_streamed_body_is_not_replayed_after_reaching_a_server() -> None:
    async with Backends("s1", "s2") as (s1, s2):
        s1.behaviour = Behaviour(reset_before_head=True)
        s2.behaviour = Behaviour(reset_before_head=True)
        async with steelyard(api_config([s1, s2], "    retries: 1\n")) as sy:
            reply = await request(sy.port, "POST", "/echo", body=b"x" * 10)
            assert reply.status == 502
            assert served(s1) + served(s2) == 1  # reached one server, not replayed


async def test_response_timeout_is_504_and_not_retried() -> None:
    async with Backends("s1", "s2") as (s1, s2):
        extra = "    retries: 2\n    timeouts: {connect: 1s, response: 200ms, idle: 1s}\n"
        async with steelyard(api_config([s1, s2], extra)) as sy:
            reply = await request(sy.port, "GET", "/delay/2")
            assert reply.status == 504
            assert served(s1) + served(s2) == 1


# -- passive outlier detection -------------------------------------------------------------

OUTLIER = (
    "    outlier_detection: {consecutive_failures: 3, base_ejection_time: 30s, "
    "max_ejection_percent: 50}\n"
)


async def test_server_5xx_ejects_after_consecutive_failures() -> None:
    async with Backends("s1", "s2") as (s1, s2):
        s1.behaviour = Behaviour(status=500)
        async with steelyard(api_config([s1, s2], OUTLIER)) as sy:
            statuses = Counter()
            for _ in range(30):
                reply = await request(sy.port, "GET", "/")
                statuses[(reply.header("x-server"), reply.status)] += 1
            assert statuses[("s1", 500)] == 3  # at most consecutive_failures reached it
            assert statuses[("s2", 200)] == 27
            state = sy.engine.backends["api"].servers["s1"]
            assert state.state(sy.engine.clock()) == "ejected"
            assert [e.server for e in sy.engine.events.history if e.type == "ejection"] == ["s1"]


async def test_steelyards_own_errors_do_not_eject() -> None:
    async with Backends("s1", "s2") as (s1, s2):
        extra = OUTLIER + "    timeouts: {connect: 1s, response: 5s, idle: 1s}\n"
        async with steelyard(api_config([s1, s2], extra)) as sy:
            for _ in range(6):
                # the client goes away mid-request: CANCELLED, not a server failure
                client = await H11Client.connect(sy.port)
                client.writer.write(b"GET /delay/0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
                await client.writer.drain()
                await asyncio.sleep(0.05)
                await client.close()
            await until(lambda: served(s1) + served(s2) >= 6)
            await asyncio.sleep(0.4)
            backend = sy.engine.backends["api"]
            now = sy.engine.clock()
            assert all(s.state(now) == "healthy" for s in backend.servers.values())


async def test_ejection_cap_holds_end_to_end() -> None:
    async with Backends("s1", "s2", "s3", "s4") as servers:
        for b in servers:
            b.behaviour = Behaviour(status=503)
        extra = (
            "    outlier_detection: {consecutive_failures: 2, base_ejection_time: 30s, "
            "max_ejection_percent: 50}\n"
        )
        async with steelyard(api_config(servers, extra)) as sy:
            for _ in range(40):
                await request(sy.port, "GET", "/")
            backend = sy.engine.backends["api"]
            now = sy.engine.clock()
            ejected = [s.name for s in backend.servers.values() if s.state(now) == "ejected"]
            assert len(ejected) == 2


async def test_ejected_server_returns_only_after_time_up_and_a_passing_check() -> None:
    async with Backends("s1", "s2") as (s1, s2):
        extra = (
            "    health_check: {type: http, path: /health, interval: 200ms, timeout: 100ms, "
            "healthy_threshold: 1, unhealthy_threshold: 5}\n"
            "    outlier_detection: {consecutive_failures: 2, base_ejection_time: 300ms, "
            "max_ejection_percent: 50}\n"
        )
        async with steelyard(api_config([s1, s2], extra)) as sy:
            engine = sy.engine
            st = functools.partial(state_of, engine)

            await until(lambda: st("s1") == st("s2") == "healthy")
            s1.behaviour = Behaviour(status=500)
            s1.health = "503"  # its checks fail too, but fewer than unhealthy_threshold
            for _ in range(10):
                await request(sy.port, "GET", "/")
            assert st("s1") == "ejected"
            await until(
                lambda: any(e.type == "awaiting_check" for e in engine.events.history),
                what="ejection time up",
            )
            assert st("s1") == "ejected"  # time is up, but no check has passed
            s1.behaviour = Behaviour()
            s1.health = "ok"
            await until(lambda: st("s1") == "healthy", what="back after a passing check")
            returns = [e for e in engine.events.history if e.type == "return"]
            assert returns[-1].reason == "check passed after ejection"


# -- connection caps and the wait queue ----------------------------------------------------


async def test_at_the_cap_requests_wait_in_the_queue_and_all_succeed() -> None:
    async with Backends("s1") as (s1,):
        extra = "    max_connections_per_server: 1\n    queue_timeout: 5s\n"
        async with steelyard(api_config([s1], extra)) as sy:
            replies = await asyncio.gather(
                *(request(sy.port, "GET", "/delay/0.2") for _ in range(4))
            )
            assert [r.status for r in replies] == [200] * 4
            assert sy.engine.backends["api"].servers["s1"].active == 0


async def test_queue_timeout_gives_503() -> None:
    async with Backends("s1") as (s1,):
        extra = "    max_connections_per_server: 1\n    queue_timeout: 200ms\n"
        async with steelyard(api_config([s1], extra)) as sy:
            slow = asyncio.create_task(request(sy.port, "GET", "/delay/1.5"))
            await until(lambda: sy.engine.backends["api"].servers["s1"].active == 1)
            reply = await request(sy.port, "GET", "/")
            assert reply.status == 503
            assert reply.header("retry-after") is not None
            assert (await slow).status == 200
            assert sy.engine.backends["api"].queued == 0


async def test_an_ejected_server_is_checked_at_once_when_its_time_is_up() -> None:
    async with Backends("s1", "s2") as (s1, s2):
        extra = (
            # checks far apart: only the prompt check can bring s1 back within the test
            "    health_check: {type: http, path: /health, interval: 60s, timeout: 1s, "
            "healthy_threshold: 1, unhealthy_threshold: 5}\n"
            "    outlier_detection: {consecutive_failures: 2, base_ejection_time: 300ms, "
            "max_ejection_percent: 50}\n"
        )
        async with steelyard(api_config([s1, s2], extra)) as sy:
            engine = sy.engine
            st = functools.partial(state_of, engine)

            await until(lambda: st("s1") == st("s2") == "healthy")
            checks_before = s1.health_checks
            s1.behaviour = Behaviour(status=500)
            for _ in range(6):
                await request(sy.port, "GET", "/")
            assert st("s1") == "ejected"
            s1.behaviour = Behaviour()
            await until(lambda: st("s1") == "healthy", what="prompt check after the ejection")
            assert s1.health_checks == checks_before + 1
