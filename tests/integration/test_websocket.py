"""WebSocket through Steelyard with a real client and server (the `websockets` library).

A 101 turns the connection into a byte tunnel: messages flow both ways intact, the tunnel holds
its server's lease (least_connections sees it), and when it must end -- drain timeout, removal
by a reload, shutdown, the tunnel idle timeout -- both sides get a close frame with code 1001
(going away); the server would refuse an unmasked frame, so its 1001 also shows the frame we
send it is masked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tests.helpers.engine_setup import until
from tests.helpers.http_backends import http_backend, request, steelyard
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from steelyard.config import load_config_text


@dataclass
class WsServer:
    name: str
    server: Server | None = None
    port: int = 0
    close_codes: list[int | None] = field(default_factory=list)
    received: list[str | bytes] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def handler(self, ws: ServerConnection) -> None:
        self.connected.set()
        try:
            async for message in ws:
                self.received.append(message)
                if message == "who":
                    await ws.send(self.name)
                else:
                    await ws.send(message)  # echo
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        self.close_codes.append(ws.close_code)


@contextlib.asynccontextmanager
async def ws_server(name: str) -> AsyncIterator[WsServer]:
    srv = WsServer(name)
    srv.server = await serve(srv.handler, "127.0.0.1", 0, max_size=None, close_timeout=5)
    srv.port = srv.server.sockets[0].getsockname()[1]  # type: ignore[index]
    try:
        yield srv
    finally:
        srv.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(srv.server.wait_closed(), 5)


async def raw_upgrade(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket upgrade by hand (a client whose every byte the test controls)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


def ws_config(servers: list[Any], backend: str = "", listener: str = "") -> str:
    text = "version: 1\nlisteners:\n  - name: web\n    bind: 127.0.0.1:0\n"
    if listener:
        text += listener.rstrip("\n") + "\n"
    text += "    routes:\n      - match: {path_prefix: /}\n        backend: ws\n"
    text += "backends:\n  ws:\n"
    if backend:
        text += backend.rstrip("\n") + "\n"
    text += "    servers:\n"
    for s in servers:
        text += f"      - {{address: '{s.address}', name: {s.name}}}\n"
    return text


async def closed_code(ws: ClientConnection, timeout: float = 10.0) -> int | None:
    """Wait for the connection to close (reading whatever still comes); the code received."""

    async def drain() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    await asyncio.wait_for(drain(), timeout)
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return ws.close_code


async def test_thousand_messages_both_ways_intact() -> None:
    async with ws_server("w1") as w1, steelyard(ws_config([w1])) as sy:
        async with connect(f"ws://127.0.0.1:{sy.port}/chat", max_size=None) as ws:
            sizes = [1, 125, 126, 127, 65535, 65536, 200_000]
            sent: list[str | bytes] = []
            for i in range(1000):
                if i % 10 == 0:
                    msg: str | bytes = bytes([i % 256]) * sizes[(i // 10) % len(sizes)]
                else:
                    msg = f"message {i} " + "é" * (i % 7)
                sent.append(msg)

            async def writer() -> None:
                for msg in sent:
                    await ws.send(msg)

            task = asyncio.create_task(writer())
            got = [await asyncio.wait_for(ws.recv(), 10) for _ in range(1000)]
            await task
            assert got == sent  # server -> client, in order, byte for byte
            assert w1.received == sent  # client -> server
            records_before = len(sy.records)
        await until(lambda: w1.close_codes)
        assert w1.close_codes == [1000]  # the client's own close went through
        await until(lambda: len(sy.records) > records_before)
        assert sy.records[-1].status == 101


async def test_tunnel_holds_its_lease_and_least_connections_sees_it() -> None:
    async with (
        ws_server("w1") as w1,
        http_backend("w2") as w2,
        steelyard(ws_config([w1, w2], backend="    algorithm: least_connections")) as sy,
    ):
        servers = sy.engine.backends["ws"].servers
        # round the tie so that the tunnel lands on w1 (w2 cannot upgrade)
        for _ in range(4):
            try:
                ws = await connect(f"ws://127.0.0.1:{sy.port}/")
            except Exception:
                continue
            break
        else:
            raise AssertionError("no tunnel to the websocket server")
        try:
            await ws.send("who")
            assert await ws.recv() == "w1"
            assert servers["w1"].active == 1
            for _ in range(5):  # every plain request goes to the server without a tunnel
                r = await request(sy.port, "GET", "/")
                assert r.header("x-server") == "w2"
        finally:
            await ws.close()
        await until(lambda: servers["w1"].active == 0)


async def test_drain_timeout_sends_1001_to_both_sides() -> None:
    backend = "    drain_timeout: 300ms"
    async with ws_server("w1") as w1, steelyard(ws_config([w1], backend=backend)) as sy:
        ws = await connect(f"ws://127.0.0.1:{sy.port}/")
        await ws.send("hello")
        assert await ws.recv() == "hello"
        sy.engine.backends["ws"].drain("w1")
        await asyncio.sleep(0.1)
        await ws.send("still up while draining")
        assert await ws.recv() == "still up while draining"
        assert await closed_code(ws) == 1001
        await until(lambda: w1.close_codes)
        assert w1.close_codes == [1001]
        assert sy.engine.backends["ws"].servers["w1"].active == 0


async def test_drain_through_admin_api_and_reload_removal(tmp_path: Any) -> None:
    from tests.helpers.http_backends import request as http_request

    async with ws_server("w1") as w1, ws_server("w2") as w2:
        text = ws_config([w1, w2], backend="    drain_timeout: 300ms")
        text += "admin:\n  bind: 127.0.0.1:0\n"
        async with steelyard(text) as sy:
            admin_port = int(sy.engine.admin.url.rsplit(":", 1)[1].strip("/"))
            tunnels = [await connect(f"ws://127.0.0.1:{sy.port}/") for _ in range(2)]
            names = []
            for ws in tunnels:
                await ws.send("who")
                names.append(await ws.recv())
            assert sorted(names) == ["w1", "w2"]
            by_name = dict(zip(names, tunnels, strict=True))
            # admin drain of w1: its tunnel ends with 1001 after drain_timeout
            r = await http_request(
                admin_port, "POST", "/api/v1/backends/ws/servers/w1/drain", body=b""
            )
            assert r.status == 200
            assert await closed_code(by_name["w1"]) == 1001
            await until(lambda: w1.close_codes == [1001])
            # a reload that removes w2: it drains, then its tunnel gets 1001 too
            await sy.engine.reload(
                load_config_text(ws_config([w1], backend="    drain_timeout: 300ms"))
            )
            await by_name["w2"].send("who")
            assert await by_name["w2"].recv() == "w2"  # kept while draining
            assert await closed_code(by_name["w2"]) == 1001
            await until(lambda: w2.close_codes == [1001])


async def test_shutdown_closes_tunnels_with_1001_after_shutdown_timeout() -> None:
    async with ws_server("w1") as w1, steelyard(ws_config([w1])) as sy:
        ws = await connect(f"ws://127.0.0.1:{sy.port}/")
        await ws.send("x")
        assert await ws.recv() == "x"
        loop = asyncio.get_running_loop()
        started = loop.time()
        shutdown = asyncio.create_task(sy.engine.shutdown(0.5))
        await asyncio.sleep(0.2)
        await ws.send("still served during shutdown_timeout")
        assert await ws.recv() == "still served during shutdown_timeout"
        assert await closed_code(ws) == 1001
        # the close frames go min(2s, timeout/2) before the deadline: the peers answer in time
        assert loop.time() - started >= 0.25
        await asyncio.wait_for(shutdown, 10)
        assert loop.time() - started < 0.5 + 0.9  # the shutdown itself kept its deadline
        await until(lambda: w1.close_codes)
        assert w1.close_codes == [1001]


async def test_shutdown_keeps_its_deadline_when_the_peers_never_answer_the_close() -> None:
    """A client and a server that take the 1001 and never reply (nor close): the process still
    stops at shutdown_timeout, not a close-reply grace later."""
    upstream_got = bytearray()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        )
        while data := await reader.read(65536):
            upstream_got.extend(data)  # never answered

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = WsServer("w1", port=port)
    async with server, steelyard(ws_config([upstream])) as sy:
        reader, writer = await raw_upgrade(sy.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        shutdown = asyncio.create_task(sy.engine.shutdown(1.0))
        close = await asyncio.wait_for(reader.readexactly(14), 5)
        assert close == b"\x88\x0c\x03\xe9going away"
        sent_at = loop.time() - started
        assert 0.4 <= sent_at < 0.9  # min(2s, 1.0/2) before the deadline
        await asyncio.wait_for(shutdown, 10)
        elapsed = loop.time() - started
        assert 1.0 - 0.1 <= elapsed < 1.0 + 0.9  # was 1.0 + 2s of close grace before
        try:  # and the client was let go (FIN or, at the deadline, a reset)
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionResetError:
            pass
        # the server got its (masked) close frame too: 6 bytes of header and mask + 12
        assert len(upstream_got) == 18 and upstream_got[:2] == b"\x88\x8c"
        writer.close()


async def test_tunnel_idle_timeout_closes_with_1001() -> None:
    listener = "    timeouts: {tunnel: 300ms}"
    async with ws_server("w1") as w1, steelyard(ws_config([w1], listener=listener)) as sy:
        ws = await connect(f"ws://127.0.0.1:{sy.port}/", ping_interval=None)
        await ws.send("x")
        assert await ws.recv() == "x"
        assert await closed_code(ws) == 1001
        await until(lambda: w1.close_codes)
        assert w1.close_codes == [1001]


async def test_close_waits_for_the_frame_in_flight() -> None:
    """A client in the middle of a frame when the drain ends: the rest of the frame still
    reaches the server, and only then the close frame -- never a frame cut in two. (The
    other direction is between frames, so the client gets its close frame at once.)"""
    backend = "    drain_timeout: 200ms"
    async with ws_server("w1") as w1, steelyard(ws_config([w1], backend=backend)) as sy:
        reader, writer = await raw_upgrade(sy.port)
        payload = b"0123456789"
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frame = bytes((0x81, 0x80 | len(payload))) + mask + masked
        writer.write(frame[:9])  # header and 3 payload bytes
        await writer.drain()
        sy.engine.backends["ws"].drain("w1")
        await asyncio.sleep(0.6)  # the drain timed out, the frame is still open
        assert w1.close_codes == []
        # toward the client the stream was between frames: the close frame went at once
        close = await asyncio.wait_for(reader.readexactly(14), 5)
        assert close == b"\x88\x0c\x03\xe9going away"
        writer.write(frame[9:])  # the rest of the frame still reaches the server, whole
        await writer.drain()
        await until(lambda: w1.close_codes)
        assert w1.received == ["0123456789"]
        assert w1.close_codes == [1001]
        writer.close()


async def test_sigterm_on_a_real_process_closes_tunnels_with_1001_and_exits_0(
    tmp_path: Any,
) -> None:
    import signal

    from tests.helpers.steelyard_process import SteelyardProcess

    async with ws_server("w1") as w1:
        path = tmp_path / "steelyard.yaml"
        path.write_text(
            "shutdown_timeout: 500ms\nlog: {access: "
            + str(tmp_path / "a.log")
            + "}\n"
            + ws_config([w1])
        )
        with SteelyardProcess(path) as sy:
            port = await asyncio.to_thread(sy.port, "web")
            ws = await connect(f"ws://127.0.0.1:{port}/")
            await ws.send("x")
            assert await ws.recv() == "x"
            sy.send(signal.SIGTERM)
            await asyncio.sleep(0.2)
            await ws.send("served during shutdown_timeout")
            assert await ws.recv() == "served during shutdown_timeout"
            assert await closed_code(ws) == 1001
            assert await asyncio.to_thread(sy.wait, 20) == 0
        await until(lambda: w1.close_codes)
        assert w1.close_codes == [1001]


async def test_wss_through_a_tls_listener_to_a_tls_server(tmp_path: Any) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    front = ca.issue_cert("localhost")
    cert_path, key_path = tmp_path / "front.pem", tmp_path / "front.key"
    front.cert_chain_pems[0].write_to_path(str(cert_path))
    front.private_key_pem.write_to_path(str(key_path))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    srv = WsServer("w1")
    srv.server = await serve(srv.handler, "127.0.0.1", 0, ssl=server_ctx, max_size=None)
    srv.port = srv.server.sockets[0].getsockname()[1]  # type: ignore[index]
    listener = (
        f"    tls:\n      certificates:\n        - {{cert: '{cert_path}', key: '{key_path}'}}"
    )
    backend = f"    tls: {{ca: '{ca_path}'}}\n    drain_timeout: 200ms"
    try:
        async with steelyard(ws_config([srv], backend=backend, listener=listener)) as sy:
            client_ctx = ssl.create_default_context()
            ca.configure_trust(client_ctx)
            ws = await connect(f"wss://localhost:{sy.port}/", ssl=client_ctx, max_size=None)
            messages = [bytes([i % 256]) * (i * 997 % 150_000 + 1) for i in range(200)]

            async def writer() -> None:
                for m in messages:
                    await ws.send(m)

            task = asyncio.create_task(writer())
            got = [await asyncio.wait_for(ws.recv(), 10) for _ in messages]
            await task
            assert got == messages
            sy.engine.backends["ws"].drain("w1")
            assert await closed_code(ws) == 1001
            await until(lambda: srv.close_codes)
            assert srv.close_codes == [1001]
    finally:
        srv.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(srv.server.wait_closed(), 5)


async def test_other_upgrades_end_with_a_clean_close_not_a_reset() -> None:
    listener = "    timeouts: {tunnel: 300ms}"
    async with (
        http_backend("s1") as s1,
        steelyard(ws_config([s1], listener=listener)) as sy,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", sy.port)
        writer.write(
            b"GET /upgrade HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"PING"
        # quiet for timeouts.tunnel: EOF (FIN), not a reset, and no WebSocket frame
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await until(lambda: sy.engine.backends["ws"].servers["s1"].active == 0)
