"""net/timers.py: the timer wheel behind the HTTP connections' timeouts, on a real loop (uvloop
and the stdlib one), and the listener's use of it: one entry per open connection, none once
it closed, and a timeout that fires neither early nor much later than asked."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from tests.helpers.http_backends import RawClient, http_backend, proxy_config, steelyard

from steelyard.net.timers import RESOLUTION, TimerWheel

LOOP_FACTORIES = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


class Owner:
    def __init__(self, loop: asyncio.AbstractEventLoop, name: str = "") -> None:
        self.loop = loop
        self.name = name
        self.calls: list[tuple[int, float]] = []  # (tick, loop time)
        self.fired = asyncio.Event()

    def on_deadline(self, tick: int) -> None:
        self.calls.append((tick, self.loop.time()))
        self.fired.set()


async def wait(owner: Owner, timeout: float = 5.0) -> None:
    await asyncio.wait_for(owner.fired.wait(), timeout)


async def test_a_deadline_fires_once_not_before_it_and_within_a_tick_or_so() -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    owner = Owner(loop)
    deadline = loop.time() + 0.2
    tick = wheel.add(deadline, owner)
    assert tick * RESOLUTION >= deadline
    await wait(owner)
    [(got, at)] = owner.calls
    assert got == tick
    assert at >= deadline - 0.002  # loop clocks step by 1 ms
    assert at < deadline + RESOLUTION + 0.5  # generous: CI machines stall
    await asyncio.sleep(3 * RESOLUTION)
    assert len(owner.calls) == 1
    assert wheel.pending() == 0


async def test_a_discarded_owner_is_not_called_and_the_others_in_its_bucket_are() -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    deadline = loop.time() + 0.1
    owners = [Owner(loop, str(i)) for i in range(5)]
    ticks = [wheel.add(deadline, o) for o in owners]
    assert len(set(ticks)) == 1  # one bucket
    assert wheel.pending() == 5
    wheel.discard(ticks[2], owners[2])
    wheel.discard(ticks[2] + 7, owners[3])  # the wrong tick: no effect
    assert wheel.pending() == 4
    for i in (0, 1, 3, 4):
        await wait(owners[i])
    await asyncio.sleep(3 * RESOLUTION)
    assert owners[2].calls == []
    assert [len(o.calls) for o in owners] == [1, 1, 0, 1, 1]


async def test_an_earlier_deadline_added_later_is_not_held_up_by_a_later_one() -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    late, early = Owner(loop, "late"), Owner(loop, "early")
    start = loop.time()
    late_tick = wheel.add(start + 30, late)
    wheel.add(start + 0.1, early)
    await wait(early)
    assert early.calls[0][1] - start < 5
    assert late.calls == []
    assert wheel.pending() == 1
    wheel.discard(late_tick, late)
    assert wheel.pending() == 0


async def test_deadlines_fire_in_order_of_their_ticks() -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    order: list[str] = []
    done = asyncio.Event()

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def on_deadline(self, tick: int) -> None:
            order.append(self.name)
            if len(order) == 3:
                done.set()

    now = loop.time()
    for name, delay in (("c", 0.3), ("a", 0.05), ("b", 0.15)):
        wheel.add(now + delay, Recorder(name))
    await asyncio.wait_for(done.wait(), 5)
    assert order == ["a", "b", "c"]


async def test_an_owner_that_raises_does_not_cost_the_others_their_deadlines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)

    class Broken:
        def on_deadline(self, tick: int) -> None:
            raise RuntimeError("boom")

    deadline = loop.time() + 0.05
    wheel.add(deadline, Broken())
    good = Owner(loop)
    wheel.add(deadline, good)
    await wait(good)
    assert "error in a timeout handler" in caplog.text


async def test_an_owner_rearming_for_a_passed_deadline_is_called_again_on_a_later_fire() -> None:
    """Re-adding from inside on_deadline lands in a new bucket, so one fire always ends."""
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    calls: list[int] = []
    done = asyncio.Event()

    class Again:
        def on_deadline(self, tick: int) -> None:
            calls.append(tick)
            if len(calls) < 3:
                wheel.add(loop.time() - 1.0, self)  # already due
            else:
                done.set()

    wheel.add(loop.time(), Again())
    await asyncio.wait_for(done.wait(), 5)
    assert len(calls) == 3
    assert wheel.fired == 3


async def test_http_connections_hold_one_wheel_entry_each_and_none_once_closed() -> None:
    async with http_backend("s1") as s1:
        cfg = proxy_config({"api": [s1]}, listener="    timeouts: {request_head: 30s}")
        async with steelyard(cfg) as sy:
            [handle] = sy.engine.listeners.values()
            wheel = handle.runtime.wheel
            clients = [await RawClient.connect(sy.port) for _ in range(20)]
            loop = asyncio.get_running_loop()
            give_up = loop.time() + 5
            while len(handle.runtime.connections) < 20 and loop.time() < give_up:
                await asyncio.sleep(0.01)
            assert wheel.pending() == 20
            for c in clients:
                await c.close()
            while handle.runtime.connections and loop.time() < give_up:
                await asyncio.sleep(0.01)
            assert not handle.runtime.connections
            assert wheel.pending() == 0


async def test_the_request_head_timeout_is_not_early_and_not_much_late() -> None:
    async with http_backend("s1") as s1:
        cfg = proxy_config({"api": [s1]}, listener="    timeouts: {request_head: 400ms}")
        async with steelyard(cfg) as sy:
            loop = asyncio.get_running_loop()
            raw = await RawClient.connect(sy.port)
            started = loop.time()
            data = await raw.read_until_close(timeout=5)
            took = loop.time() - started
            assert data.startswith(b"HTTP/1.1 408 ")
            assert 0.39 <= took < 0.4 + RESOLUTION + 1.0


async def test_the_loop_timer_wakes_about_once_per_tick_that_has_deadlines() -> None:
    """No spinning: the loop's clock has whole milliseconds and uvloop rounds a timer to the
    nearest one, so a wheel that compared ticks carelessly would fire again and again until
    its tick's time had surely passed."""
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    owners = [Owner(loop, str(i)) for i in range(40)]
    start = loop.time()
    ticks = {wheel.add(start + 0.013 * i + 0.001, o) for i, o in enumerate(owners)}
    for o in owners:
        await wait(o)
    assert wheel.fired == 40
    assert all(at >= tick * RESOLUTION - 0.001 for o in owners for tick, at in o.calls)
    # a late fire may serve several ticks at once; an early one (rounding) costs one more
    assert wheel.wakeups <= 2 * len(ticks), (wheel.wakeups, len(ticks))


async def test_call_later_runs_once_and_cancel_stops_it_like_a_loop_timer() -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    ran: list[str] = []
    done = asyncio.Event()
    start = loop.time()
    kept = wheel.call_later(0.1, lambda: (ran.append("kept"), done.set()))
    dropped = wheel.call_later(0.05, lambda: ran.append("dropped"))
    dropped.cancel()
    dropped.cancel()  # twice: no effect, as a TimerHandle
    assert wheel.pending() == 1
    await asyncio.wait_for(done.wait(), 5)
    assert loop.time() - start >= 0.1 - 0.002
    await asyncio.sleep(3 * RESOLUTION)
    assert ran == ["kept"]
    assert kept.cancelled and dropped.cancelled  # spent or cancelled: neither runs again
    kept.cancel()  # after it ran: no effect
    assert ran == ["kept"] and wheel.pending() == 0
    assert "cancelled" in repr(kept)


async def test_tcp_connections_hold_one_wheel_timer_each_and_none_once_closed() -> None:
    """The TCP listener's timers (connect, then idle) are on its wheel too."""
    from steelyard.config import load_config_text
    from steelyard.engine import Engine

    async with http_backend("s1") as s1:
        host, port = s1.address.rsplit(":", 1)
        text = f"""
listeners:
  - name: l4
    bind: 127.0.0.1:0
    protocol: tcp
    backend: b
backends:
  b:
    timeouts: {{idle: 30s}}
    servers:
      - {{address: '{host}:{port}', name: s1}}
"""
        engine = Engine(load_config_text(text), loop=asyncio.get_running_loop())
        await engine.start()
        try:
            handle = engine.listeners["l4"]
            wheel = handle.runtime.wheel
            lhost, lport = engine.bound["l4"]
            pairs = [await asyncio.open_connection(lhost, lport) for _ in range(10)]
            for _, writer in pairs:  # a request each: the relay is up, its idle timer set
                writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            for reader, _ in pairs:
                assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
                    b"HTTP/1.1 200"
                )
            assert wheel.pending() == 10
            for _, writer in pairs:
                writer.close()
            loop = asyncio.get_running_loop()
            give_up = loop.time() + 5
            while handle.runtime.connections and loop.time() < give_up:
                await asyncio.sleep(0.01)
            assert not handle.runtime.connections
            assert wheel.pending() == 0
        finally:
            await engine.shutdown(1)
