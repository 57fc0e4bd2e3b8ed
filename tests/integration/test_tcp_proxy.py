"""L4 TCP listener: relay, half-close, resets, retries, idle timeout, PROXY protocol, drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop
from tests.helpers.http_backends import BlackholeServer
from tests.helpers.servers import free_port

from steelyard.config import load_config_text
from steelyard.core.proxy_protocol import ParseStatus, encode_v1, encode_v2, parse_header
from steelyard.core.records import RequestRecord
from steelyard.engine import Engine
from steelyard.net import proxy_preface, rawsock, tcp_proxy

# production runs on uvloop; the stdlib loop must work too (see tests/integration/conftest.py)
LOOP_FACTORIES = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture(autouse=True, params=["splice", "protocol", "loop-transports"])
def relay_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on the splice fast path (where the OS has it), on the Protocol relay
    over the listener's own epoll set (net/rawsock.py, the default on Linux) and on the
    Protocol relay over the event loop's transports (STEELYARD_RAW_TCP=0, and elsewhere)."""
    if request.param == "splice" and not tcp_proxy.SPLICE_SUPPORTED:
        pytest.skip("no splice(2) here")
    if request.param != "loop-transports" and not tcp_proxy.RAW_SUPPORTED:
        pytest.skip("no epoll here")
    monkeypatch.setattr(tcp_proxy, "SPLICE_DEFAULT", request.param == "splice")
    monkeypatch.setattr(tcp_proxy, "RAW_DEFAULT", request.param != "loop-transports")
    # switch to splice at the first byte relayed, so that every behaviour below is checked
    # on the splice path (by default only connections past SPLICE_AFTER bytes switch)
    monkeypatch.setattr(tcp_proxy, "SPLICE_AFTER", 0)
    monkeypatch.setattr(tcp_proxy, "SPLICE_MIN_READ", 0)
    return str(request.param)


# ------------------------------------------------------------------------ tiny servers


class TaggedEcho(asyncio.Protocol):
    """Greets with its tag, then echoes; at the client's EOF it writes a last word, then closes
    (a FIN after the flush), so the answer to a half-closed client is what it checks.

    It closes rather than write_eof(): the transport stops reading at an EOF, and nothing but
    the protocol <-> transport cycle would hold it. If the cyclic GC frees a uvloop (0.23)
    transport whose shutdown(2) request is still pending, the request's callback runs on
    freed memory (a segfault or an abort in uv__stream_destroy): see docs/l4.md."""

    def __init__(self, tag: bytes, log: list[Any]) -> None:
        self.tag = tag
        self.log = log

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.log.append(("open", transport.get_extra_info("peername")))
        if self.tag:
            transport.write(self.tag + b"\n")

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.log.append(("eof",))
        self.transport.write(b"<after-eof>")
        return False  # close once the buffer is out

    def connection_lost(self, exc: Exception | None) -> None:
        self.log.append(("lost", type(exc).__name__ if exc else None))


async def start_server(factory: Callable[[], asyncio.Protocol]) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def config(listener: str, backends: str) -> Any:
    text = f"""
version: 1
shutdown_timeout: 2s
listeners:
{listener}
backends:
{backends}
"""
    return load_config_text(text)


async def start_engine(cfg: Any) -> Engine:
    engine = Engine(cfg)
    await engine.start()
    return engine


async def read_until(reader: asyncio.StreamReader, marker: bytes, timeout: float = 5) -> bytes:
    return await asyncio.wait_for(reader.readuntil(marker), timeout)


async def greet_echo_close(host: str, port: int, greeting: bytes, payload: bytes) -> None:
    """One client through a TaggedEcho server: its greeting, the payload echoed, then close."""
    reader, writer = await asyncio.open_connection(host, port)
    assert await read_until(reader, b"\n") == greeting + b"\n"
    writer.write(payload)
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload
    writer.close()
    await writer.wait_closed()


async def wait_records(records: list[RequestRecord], n: int) -> None:
    for _ in range(100):
        if len(records) >= n:
            return
        await asyncio.sleep(0.02)


@pytest.fixture
def tagged() -> Iterator[Callable[..., Any]]:
    """A factory for TaggedEcho servers; they are created on the test's own loop."""
    servers: list[asyncio.Server] = []

    async def make(tag: bytes) -> tuple[int, list[Any]]:
        log: list[Any] = []
        server, port = await start_server(lambda: TaggedEcho(tag, log))
        servers.append(server)
        return port, log

    yield make
    for server in servers:
        server.close()


def tcp_listener(backend: str = "b", extra: str = "") -> str:
    return f"""  - name: l4
    protocol: tcp
    bind: 127.0.0.1:0
    backend: {backend}
{extra}"""


def backend_block(name: str, ports: list[int], extra: str = "") -> str:
    servers = "\n".join(
        f"      - {{address: 127.0.0.1:{p}, name: s{i}}}" for i, p in enumerate(ports)
    )
    return f"""  {name}:
    algorithm: round_robin
    servers:
{servers}
{extra}"""


# ------------------------------------------------------------------------ tests


async def test_relay_and_record(tagged: Any, relay_mode: str) -> None:
    port, log = await tagged(b"s0")
    engine = await start_engine(config(tcp_listener(), backend_block("b", [port])))
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        host, lport = engine.bound["l4"]
        await greet_echo_close(host, lport, b"s0", b"hello")
        await wait_records(records, 1)
        assert len(records) == 1
        rec = records[0]
        assert (rec.listener, rec.backend, rec.server) == ("l4", "b", "s0")
        assert rec.method is None and rec.path is None
        assert rec.bytes_in == 5
        assert rec.bytes_out == len(b"s0\nhello<after-eof>")
        assert rec.client.startswith("127.0.0.1:")
        state = engine.backends["b"].servers["s0"]
        assert state.active == 0 and state.requests_total == 1
        runtime = engine.listeners["l4"].runtime
        assert runtime.spliced_total == (1 if relay_mode == "splice" else 0)
    finally:
        await engine.shutdown(1)


async def test_each_loop_is_the_one_named(request: pytest.FixtureRequest) -> None:
    """LOOP_FACTORIES (through the conftest hook) really runs these tests on both loops."""
    loop_id = request.node.callspec.id.split("-")[0]  # e.g. "uvloop-splice"
    assert loop_id in LOOP_FACTORIES
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop) == (loop_id == "uvloop")


def test_durations_have_sub_millisecond_precision(tagged: Any) -> None:
    """uvloop's loop.time() moves in whole milliseconds: a connection's logged duration is
    measured with time.perf_counter() instead (timers stay on the loop's clock)."""

    async def main() -> list[float]:
        port, _ = await tagged(b"")
        engine = await start_engine(config(tcp_listener(), backend_block("b", [port])))
        records: list[RequestRecord] = []
        engine.recorders.append(records.append)
        try:
            host, lport = engine.bound["l4"]
            for i in range(20):
                reader, writer = await asyncio.open_connection(host, lport)
                writer.write(b"ping %d\n" % i)
                assert await read_until(reader, b"\n") == b"ping %d\n" % i
                writer.close()
            for _ in range(250):
                if len(records) == 20:
                    break
                await asyncio.sleep(0.02)
            return [r.duration * 1000 for r in records]
        finally:
            await engine.shutdown(1)

    durations = uvloop.run(main())  # the loop `steelyard run` uses
    assert len(durations) == 20
    assert any(abs(d - round(d)) > 1e-6 for d in durations), durations


async def test_nodelay_on_both_legs(tagged: Any, relay_mode: str) -> None:
    """Small request/response exchanges must not wait for Nagle on either leg: the loop's
    transports set TCP_NODELAY on the accepted and on the connected socket."""
    if relay_mode == "splice":
        pytest.skip("the Protocol relay's transports are what is checked")
    port, _ = await tagged(b"s0")
    engine = await start_engine(config(tcp_listener(), backend_block("b", [port])))
    try:
        host, lport = engine.bound["l4"]
        reader, writer = await asyncio.open_connection(host, lport)
        assert await read_until(reader, b"\n") == b"s0\n"
        (conn,) = engine.listeners["l4"].runtime.connections
        for transport in (conn.transport, conn.up_transport):
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        writer.close()
        await writer.wait_closed()
    finally:
        await engine.shutdown(1)


async def test_half_close_keeps_other_direction(tagged: Any) -> None:
    port, log = await tagged(b"")
    engine = await start_engine(config(tcp_listener(), backend_block("b", [port])))
    try:
        host, lport = engine.bound["l4"]
        reader, writer = await asyncio.open_connection(host, lport)
        writer.write(b"request")
        writer.write_eof()  # shutdown(SHUT_WR): the answer must still arrive
        data = await asyncio.wait_for(reader.read(), 5)
        assert data == b"request<after-eof>"
        assert ("eof",) in log
        writer.close()
    finally:
        await engine.shutdown(1)


async def test_upstream_eof_passed_to_client_while_client_keeps_sending() -> None:
    """The server half-closes first; the client can still send and the server reads it."""
    got = asyncio.get_running_loop().create_future()

    class CloserFirst(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport
            self.buf = b""
            transport.write(b"bye")
            transport.write_eof()

        def data_received(self, data: bytes) -> None:
            self.buf += data

        def eof_received(self) -> bool:
            if not got.done():
                got.set_result(self.buf)
            return False

    server, port = await start_server(CloserFirst)
    engine = await start_engine(config(tcp_listener(), backend_block("b", [port])))
    try:
        host, lport = engine.bound["l4"]
        reader, writer = await asyncio.open_connection(host, lport)
        assert await asyncio.wait_for(reader.read(), 5) == b"bye"  # EOF arrived
        writer.write(b"still talking")
        writer.write_eof()
        assert await asyncio.wait_for(got, 5) == b"still talking"
        writer.close()
    finally:
        await engine.shutdown(1)
        server.close()


async def test_server_reset_is_propagated() -> None:
    class Resetter(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            sock = self.t.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.t.abort()

    server, port = await start_server(Resetter)
    engine = await start_engine(config(tcp_listener(), backend_block("b", [port])))
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        host, lport = engine.bound["l4"]
        reader, writer = await asyncio.open_connection(host, lport)
        writer.write(b"x")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        for _ in range(100):
            if records:
                break
            await asyncio.sleep(0.02)
        assert engine.backends["b"].servers["s0"].failures_total == 1  # Outcome.RESET
    finally:
        await engine.shutdown(1)
        server.close()


async def test_client_reset_is_propagated() -> None:
    loop = asyncio.get_running_loop()
    lost: asyncio.Future[Any] = loop.create_future()

    class Watcher(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            transport.write(b"ready")

        def connection_lost(self, exc: Exception | None) -> None:
            if not lost.done():
                lost.set_result(exc)

    server, port = await start_server(Watcher)
    engine = await start_engine(config(tcp_listener(), backend_block("b", [port])))
    try:
        host, lport = engine.bound["l4"]
        sock = socket.create_connection((host, lport))
        sock.setblocking(False)
        assert await asyncio.wait_for(loop.sock_recv(sock, 5), 5) == b"ready"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        exc = await asyncio.wait_for(lost, 5)
        assert isinstance(exc, ConnectionResetError)
        # the client went away: not the server's fault
        assert engine.backends["b"].servers["s0"].failures_total == 0
    finally:
        await engine.shutdown(1)
        server.close()


async def test_connect_retry_on_a_different_server(tagged: Any) -> None:
    dead = free_port()  # nothing listens here
    port, _ = await tagged(b"alive")
    backends = backend_block("b", [dead, port], "    retries: 1")
    engine = await start_engine(config(tcp_listener(), backends))
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        host, lport = engine.bound["l4"]
        for _ in range(4):  # round robin starts on either server; every one must land
            reader, writer = await asyncio.open_connection(host, lport)
            assert await read_until(reader, b"\n") == b"alive\n"
            writer.close()
        for _ in range(100):
            if len(records) == 4:
                break
            await asyncio.sleep(0.02)
        assert all(r.server == "s1" for r in records)
        assert any(r.retries == 1 for r in records)
        assert engine.backends["b"].servers["s0"].failures_total >= 1
    finally:
        await engine.shutdown(1)


async def test_no_server_closes_connection() -> None:
    dead = free_port()
    engine = await start_engine(
        config(tcp_listener(), backend_block("b", [dead], "    retries: 0"))
    )
    try:
        host, lport = engine.bound["l4"]
        reader, writer = await asyncio.open_connection(host, lport)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await engine.shutdown(1)


async def test_idle_timeout_closes_both_sides(tagged: Any) -> None:
    port, log = await tagged(b"")
    backends = backend_block("b", [port], "    timeouts: {idle: 300ms}")
    engine = await start_engine(config(tcp_listener(), backends))
    try:
        host, lport = engine.bound["l4"]
        reader, writer = await asyncio.open_connection(host, lport)
        # activity keeps it open past one timeout period
        for _ in range(4):
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
            await asyncio.sleep(0.1)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then silence closes it
        for _ in range(100):
            if any(e[0] == "lost" for e in log):
                break
            await asyncio.sleep(0.02)
        assert any(e[0] == "lost" for e in log)
        writer.close()
    finally:
        await engine.shutdown(1)


async def test_idle_timeout_outlives_a_shorter_connect_timeout(tagged: Any) -> None:
    """One timer per connection: the connect timer goes on as the idle timer. Firing at the
    connect deadline while relaying, it must re-arm for the idle timeout, not cut the
    connection, and silence must still close it once the idle timeout has passed."""
    port, log = await tagged(b"")
    backends = backend_block("b", [port], "    timeouts: {connect: 150ms, idle: 600ms}")
    engine = await start_engine(config(tcp_listener(), backends))
    loop = asyncio.get_running_loop()
    try:
        host, lport = engine.bound["l4"]
        reader, writer = await asyncio.open_connection(host, lport)
        quiet_from = 0.0
        for _ in range(6):  # ~0.6 s of activity: past the connect deadline, within idle
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
            quiet_from = loop.time()  # the proxy's last activity: the echo it relayed
            await asyncio.sleep(0.1)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        # the idle timeout (600ms) from the last echo, not the connect one (150ms); measured
        # from the echo, not from after the sleep, which a busy machine stretches
        assert loop.time() - quiet_from >= 0.45
        writer.close()
    finally:
        await engine.shutdown(1)


async def test_finished_connections_leave_no_cyclic_garbage(tagged: Any, relay_mode: str) -> None:
    """A finished connection drops its transports: reference counting frees the connection,
    its upstream protocol and both transports, not the cyclic GC (which cost ~2.4 us per
    connection under a new-connection load)."""
    if relay_mode == "splice":
        pytest.skip("checked on the Protocol relay (the splice path is for bulk connections)")
    port, _ = await tagged(b"s0")
    engine = await start_engine(config(tcp_listener(), backend_block("b", [port])))
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    gc.collect()
    gc.disable()
    try:
        host, lport = engine.bound["l4"]
        for _ in range(5):
            reader, writer = await asyncio.open_connection(host, lport)
            assert await read_until(reader, b"\n") == b"s0\n"
            writer.close()
            await writer.wait_closed()
        for _ in range(100):
            if len(records) == 5:
                break
            await asyncio.sleep(0.02)
        assert len(records) == 5
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        ours = (tcp_proxy.__name__, rawsock.__name__)
        left = [o for o in gc.garbage if type(o).__module__ in ours]
        assert left == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        await engine.shutdown(1)


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_send_proxy_protocol(version: str) -> None:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[bytes] = loop.create_future()

    class Capture(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            if self.buf.endswith(b"payload") and not first.done():
                first.set_result(self.buf)

    server, port = await start_server(Capture)
    backends = backend_block("b", [port], f"    proxy_protocol: {version}")
    engine = await start_engine(config(tcp_listener(), backends))
    try:
        host, lport = engine.bound["l4"]
        reader, writer = await asyncio.open_connection(host, lport)
        writer.write(b"payload")
        data = await asyncio.wait_for(first, 5)
        result = parse_header(data)
        assert result.status is ParseStatus.OK and result.header is not None
        assert result.header.version == int(version[1])
        client = writer.get_extra_info("sockname")
        assert (result.header.source, result.header.source_port) == client[:2]
        assert (result.header.destination, result.header.destination_port) == (host, lport)
        assert data[result.consumed :] == b"payload"
        writer.close()
    finally:
        await engine.shutdown(1)
        server.close()


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_accept_proxy_protocol_and_pass_it_on(version: str) -> None:
    """Inbound PROXY header stripped; its source is the client for logs and for the
    header we send on (both ways)."""
    loop = asyncio.get_running_loop()
    first: asyncio.Future[bytes] = loop.create_future()

    class Capture(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            if self.buf.endswith(b"body") and not first.done():
                first.set_result(self.buf)

    server, port = await start_server(Capture)
    listener = tcp_listener(extra="    accept_proxy_protocol: true")
    backends = backend_block("b", [port], "    proxy_protocol: v2")
    engine = await start_engine(config(listener, backends))
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        host, lport = engine.bound["l4"]
        reader, writer = await asyncio.open_connection(host, lport)
        header = (encode_v1 if version == "v1" else encode_v2)(
            "203.0.113.7", 4242, "198.51.100.1", 443
        )
        # the header arrives split, and with payload in the same segment
        writer.write(header[:7])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(header[7:] + b"body")
        data = await asyncio.wait_for(first, 5)
        result = parse_header(data)
        assert result.header is not None
        assert (result.header.source, result.header.source_port) == ("203.0.113.7", 4242)
        assert (result.header.destination, result.header.destination_port) == ("198.51.100.1", 443)
        assert data[result.consumed :] == b"body"
        writer.close()
        await writer.wait_closed()
        for _ in range(100):
            if records:
                break
            await asyncio.sleep(0.02)
        assert records[0].client == "203.0.113.7:4242"
    finally:
        await engine.shutdown(1)
        server.close()


async def test_accept_proxy_protocol_refuses_connection_without_header(
    tagged: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(proxy_preface, "_refusals", {})
    caplog.set_level(logging.WARNING, logger="steelyard")
    port, log = await tagged(b"never")
    listener = tcp_listener(extra="    accept_proxy_protocol: true")
    engine = await start_engine(config(listener, backend_block("b", [port])))
    try:
        host, lport = engine.bound["l4"]
        reader, writer = await asyncio.open_connection(host, lport)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert log == []  # nothing reached the server
        writer.close()
        # and the operator is told (at most once a minute per listener)
        warned = [r.getMessage() for r in caplog.records if "PROXY header" in r.getMessage()]
        assert len(warned) == 1 and warned[0].startswith("l4: refused 1 connection(s)"), warned
    finally:
        await engine.shutdown(1)


async def test_least_connections_counts_open_connections(tagged: Any) -> None:
    p0, _ = await tagged(b"s0")
    p1, _ = await tagged(b"s1")
    backends = backend_block("b", [p0, p1]).replace("round_robin", "least_connections")
    engine = await start_engine(config(tcp_listener(), backends))
    try:
        host, lport = engine.bound["l4"]
        conns = []
        seen = []
        for _ in range(6):
            reader, writer = await asyncio.open_connection(host, lport)
            seen.append(await read_until(reader, b"\n"))
            conns.append(writer)
        assert seen.count(b"s0\n") == 3 and seen.count(b"s1\n") == 3
        servers = engine.backends["b"].servers
        assert servers["s0"].active == 3 and servers["s1"].active == 3
        for writer in conns[:3]:
            writer.close()
        for _ in range(100):
            if servers["s0"].active + servers["s1"].active == 3:
                break
            await asyncio.sleep(0.02)
        assert servers["s0"].active + servers["s1"].active == 3
        for writer in conns[3:]:
            writer.close()
    finally:
        await engine.shutdown(1)


async def test_least_response_time_samples_the_connect_time_not_the_lifetime(
    tagged: Any,
) -> None:
    # a TCP connection lives as long as its client likes; the server's latency sample is the
    # time to connect to it (nginx's least_time connect), taken when the relay starts
    p0, _ = await tagged(b"s0")
    backends = backend_block("b", [p0]).replace("round_robin", "least_response_time")
    engine = await start_engine(config(tcp_listener(), backends))
    try:
        host, lport = engine.bound["l4"]
        reader, writer = await asyncio.open_connection(host, lport)
        assert await read_until(reader, b"\n") == b"s0\n"
        state = engine.backends["b"].servers["s0"]
        assert state.ewma.samples == 1  # sampled on connect, while the connection is open
        connect_time = state.ewma.value
        assert 0 < connect_time < 0.5
        await asyncio.sleep(0.6)  # a connection that lives far longer than its connect
        writer.close()
        await writer.wait_closed()
        for _ in range(100):
            if state.active == 0:
                break
            await asyncio.sleep(0.02)
        assert state.active == 0 and state.requests_total == 1
        assert state.ewma.samples == 1 and state.ewma.value == connect_time  # no second one
    finally:
        await engine.shutdown(1)


async def test_shutdown_lets_connections_finish_then_cuts(tagged: Any) -> None:
    port, _ = await tagged(b"")
    engine = await start_engine(config(tcp_listener(), backend_block("b", [port])))
    host, lport = engine.bound["l4"]
    reader, writer = await asyncio.open_connection(host, lport)
    writer.write(b"a")
    assert await asyncio.wait_for(reader.readexactly(1), 5) == b"a"
    task = asyncio.ensure_future(engine.shutdown(0.5))
    await asyncio.sleep(0.1)
    # still flowing during the grace period, new connections refused
    writer.write(b"b")
    assert await asyncio.wait_for(reader.readexactly(1), 5) == b"b"
    with pytest.raises(OSError):
        await asyncio.open_connection(host, lport)
    await asyncio.wait_for(task, 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_drain_timeout_cuts_connections_of_that_server(tagged: Any) -> None:
    port, _ = await tagged(b"")
    backends = backend_block("b", [port], "    drain_timeout: 200ms")
    engine = await start_engine(config(tcp_listener(), backends))
    try:
        host, lport = engine.bound["l4"]
        reader, writer = await asyncio.open_connection(host, lport)
        writer.write(b"a")
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"a"
        engine.backends["b"].drain("s0")
        # open connection carries on while draining...
        writer.write(b"b")
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"b"
        # ...until drain_timeout, when the engine's tick cuts it
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await engine.shutdown(1)


async def test_reload_keeps_open_connections(tagged: Any) -> None:
    p0, _ = await tagged(b"s0")
    p1, _ = await tagged(b"s1")
    engine = await start_engine(config(tcp_listener(), backend_block("b", [p0])))
    try:
        host, lport = engine.bound["l4"]
        reader, writer = await asyncio.open_connection(host, lport)
        assert await read_until(reader, b"\n") == b"s0\n"
        await engine.reload(config(tcp_listener(), backend_block("b", [p1]).replace("s0", "n0")))
        reader2, writer2 = await asyncio.open_connection(host, lport)
        assert await read_until(reader2, b"\n") == b"s1\n"
        writer.write(b"still here")
        assert await asyncio.wait_for(reader.readexactly(10), 5) == b"still here"
        writer.close()
        writer2.close()
    finally:
        await engine.shutdown(1)


async def test_back_pressure_pauses_the_fast_side(relay_mode: str) -> None:
    """A server that writes 64 MiB to a client that does not read: the proxy stops reading
    from the server (its own buffers stay bounded) and the server sees pause_writing."""
    loop = asyncio.get_running_loop()
    paused: asyncio.Future[None] = loop.create_future()
    total = 64 * 1024 * 1024
    chunk = b"x" * (1024 * 1024)

    class Firehose(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport
            self.sent = 0
            self.blocked = False
            self.more()

        def more(self) -> None:
            while self.sent < total and not self.blocked:
                self.t.write(chunk)
                self.sent += len(chunk)
            if self.sent >= total:
                self.t.write_eof()

        def pause_writing(self) -> None:
            self.blocked = True
            if not paused.done():
                paused.set_result(None)

        def resume_writing(self) -> None:
            self.blocked = False
            self.more()

    server, port = await start_server(Firehose)
    engine = await start_engine(config(tcp_listener(), backend_block("b", [port])))
    try:
        host, lport = engine.bound["l4"]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, lport))
        await asyncio.wait_for(paused, 10)  # the server had to stop: nobody drains it
        await asyncio.sleep(0.2)
        (conn,) = engine.listeners["l4"].runtime.connections
        if relay_mode != "splice":
            buffered = conn.transport.get_write_buffer_size()
            assert buffered <= tcp_proxy.HIGH_WATER + 1024 * 1024, buffered
        else:
            assert conn.splice is not None
        assert conn.bytes_out < total / 2  # far from everything was pulled in
        # now read it all: the flow resumes and every byte arrives
        received = 0
        while received < total:
            data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
            assert data
            received += len(data)
        assert received == total
        sock.close()
    finally:
        await engine.shutdown(1)
        server.close()


async def test_proxy_header_then_sni(tagged: Any) -> None:
    """accept_proxy_protocol and sni_routes together: header stripped, hello peeked."""
    import ssl

    pa, _ = await tagged(b"A")
    pb, log_b = await tagged(b"B")
    listener = tcp_listener(
        "a",
        "    accept_proxy_protocol: true\n"
        "    sni_routes:\n"
        "      - {server_name: b.example.net, backend: bb}",
    )
    backends = backend_block("a", [pa]) + "\n" + backend_block("bb", [pb])
    engine = await start_engine(config(listener, backends))
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        host, lport = engine.bound["l4"]
        ctx = ssl.create_default_context()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname="b.example.net")
        with pytest.raises(ssl.SSLWantReadError):
            obj.do_handshake()
        hello = outgoing.read()
        reader, writer = await asyncio.open_connection(host, lport)
        writer.write(encode_v2("192.0.2.9", 999, "192.0.2.1", 443) + hello)
        assert await read_until(reader, b"\n") == b"B\n"
        assert await asyncio.wait_for(reader.readexactly(len(hello)), 5) == hello
        writer.close()
        await writer.wait_closed()
        for _ in range(100):
            if records:
                break
            await asyncio.sleep(0.02)
        assert records[0].client == "192.0.2.9:999" and records[0].backend == "bb"
    finally:
        await engine.shutdown(1)


async def test_reload_swaps_sni_routes_for_new_connections(tagged: Any) -> None:
    pa, _ = await tagged(b"A")
    pb, _ = await tagged(b"B")

    def cfg(target: str) -> Any:
        listener = tcp_listener(
            "a",
            "    timeouts: {request_head: 200ms}\n"
            f"    sni_routes:\n      - {{server_name: x.example.net, backend: {target}}}",
        )
        return config(listener, backend_block("a", [pa]) + "\n" + backend_block("bb", [pb]))

    engine = await start_engine(cfg("a"))
    try:
        host, lport = engine.bound["l4"]
        import ssl

        def hello() -> bytes:
            ctx = ssl.create_default_context()
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = ctx.wrap_bio(incoming, outgoing, server_hostname="x.example.net")
            with pytest.raises(ssl.SSLWantReadError):
                obj.do_handshake()
            return outgoing.read()

        reader, writer = await asyncio.open_connection(host, lport)
        writer.write(hello())
        assert await read_until(reader, b"\n") == b"A\n"
        await engine.reload(cfg("bb"))
        reader2, writer2 = await asyncio.open_connection(host, lport)
        writer2.write(hello())
        assert await read_until(reader2, b"\n") == b"B\n"
        writer.close()
        writer2.close()
    finally:
        await engine.shutdown(1)


async def test_only_bulk_connections_switch_to_splice(
    tagged: Any, relay_mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tcp_proxy, "SPLICE_AFTER", 1024 * 1024)
    monkeypatch.setattr(tcp_proxy, "SPLICE_MIN_READ", 64 * 1024)
    port, _ = await tagged(b"")
    engine = await start_engine(config(tcp_listener(), backend_block("b", [port])))
    try:
        host, lport = engine.bound["l4"]
        runtime = engine.listeners["l4"].runtime
        reader, writer = await asyncio.open_connection(host, lport)
        writer.write(b"small")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"small"
        for _ in range(300):  # many small messages (2.4 MiB in all) never switch
            writer.write(b"m" * 8192)
            assert await asyncio.wait_for(reader.readexactly(8192), 5) == b"m" * 8192
        assert runtime.spliced_total == 0  # short exchanges stay on the Protocol path
        payload = bytes(range(256)) * 4096 * 4  # 4 MiB, echoed
        writer.write(payload)
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
        writer.write(b"after")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"after"
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"<after-eof>"
        assert runtime.spliced_total == (1 if relay_mode == "splice" else 0)
        writer.close()
    finally:
        await engine.shutdown(1)


async def test_outlier_detection_ejects_a_refusing_server(tagged: Any) -> None:
    """Connect failures are passive-health failures: after `consecutive_failures` the dead
    server is ejected and new connections stop paying for a retry."""
    dead = free_port()
    port, _ = await tagged(b"alive")
    extra = (
        "    retries: 1\n"
        "    outlier_detection: {consecutive_failures: 2, base_ejection_time: 30s, "
        "max_ejection_percent: 50}"
    )
    engine = await start_engine(config(tcp_listener(), backend_block("b", [dead, port], extra)))
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        host, lport = engine.bound["l4"]
        for _ in range(8):
            reader, writer = await asyncio.open_connection(host, lport)
            assert await read_until(reader, b"\n") == b"alive\n"
            writer.close()
            await writer.wait_closed()
        for _ in range(100):
            if len(records) == 8:
                break
            await asyncio.sleep(0.02)
        dead_state = engine.backends["b"].servers["s0"]
        assert dead_state.state(engine.clock()) == "ejected"
        assert dead_state.failures_total == 2
        assert [r.retries for r in records[-4:]] == [0, 0, 0, 0]
    finally:
        await engine.shutdown(1)


async def test_max_connections_per_server_counts_open_connections(tagged: Any) -> None:
    p0, _ = await tagged(b"s0")
    p1, _ = await tagged(b"s1")
    # max_queue 0: a connection that finds every server at its cap is closed at once
    backends = backend_block("b", [p0, p1], "    max_connections_per_server: 1\n    max_queue: 0")
    engine = await start_engine(config(tcp_listener(), backends))
    try:
        host, lport = engine.bound["l4"]
        r1, w1 = await asyncio.open_connection(host, lport)
        r2, w2 = await asyncio.open_connection(host, lport)
        got = {await read_until(r1, b"\n"), await read_until(r2, b"\n")}
        assert got == {b"s0\n", b"s1\n"}
        r3, w3 = await asyncio.open_connection(host, lport)  # both servers at their cap
        assert await asyncio.wait_for(r3.read(), 5) == b""
        w1.close()
        await w1.wait_closed()
        for _ in range(100):
            if sum(s.active for s in engine.backends["b"].servers.values()) == 1:
                break
            await asyncio.sleep(0.02)
        r4, w4 = await asyncio.open_connection(host, lport)  # a slot is free again
        assert await read_until(r4, b"\n") in (b"s0\n", b"s1\n")
        for w in (w2, w3, w4):
            w.close()
    finally:
        await engine.shutdown(1)


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(250):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not reached: {what}")


async def test_connection_cap_queue_serves_a_waiter_when_a_slot_frees(tagged: Any) -> None:
    """Every server at max_connections_per_server: a new connection waits in the backend's
    queue (its bytes kept) and is served, in order, once a connection closes. A client that
    resets while queued gives up its place; one that half-closes keeps it (it may still be
    waiting for an answer) and is served with its EOF passed on."""
    port, log = await tagged(b"s0")
    backends = backend_block(
        "b", [port], "    max_connections_per_server: 1\n    queue_timeout: 10s"
    )
    engine = await start_engine(config(tcp_listener(), backends))
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        backend = engine.backends["b"]
        host, lport = engine.bound["l4"]
        r1, w1 = await asyncio.open_connection(host, lport)
        assert await read_until(r1, b"\n") == b"s0\n"
        r2, w2 = await asyncio.open_connection(host, lport)
        w2.write(b"sent while queued\n")
        await wait_until(lambda: backend.queued == 1, "the second connection queued")
        # a client that gives up while queued (a reset): it leaves the queue
        leaver = socket.create_connection((host, lport))
        await wait_until(lambda: backend.queued == 2, "the leaver queued")
        leaver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        leaver.close()
        await wait_until(lambda: backend.queued == 1, "the leaver left the queue")
        await wait_until(lambda: len(records) == 1, "the leaver's record")
        assert records[0].server in (None, "") and records[0].backend == "b"
        # a client that half-closes while queued keeps its place
        r3, w3 = await asyncio.open_connection(host, lport)
        await wait_until(lambda: backend.queued == 2, "the third connection queued")
        w3.write(b"last words\n")
        w3.write_eof()
        await asyncio.sleep(0.05)
        assert backend.queued == 2
        assert sum(1 for e in log if e[0] == "open") == 1  # nobody else reached the server
        w1.close()
        assert await read_until(r2, b"\n") == b"s0\n"  # the longest waiter goes first
        assert await read_until(r2, b"\n") == b"sent while queued\n"
        assert backend.queued == 1
        w2.close()
        assert await read_until(r3, b"\n") == b"s0\n"
        assert await read_until(r3, b"\n") == b"last words\n"
        assert await asyncio.wait_for(r3.read(), 5) == b"<after-eof>"  # the EOF went on
        w3.close()
        await wait_until(lambda: len(records) == 4, "four records")
        assert sorted(r.server or "" for r in records) == ["", "s0", "s0", "s0"]
        assert backend.queued == 0
        assert backend.servers["s0"].active == 0
        assert sum(1 for e in log if e[0] == "open") == 3
    finally:
        await engine.shutdown(1)


async def test_connection_cap_queue_timeout_closes(tagged: Any) -> None:
    """A waiter that no slot reaches within queue_timeout is closed (nothing reached the
    server); the connection holding the slot is untouched, and the next one is served once
    it ends."""
    port, log = await tagged(b"s0")
    backends = backend_block(
        "b", [port], "    max_connections_per_server: 1\n    queue_timeout: 300ms"
    )
    engine = await start_engine(config(tcp_listener(), backends))
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        backend = engine.backends["b"]
        host, lport = engine.bound["l4"]
        r1, w1 = await asyncio.open_connection(host, lport)
        assert await read_until(r1, b"\n") == b"s0\n"
        r2, w2 = await asyncio.open_connection(host, lport)
        w2.write(b"never delivered")
        assert await asyncio.wait_for(r2.read(), 5) == b""  # closed after queue_timeout
        w2.close()
        await wait_until(lambda: len(records) == 1, "the timed-out connection's record")
        assert records[0].server in (None, "") and records[0].backend == "b"
        assert backend.queued == 0
        assert sum(1 for e in log if e[0] == "open") == 1
        # the first connection still works, and once it ends the next one is served
        w1.write(b"still here\n")
        assert await read_until(r1, b"\n") == b"still here\n"
        w1.close()
        await wait_until(lambda: backend.servers["s0"].active == 0, "the slot freed")
        r4, w4 = await asyncio.open_connection(host, lport)
        assert await read_until(r4, b"\n") == b"s0\n"
        w4.close()
    finally:
        await engine.shutdown(1)


async def test_connection_cap_queue_across_reload_and_shutdown(tagged: Any) -> None:
    """A reload moves queued connections to the new backend, which serves them when a slot
    frees; at shutdown a connection still queued is closed once shutdown_timeout is up."""
    port, _ = await tagged(b"s0")
    backends = backend_block(
        "b", [port], "    max_connections_per_server: 1\n    queue_timeout: 30s"
    )
    cfg = config(tcp_listener(), backends)
    engine = await start_engine(cfg)
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        host, lport = engine.bound["l4"]
        r1, w1 = await asyncio.open_connection(host, lport)
        assert await read_until(r1, b"\n") == b"s0\n"
        r2, w2 = await asyncio.open_connection(host, lport)
        await wait_until(lambda: engine.backends["b"].queued == 1, "queued")
        old = engine.backends["b"]
        await engine.reload(config(tcp_listener(), backends))
        assert engine.backends["b"] is not old and engine.backends["b"].queued == 1
        w1.close()
        assert await read_until(r2, b"\n") == b"s0\n"
        r3, w3 = await asyncio.open_connection(host, lport)
        await wait_until(lambda: engine.backends["b"].queued == 1, "queued again")
    finally:
        await engine.shutdown(0.3)
    assert await asyncio.wait_for(r3.read(), 5) == b""  # cut with the others
    assert engine.backends["b"].queued == 0
    assert len(records) == 3
    for w in (w2, w3):
        w.close()


async def test_connect_timeout_then_retry_elsewhere(
    tagged: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A server whose accept queue is full never answers the SYN: the connect times out
    (backend timeouts.connect) and the connection is retried on the other server."""
    stuck = BlackholeServer("s0")  # its accept queue is full: SYNs go unanswered
    stuck_port = stuck.port
    await asyncio.sleep(0.2)
    port, _ = await tagged(b"alive")
    extra = "    retries: 1\n    timeouts: {connect: 300ms}"
    engine = await start_engine(
        config(tcp_listener(), backend_block("b", [stuck_port, port], extra))
    )
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        host, lport = engine.bound["l4"]
        caplog.set_level(logging.INFO, logger="steelyard")
        for _ in range(2):  # round robin: at least one starts on the stuck server
            reader, writer = await asyncio.open_connection(host, lport)
            assert await read_until(reader, b"\n") == b"alive\n"
            writer.close()
            await writer.wait_closed()
        for _ in range(100):
            if len(records) == 2:
                break
            await asyncio.sleep(0.02)
        assert all(r.server == "s1" for r in records)
        retried = sum(r.retries for r in records)
        assert retried >= 1
        # every timed-out attempt was held against the stuck server (Outcome.TIMEOUT)
        assert engine.backends["b"].servers["s0"].failures_total == retried
        assert "failed: timeout" in caplog.text  # timed out, not refused
    finally:
        await engine.shutdown(1)
        stuck.close()


async def test_shutdown_while_connecting_cancels_the_attempt() -> None:
    """Shutdown reaches a connection whose connect to the server still hangs: the attempt is
    cancelled (not left to its 30 s timeout), the lease is released as CANCELLED (not held
    against the server), the client is closed and the connection is recorded."""
    stuck = BlackholeServer("s0")  # its accept queue is full: SYNs go unanswered
    stuck_port = stuck.port
    await asyncio.sleep(0.2)
    extra = "    timeouts: {connect: 30s}"
    engine = await start_engine(config(tcp_listener(), backend_block("b", [stuck_port], extra)))
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        host, lport = engine.bound["l4"]
        reader, writer = await asyncio.open_connection(host, lport)
        writer.write(b"hello")
        state = engine.backends["b"].servers["s0"]
        for _ in range(100):
            if state.active == 1:
                break
            await asyncio.sleep(0.02)
        assert state.active == 1  # the connect is pending, holding a lease
        (conn,) = engine.listeners["l4"].runtime.connections
        assert "connecting" in repr(conn.connector)
        await asyncio.wait_for(engine.shutdown(0.2), 5)
        try:  # cut: a FIN, or a reset since "hello" was never read; nothing relayed
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionResetError:
            pass
        assert len(records) == 1 and records[0].server is None
        assert state.active == 0
        assert state.failures_total == 0  # cut by us: no fault of the server
        writer.close()
    finally:
        await engine.shutdown(1)
        stuck.close()


async def test_server_given_by_host_name(tagged: Any) -> None:
    """A server address with a name (resolved per connect, through the loop's resolver)."""
    port, _ = await tagged(b"named")
    backends = f"""  b:
    servers:
      - {{address: "localhost:{port}", name: s0}}
"""
    engine = await start_engine(config(tcp_listener(), backends))
    try:
        host, lport = engine.bound["l4"]
        reader, writer = await asyncio.open_connection(host, lport)
        assert await read_until(reader, b"\n") == b"named\n"
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        writer.close()
        await writer.wait_closed()
    finally:
        await engine.shutdown(1)


async def test_client_reset_while_connecting_cancels_the_attempt() -> None:
    """The client resets while the connect to the server still hangs: noticed at once (the
    proxy keeps reading while it connects), the attempt is cancelled, the lease released as
    CANCELLED (not held against the server) and the connection recorded."""
    stuck = BlackholeServer("s0")  # its accept queue is full: SYNs go unanswered
    stuck_port = stuck.port
    await asyncio.sleep(0.2)
    extra = "    timeouts: {connect: 30s}"
    engine = await start_engine(config(tcp_listener(), backend_block("b", [stuck_port], extra)))
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        host, lport = engine.bound["l4"]
        _, writer = await asyncio.open_connection(host, lport)
        writer.write(b"hello")
        state = engine.backends["b"].servers["s0"]
        for _ in range(100):
            if state.active == 1:
                break
            await asyncio.sleep(0.02)
        assert state.active == 1  # the connect is pending, holding a lease
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST
        for _ in range(150):
            if records:
                break
            await asyncio.sleep(0.02)
        assert len(records) == 1 and records[0].server is None
        assert records[0].bytes_in == 5
        assert state.active == 0
        assert state.failures_total == 0  # the client left: no fault of the server
        assert not engine.listeners["l4"].runtime.connections
    finally:
        await engine.shutdown(1)
        stuck.close()


async def test_client_data_while_connecting_is_bounded_then_relayed_intact() -> None:
    """A client that sends 1 MiB before the server has answered the connect: the proxy keeps
    at most about CONNECT_BUFFER of it (reading pauses), and once the connect completes every
    byte arrives, in order."""
    loop = asyncio.get_running_loop()
    stuck = BlackholeServer("s0")  # its accept queue is full: SYNs go unanswered
    stuck.sock.setblocking(False)
    stuck_port = stuck.port
    await asyncio.sleep(0.2)
    extra = "    timeouts: {connect: 20s}"
    engine = await start_engine(config(tcp_listener(), backend_block("b", [stuck_port], extra)))
    payload = bytes(range(256)) * 4096  # 1 MiB
    try:
        host, lport = engine.bound["l4"]
        _, writer = await asyncio.open_connection(host, lport)
        writer.write(payload)
        state = engine.backends["b"].servers["s0"]
        for _ in range(100):
            if state.active == 1:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        (conn,) = engine.listeners["l4"].runtime.connections
        assert conn.phase is tcp_proxy.Phase.CONNECTING
        assert conn.reading_paused
        assert tcp_proxy.CONNECT_BUFFER <= len(conn.buffer) < tcp_proxy.CONNECT_BUFFER + 512 * 1024
        # accept everything queued: the fillers (known by their ports) are closed, and the
        # proxy's SYN, retransmitted once there is room, gets through
        filler_ports = {f.getsockname()[1] for f in stuck.fillers}
        received = bytearray()
        server_side = None
        for _ in range(len(stuck.fillers) + 1):
            s, peer = await asyncio.wait_for(loop.sock_accept(stuck.sock), 15)
            if peer[1] in filler_ports:
                s.close()
                continue
            server_side = s
            break
        assert server_side is not None
        while len(received) < len(payload):
            chunk = await asyncio.wait_for(loop.sock_recv(server_side, 1 << 20), 5)
            assert chunk, f"closed after {len(received)} bytes"
            received += chunk
        assert bytes(received) == payload
        server_side.close()
        writer.close()
    finally:
        await engine.shutdown(1)
        stuck.close()


async def test_many_clients_with_mixed_endings_leave_nothing_behind(
    tagged: Any, relay_mode: str
) -> None:
    """120 concurrent clients through one listener, each ending its own way: a normal
    exchange then close, a half-close that still gets the server's answer, a reset in the
    middle, a client that leaves before reading. Every client that waits for its bytes gets
    them intact, and afterwards the listener has no connection, no lease and (on the raw
    relay) no socket left in its epoll set."""
    port, _ = await tagged(b"s0")
    engine = await start_engine(config(tcp_listener(), backend_block("b", [port])))
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    host, lport = engine.bound["l4"]

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection(host, lport)
        assert await read_until(reader, b"\n") == b"s0\n"
        payload = (b"%d:" % i) * (1 + i * 37 % 3000)
        kind = i % 4
        writer.write(payload)
        if kind == 0:  # normal
            assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
            writer.close()
        elif kind == 1:  # half-close: the echo and the server's own EOF still arrive
            writer.write_eof()
            rest = await asyncio.wait_for(reader.read(), 10)
            assert rest == payload + b"<after-eof>"
            writer.close()
        elif kind == 2:  # reset in the middle
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:  # leaves without reading
            writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(120))), 30)
        runtime = engine.listeners["l4"].runtime
        for _ in range(200):
            if len(records) == 120 and not runtime.connections:
                break
            await asyncio.sleep(0.02)
        assert len(records) == 120 and not runtime.connections
        state = engine.backends["b"].servers["s0"]
        assert state.active == 0 and state.requests_total == 120
        if runtime.reactor is not None:  # only the listening socket is left in the set
            assert len(runtime.reactor.handlers) == 1, runtime.reactor.handlers
    finally:
        await engine.shutdown(1)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no ::1 here")
async def test_ipv6_listener_and_server(relay_mode: str) -> None:
    """An IPv6 listener in front of an IPv6 server: accepted, connected and relayed (the raw
    relay picks the address family from the server's address), with the client's address
    recorded in brackets."""
    loop = asyncio.get_running_loop()
    log: list[Any] = []
    server = await loop.create_server(lambda: TaggedEcho(b"v6", log), "::1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = await start_engine(
        config(
            "  - {name: l4, protocol: tcp, bind: '[::1]:0', backend: b}\n",
            f"  b:\n    servers: [{{address: '[::1]:{port}', name: s0}}]\n",
        )
    )
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        host, lport = engine.bound["l4"]
        await greet_echo_close(host, lport, b"v6", b"over six")
        await wait_records(records, 1)
        (rec,) = records
        assert rec.client.startswith("[::1]:") and rec.server == "s0"
        assert log[0][0] == "open" and log[0][1][0] == "::1"
    finally:
        await engine.shutdown(1)
        server.close()
