"""net/listen.py: several accept queues per stream listener (SO_REUSEPORT, Linux), and the
plain bind first that keeps an address ours alone."""

from __future__ import annotations

import asyncio
import collections
import errno
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop
from tests.helpers.engine_setup import api_config, start_engine, tcp_config
from tests.helpers.flaky_backend import flaky_backend
from tests.helpers.http_backends import request
from tests.helpers.servers import free_port
from tests.helpers.steelyard_process import SteelyardProcess

from steelyard.config import load_config_text
from steelyard.engine import StartError
from steelyard.net import listen
from steelyard.net.listen import bind_sockets

pytestmark = pytest.mark.skipif(not listen.SUPPORTED, reason="SO_REUSEPORT balancing is Linux's")


def _reuseport(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)


def _plain_bind(port: int) -> None:
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    finally:
        s.close()


def _listening(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port (/proc/net/tcp, state 0A = LISTEN)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return sum(1 for line in f if line.split()[1] == want and line.split()[3] == "0A")


def test_the_sockets_share_one_port_and_keep_it_ours() -> None:
    socks = bind_sockets("127.0.0.1", 0, 4)
    try:
        assert len(socks) == 4
        port = socks[0].getsockname()[1]
        assert port != 0
        assert {s.getsockname() for s in socks} == {("127.0.0.1", port)}
        assert all(_reuseport(s) == 1 for s in socks)
        # a plain bind (any other program) is refused, as by a single socket
        with pytest.raises(OSError) as plain:
            _plain_bind(port)
        assert plain.value.errno == errno.EADDRINUSE
        # and so is a second set of ours (another instance), which would otherwise join
        with pytest.raises(OSError) as again:
            bind_sockets("127.0.0.1", port, 4)
        assert again.value.errno == errno.EADDRINUSE
    finally:
        for s in socks:
            s.close()
    _plain_bind(port)  # all closed: the address is free again


def test_an_address_in_use_is_refused_and_nothing_is_left_bound() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError) as exc:
            bind_sockets("127.0.0.1", port, 4)
        assert exc.value.errno == errno.EADDRINUSE
    finally:
        holder.close()
    _plain_bind(port)


def test_one_socket_is_a_plain_one() -> None:
    (sock,) = bind_sockets("127.0.0.1", 0, 1)
    try:
        assert _reuseport(sock) == 0
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("value", "count"), [(None, 64), ("4", 4), ("1", 1), ("0", 1), ("500", 64), ("many", 64)]
)
def test_the_count_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str | None, count: int
) -> None:
    if value is None:
        monkeypatch.delenv("STEELYARD_ACCEPT_SOCKETS", raising=False)
    else:
        monkeypatch.setenv("STEELYARD_ACCEPT_SOCKETS", value)
    assert listen._env_count() == count


def test_a_count_that_is_not_a_number_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("STEELYARD_ACCEPT_SOCKETS", "lots")
    with caplog.at_level("WARNING", logger="steelyard"):
        assert listen._env_count() == 64
    assert "STEELYARD_ACCEPT_SOCKETS='lots' is not a number" in caplog.text


def _connections_per_pass(count: int, clients: int = 32) -> list[int]:
    """How many connections uvloop accepts per loop pass when `clients` are waiting in the
    accept queues of `count` sockets."""

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        passes = 0
        made: list[int] = []

        def tick() -> None:  # one call per loop pass
            nonlocal passes
            passes += 1
            loop.call_soon(tick)

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                made.append(passes)
                transport.close()

        socks = bind_sockets("127.0.0.1", 0, count)
        port = socks[0].getsockname()[1]
        servers = []
        for s in socks:
            servers.append(await loop.create_server(Proto, sock=s))
        # connected by the kernel into the accept queues before the loop runs again
        waiting = [socket.create_connection(("127.0.0.1", port)) for _ in range(clients)]
        try:
            tick()
            for _ in range(2000):
                if len(made) == clients:
                    break
                await asyncio.sleep(0)
            assert len(made) == clients
        finally:
            for c in waiting:
                c.close()
            for server in servers:
                server.close()
        return sorted(collections.Counter(made).values(), reverse=True)

    return uvloop.run(scenario())


def test_uvloop_accepts_one_connection_per_socket_per_pass() -> None:
    """The reason for the module: one socket admits one connection per pass; eight admit
    several (up to one per socket)."""
    assert _connections_per_pass(1) == [1] * 32, (
        "uvloop accepted several connections per pass from one socket: the reason for "
        "net/listen.py may be gone (its docstring; bench/PROFILE.md, 'accept queues')"
    )
    per_pass = _connections_per_pass(8)
    assert per_pass[0] > 1
    assert max(per_pass) <= 8
    assert sum(per_pass) == 32


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "steelyard.yaml"
    path.write_text(text)
    return path


async def _burst(port: int, n: int) -> list[int]:
    replies = await asyncio.gather(
        *(request(port, "GET", "/", headers=[("Connection", "close")]) for _ in range(n))
    )
    return [r.status for r in replies]


async def test_steelyard_listens_on_every_socket_and_lets_go_of_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEELYARD_ACCEPT_SOCKETS", "6")
    async with flaky_backend("s1") as s1:
        path = _config(tmp_path, api_config([s1]))
        with SteelyardProcess(path) as sy:
            port = await asyncio.to_thread(sy.port, "web")
            assert _listening(port) == 6
            assert await _burst(port, 60) == [200] * 60
            # a second instance on the same address is refused, not let in to share it
            (tmp_path / "second").mkdir()
            second = _config(tmp_path / "second", api_config([s1], bind=f"127.0.0.1:{port}"))
            result = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "steelyard", "run", "-c", str(second)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 3, result.stderr
            assert "cannot bind" in result.stderr
            assert _listening(port) == 6
            assert (await request(port, "GET", "/")).status == 200
            sy.send(signal.SIGTERM)
            assert await asyncio.to_thread(sy.wait, 20) == 0
        assert _listening(port) == 0
        _plain_bind(port)


async def test_one_socket_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEELYARD_ACCEPT_SOCKETS", "1")
    async with flaky_backend("s1") as s1:
        with SteelyardProcess(_config(tmp_path, api_config([s1]))) as sy:
            port = await asyncio.to_thread(sy.port, "web")
            assert _listening(port) == 1
            assert await _burst(port, 20) == [200] * 20


@pytest.mark.parametrize(("raw", "sockets"), [("1", 1), ("0", 6)])
async def test_a_tcp_listener_has_one_socket_on_its_own_epoll_set_and_several_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: str, sockets: int
) -> None:
    """On its own epoll set it accepts up to 64 connections per event on one socket
    (net/rawsock.py); on the loop's transports (STEELYARD_RAW_TCP=0, or TLS) it gets the
    accept queues, as an HTTP listener."""
    monkeypatch.setenv("STEELYARD_ACCEPT_SOCKETS", "6")
    monkeypatch.setenv("STEELYARD_RAW_TCP", raw)
    async with flaky_backend("s1") as s1:
        with SteelyardProcess(_config(tmp_path, tcp_config([s1]))) as sy:
            port = await asyncio.to_thread(sy.port, "l4")
            assert _listening(port) == sockets

            async def get() -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                try:
                    return await asyncio.wait_for(reader.read(), 10)
                finally:
                    writer.close()

            replies = await asyncio.gather(*(get() for _ in range(30)))
            assert all(r.startswith(b"HTTP/1.1 200") for r in replies)


async def test_a_reload_listens_on_every_socket_or_leaves_none(tmp_path: Path) -> None:
    """A listener added by a reload gets its sockets bound (and listening) before anything
    changes; a reload that then fails on another listener's bind lets go of all of them."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    busy = blocker.getsockname()[1]
    try:
        async with flaky_backend("s1") as s1:
            engine, _ = await start_engine(api_config([s1]))
            try:
                new = free_port()

                def listener(name: str, port: int) -> str:
                    return (
                        f"  - name: {name}\n    protocol: http\n"
                        f"    bind: 127.0.0.1:{port}\n    backend: api\n"
                    )

                bad = api_config([s1], more_listeners=listener("two", new) + listener("x", busy))
                with pytest.raises(StartError, match="cannot bind"):
                    await engine.reload(load_config_text(bad))
                assert _listening(new) == 0
                _plain_bind(new)
                good = api_config([s1], more_listeners=listener("two", new))
                await engine.reload(load_config_text(good))
                assert _listening(new) == listen.ACCEPT_SOCKETS
                assert (await request(new, "GET", "/")).status == 200
            finally:
                await engine.shutdown(1.0)
            assert _listening(new) == 0
    finally:
        blocker.close()
