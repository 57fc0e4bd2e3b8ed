"""net/rawsock.py on its own: RawServer, RawTransport and RawConnect against real sockets,
checked for what asyncio's transports promise (the TCP listener's tests run the whole proxy
over them: test_tcp_proxy.py)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvloop

from steelyard.net import rawsock
from steelyard.net.rawsock import RawConnect, RawServer, RawTransport, Reactor

pytestmark = pytest.mark.skipif(not rawsock.SUPPORTED, reason="no epoll here")

LOOP_FACTORIES = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


class Recorder(asyncio.Protocol):
    """Keeps every callback; `keep_open` is what eof_received returns."""

    def __init__(self, keep_open: bool = False) -> None:
        self.keep_open = keep_open
        self.events: list[Any] = []
        self.data = bytearray()
        self.sizes: list[int] = []  # of each data_received
        self.transport: Any = None
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.eof = asyncio.Event()
        self.paused = asyncio.Event()
        self.resumed = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.sizes.append(len(data))

    def eof_received(self) -> bool:
        self.events.append("eof")
        self.eof.set()
        return self.keep_open

    def pause_writing(self) -> None:
        self.events.append("pause")
        self.paused.set()

    def resume_writing(self) -> None:
        self.events.append("resume")
        self.resumed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", type(exc).__name__ if exc else None))
        if not self.lost.done():
            self.lost.set_result(exc)


class Served:
    def __init__(self, reactor: Reactor, server: RawServer, port: int) -> None:
        self.reactor = reactor
        self.server = server
        self.port = port
        self.protocols: list[Recorder] = []
        self.made = asyncio.Event()


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """A RawServer on a free port whose connections get Recorder protocols."""
    loop = asyncio.get_running_loop()
    reactor = Reactor(loop)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    box: list[Served] = []

    def factory() -> Recorder:
        proto = Recorder(keep_open=True)
        box[0].protocols.append(proto)
        box[0].made.set()
        return proto

    server = RawServer(reactor, sock, factory)
    box.append(Served(reactor, server, sock.getsockname()[1]))
    yield box[0]
    server.close()
    for proto in box[0].protocols:
        if proto.transport is not None:
            proto.transport.abort()
    await asyncio.sleep(0)
    reactor.close()


async def client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def accepted(
    served: Served, small_buffer: bool = False
) -> tuple[socket.socket, Recorder, RawTransport]:
    """A blocking client socket connected to `served`, and the server side's protocol and
    transport. `small_buffer`: a 64 KiB receive buffer, so that the server's writes fill it."""
    sock = socket.socket()
    if small_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", served.port))
    await asyncio.wait_for(served.made.wait(), 5)
    (proto,) = served.protocols
    return sock, proto, proto.transport


async def read_to_eof(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    got = bytearray()
    while True:
        data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
        if not data:
            return bytes(got)
        got += data


async def test_accept_read_write_eof_and_close(served: Served) -> None:
    reader, writer = await client(served.port)
    await asyncio.wait_for(served.made.wait(), 5)
    (proto,) = served.protocols
    t = proto.transport
    assert isinstance(t, RawTransport)
    assert t.get_extra_info("peername") == writer.get_extra_info("sockname")
    assert t.get_extra_info("sockname") == writer.get_extra_info("peername")
    assert t.get_extra_info("nonsense", 7) == 7
    nodelay = t.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert nodelay, "accepted sockets get TCP_NODELAY"
    writer.write(b"hello")
    await writer.drain()
    for _ in range(100):
        if proto.data == b"hello":
            break
        await asyncio.sleep(0.01)
    assert proto.data == b"hello"
    t.write(b"back")
    assert await reader.readexactly(4) == b"back"
    writer.write_eof()  # half-close: eof_received returns True, the other way stays open
    await asyncio.wait_for(proto.eof.wait(), 5)
    assert not t.is_closing()
    t.write(b"after-eof")
    assert await reader.readexactly(9) == b"after-eof"
    t.close()
    assert t.is_closing()
    assert not proto.lost.done()  # connection_lost comes on a later loop iteration
    assert await asyncio.wait_for(proto.lost, 5) is None
    assert await reader.read() == b""
    assert proto.events == ["made", "eof", ("lost", None)]
    t.close()  # twice: nothing more happens
    t.abort()
    await asyncio.sleep(0.01)
    assert proto.events.count(("lost", None)) == 1
    writer.close()


async def test_eof_received_false_closes(served: Served) -> None:
    served.protocols.clear()
    reader, writer = await client(served.port)
    await asyncio.wait_for(served.made.wait(), 5)
    (proto,) = served.protocols
    proto.keep_open = False
    writer.write_eof()
    assert await asyncio.wait_for(proto.lost, 5) is None
    assert await reader.read() == b""
    writer.close()


async def test_back_pressure_then_everything_arrives_then_eof(served: Served) -> None:
    """8 MiB to a client that does not read: the transport buffers past its high-water mark
    and pauses the protocol; once the client reads, resume_writing, every byte in order, then
    the EOF written while bytes were still buffered."""
    sock, proto, t = await accepted(served, small_buffer=True)
    t.set_write_buffer_limits(256 * 1024, 64 * 1024)
    assert t.get_write_buffer_limits() == (64 * 1024, 256 * 1024)
    payload = bytes(range(256)) * (8 * 4096)  # 8 MiB
    for i in range(0, len(payload), 1 << 20):
        t.write(payload[i : i + (1 << 20)])
    assert proto.paused.is_set()
    assert t.get_write_buffer_size() > 256 * 1024
    t.write_eof()
    with pytest.raises(RuntimeError):
        t.write(b"x")
    assert await read_to_eof(sock) == payload
    assert proto.resumed.is_set() and t.get_write_buffer_size() == 0
    sock.close()


async def test_abort_drops_the_buffer(served: Served) -> None:
    sock, proto, t = await accepted(served, small_buffer=True)
    t.write(b"x" * (8 << 20))
    assert t.get_write_buffer_size() > 0
    t.abort()
    assert t.get_write_buffer_size() == 0 and t.is_closing()
    assert await asyncio.wait_for(proto.lost, 5) is None
    sock.close()


async def test_a_reset_peer_is_a_connection_error(served: Served) -> None:
    sock, proto, _t = await accepted(served)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    exc = await asyncio.wait_for(proto.lost, 5)
    assert isinstance(exc, ConnectionResetError)


async def test_a_hang_up_while_paused_does_not_spin(served: Served) -> None:
    """The peer closes while reading is paused: epoll reports the hang-up whatever the
    interest, so the socket leaves the set (no busy loop) until reading resumes, which then
    sees the data and the EOF."""
    sock, proto, t = await accepted(served)
    t.pause_reading()
    assert not t.is_reading()
    t.write_eof()  # both directions shut: the socket hangs up
    sock.sendall(b"last words")
    sock.shutdown(socket.SHUT_WR)
    await asyncio.sleep(0.3)
    # reported, then out of the set: nothing left to report, so nothing spins
    assert t.parked and t.fd not in served.reactor.handlers
    assert served.reactor.ep.poll(0) == []
    assert proto.data == b"" and not proto.eof.is_set()
    t.resume_reading()
    await asyncio.wait_for(proto.eof.wait(), 5)
    assert proto.data == b"last words"
    sock.close()


async def test_handing_out_the_socket_takes_it_out_of_the_set(served: Served) -> None:
    """get_extra_info("socket") may be duplicated (the splice path does): closing then
    removes the descriptor from the epoll set explicitly, else the duplicate would keep
    reporting events under a number a new socket may get."""
    sock, proto, t = await accepted(served)
    dup = socket.socket(fileno=os.dup(t.get_extra_info("socket").fileno()))
    t.abort()
    sock.sendall(b"for the duplicate")
    ready = served.reactor.ep.poll(0.2)
    assert ready == [], ready
    assert dup.recv(100) == b"for the duplicate"
    dup.close()
    sock.close()


async def test_accept_out_of_descriptors_waits_then_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    reactor = Reactor(loop)
    monkeypatch.setattr(rawsock, "ACCEPT_RETRY", 0.6)

    class Exhausted(socket.socket):
        failures = 1

        def _accept(self) -> Any:
            if Exhausted.failures:
                Exhausted.failures -= 1
                raise OSError(errno.EMFILE, "Too many open files")
            return super()._accept()  # type: ignore[misc]

    lsock = Exhausted()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    made: list[Recorder] = []

    def factory() -> Recorder:
        made.append(Recorder())
        return made[-1]

    server = RawServer(reactor, lsock, factory)
    try:
        reader, writer = await client(lsock.getsockname()[1])
        await asyncio.sleep(0.1)
        assert made == []  # refused to accept for ACCEPT_RETRY
        for _ in range(300):
            if made:
                break
            await asyncio.sleep(0.02)
        assert len(made) == 1  # then the pending connection was accepted
        writer.close()
    finally:
        server.close()
        for proto in made:
            proto.transport.abort()
        await asyncio.sleep(0)
        reactor.close()


async def test_connect_ok_refused_and_cancelled() -> None:
    loop = asyncio.get_running_loop()
    reactor = Reactor(loop)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    results: list[Any] = []

    def done(transport: RawTransport | None, exc: BaseException | None) -> None:
        results.append((transport, exc))

    try:
        proto = Recorder()
        c = RawConnect(reactor, proto, done)
        c.start(socket.AF_INET, "127.0.0.1", port)
        assert results == []
        for _ in range(100):
            if results:
                break
            await asyncio.sleep(0.01)
        ((transport, exc),) = results
        assert exc is None and isinstance(transport, RawTransport)
        assert proto.events == ["made"] and proto.transport is transport
        assert transport.get_extra_info("peername") == ("127.0.0.1", port)
        peer, _ = listener.accept()
        transport.write(b"ping")
        assert peer.recv(4) == b"ping"
        transport.close()
        peer.close()

        results.clear()
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        closed_port = free.getsockname()[1]
        free.close()  # nothing listens there
        c = RawConnect(reactor, Recorder(), done)
        c.start(socket.AF_INET, "127.0.0.1", closed_port)
        for _ in range(100):
            if results:
                break
            await asyncio.sleep(0.01)
        ((transport, exc),) = results
        assert transport is None and isinstance(exc, ConnectionRefusedError)

        results.clear()
        c = RawConnect(reactor, Recorder(), done)
        c.start(socket.AF_INET, "127.0.0.1", port)
        c.cancel()  # before the loop saw it connect
        assert results == []  # reported later, not from cancel()
        await asyncio.sleep(0.05)
        ((transport, exc),) = results
        assert transport is None and isinstance(exc, asyncio.CancelledError)
        c.cancel()
        await asyncio.sleep(0.01)
        assert len(results) == 1
        assert reactor.handlers == {}  # nothing left behind
    finally:
        listener.close()
        reactor.close()


def test_ip_family() -> None:
    assert rawsock.ip_family("127.0.0.1") == socket.AF_INET
    assert rawsock.ip_family("::1") == socket.AF_INET6
    assert rawsock.ip_family("localhost") == 0
    assert rawsock.ip_family("10.0.0.256") == 0
    assert rawsock.ip_family("") == 0


async def test_reads_grow_for_a_bulk_stream_and_shrink_back(served: Served) -> None:
    """Chunks handed to data_received: at most READ_SIZE until a read fills its buffer, then
    up to BULK_READ_SIZE; a short read brings the size back down."""
    sock, proto, t = await accepted(served)
    # room for a whole burst in the server's receive queue: its reads then find it all there
    t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()

    async def burst(n: int) -> None:
        """n bytes queued in the kernel while the transport does not read, then read."""
        t.pause_reading()
        proto.sizes.clear()
        before = len(proto.data)
        await loop.sock_sendall(sock, os.urandom(n))
        await asyncio.sleep(0.05)
        t.resume_reading()
        for _ in range(500):
            if len(proto.data) == before + n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{len(proto.data) - before} of {n} bytes arrived")

    await burst(1 << 20)
    # the first read: the small size, filled; then the bulk size, filled
    assert proto.sizes[:2] == [rawsock.READ_SIZE, rawsock.BULK_READ_SIZE], proto.sizes
    assert max(proto.sizes) <= rawsock.BULK_READ_SIZE
    await loop.sock_sendall(sock, b"short")  # a short read: back to the small size
    for _ in range(200):
        if proto.data.endswith(b"short"):
            break
        await asyncio.sleep(0.01)
    await burst(512 * 1024)
    assert proto.sizes[0] == rawsock.READ_SIZE, proto.sizes[:4]
    sock.close()


async def test_a_buffered_bytearray_is_copied(served: Served) -> None:
    sock, proto, t = await accepted(served, small_buffer=True)
    t.write(b"a" * (8 << 20))  # fills the socket: what follows is buffered
    tail = bytearray(b"tail")
    t.writelines([tail, memoryview(b"!")])
    tail[:] = b"XXXX"  # changed after write(): the copy goes out
    t.write_eof()
    got = await read_to_eof(sock)
    assert len(got) == (8 << 20) + 5 and got.endswith(b"tail!")
    sock.close()


async def test_an_event_for_a_closed_socket_does_not_reach_its_successor() -> None:
    """Within one batch of events: handling the first closes socket A, and a connect started
    there gets A's descriptor number; A's event, later in the same batch, must not reach the
    connect (it would look connected while its SYN still hangs)."""
    from tests.helpers.http_backends import BlackholeServer

    loop = asyncio.get_running_loop()
    reactor = Reactor(loop)
    hole = BlackholeServer("hole")
    results: list[Any] = []
    connects: list[RawConnect] = []
    a_in, a_out = socket.socketpair()
    h_in, h_out = socket.socketpair()
    a = RawTransport(reactor, a_in, Recorder(), None)

    class Closer(Recorder):
        def data_received(self, data: bytes) -> None:
            a.abort()  # A's descriptor number is free now...
            c = RawConnect(reactor, Recorder(), lambda t, exc: results.append((t, exc)))
            c.start(socket.AF_INET, hole.host, hole.port)  # ...and the connect takes it
            connects.append(c)

    h = RawTransport(reactor, h_in, Closer(), None)
    held: list[int] = []
    try:
        h.start()
        a.start()
        while True:  # hold every free number below A's, so that A's is the next one given
            fd = os.dup(0)
            if fd > a.fd:
                os.close(fd)
                break
            held.append(fd)
        x = a.fd
        h_out.send(b"go")  # ready first: handled first in the batch
        a_out.send(b"stale")  # ready second: its event follows in the same batch
        await asyncio.sleep(0.3)
        (c,) = connects
        if c.fd != x:
            pytest.skip("the connect did not get the closed socket's number")
        assert results == [], results  # the SYN still hangs: nothing may say connected
        c.cancel()
        await asyncio.sleep(0.01)
        assert isinstance(results[0][1], asyncio.CancelledError)
    finally:
        for fd in held:
            os.close(fd)
        h.abort()
        for s in (a_out, h_out):
            s.close()
        hole.close()
        await asyncio.sleep(0)
        reactor.close()
