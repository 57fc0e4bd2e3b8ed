"""Write batching (net/writes.py): the writes of a loop pass go out together at its end, each
connection's bytes in order, and nothing batched is lost when a connection ends in the same
pass. On uvloop (what `steelyard run` uses) and on the stdlib loop. The end-of-connection
cases are arranged so that the bytes and the end meet in one pass (two sockets that become
readable together, or one read that holds an answer and its framing error): a socket's data
and its EOF alone never do, as both loops stop reading a socket after a short read."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvloop
from tests.helpers.http_backends import (
    RawClient,
    http_backend,
    open_echo_tunnel,
    parse_responses,
    proxy_config,
    steelyard,
)

from steelyard.net.writes import WriteBatch

LOOP_FACTORIES = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}

MiB = 1024 * 1024


async def test_each_loop_is_the_one_named(request: pytest.FixtureRequest) -> None:
    loop_id = request.node.callspec.id
    assert loop_id in LOOP_FACTORIES
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop) == (loop_id == "uvloop")


async def test_concurrent_pipelined_clients_get_their_answers_in_order() -> None:
    clients, per_client = 20, 6
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        batch = sy.listener().pools.batch
        assert isinstance(batch, WriteBatch)
        before = (batch.flushes, batch.writes)

        async def one(c: int) -> list[Any]:
            raw = await RawClient.connect(sy.port)
            reqs = b""
            for i in range(per_client):
                last = b"Connection: close\r\n" if i == per_client - 1 else b""
                body = b"c%d-r%d" % (c, i)
                reqs += (
                    b"POST /echo?c=%d&i=%d HTTP/1.1\r\nHost: a\r\n%sContent-Length: %d\r\n\r\n%s"
                    % (c, i, last, len(body), body)
                )
            await raw.send(reqs)
            data = await raw.read_until_close()
            await raw.close()
            return parse_responses(data)

        results = await asyncio.gather(*(one(c) for c in range(clients)))
        for c, replies in enumerate(results):
            assert [r.status for r in replies] == [200] * per_client, c
            assert [r.json()["body"] for r in replies] == [f"c{c}-r{i}" for i in range(per_client)]
            assert [r.json()["target"] for r in replies] == [
                f"/echo?c={c}&i={i}" for i in range(per_client)
            ]
        flushes, writes = batch.flushes - before[0], batch.writes - before[1]
        # every request and response went through the batch, several writes per flush
        assert writes >= 2 * clients * per_client
        assert writes > flushes


async def test_answer_and_client_eof_in_one_pass_lose_nothing() -> None:
    """The server's answer and the client's EOF become readable together (the server shuts
    the client's sending side right after answering): the proxy batches the answer, then the
    client's eof_received closes the connection in the same pass; the batch goes out first."""
    loop = asyncio.get_running_loop()
    client: dict[str, asyncio.StreamWriter] = {}

    class Server(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport, self.buf = transport, b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            if b"\r\n\r\n" in self.buf:
                self.buf = b""
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                client["w"].write_eof()  # the client's FIN, right behind the answer

    server = await loop.create_server(Server, "127.0.0.1", 0)

    class Addr:
        name = "s1"
        address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    try:
        async with steelyard(proxy_config({"api": [Addr()]})) as sy:
            for i in range(10):
                raw = await RawClient.connect(sy.port)
                client["w"] = raw.writer
                await raw.send(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
                data = await raw.read_until_close()
                await raw.close()
                [reply] = parse_responses(data)
                assert (reply.status, reply.body) == (200, b"ok"), i
    finally:
        server.close()
        await server.wait_closed()


async def test_answer_to_a_half_closed_client_arrives_whole() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        raw = await RawClient.connect(sy.port)
        raw.writer.write(
            b"GET /big/300000 HTTP/1.1\r\nHost: a\r\n\r\nGET /status/201 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        raw.writer.write_eof()
        data = await raw.read_until_close()
        await raw.close()
        replies = parse_responses(data)
        assert [r.status for r in replies] == [200, 201]
        assert len(replies[0].body) == 300000


@contextlib.asynccontextmanager
async def raw_server(answer: bytes) -> AsyncIterator[Any]:
    """Answers every request head with `answer`, in one write, and closes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)

    class Addr:
        name = "raw"
        address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    try:
        yield Addr()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_cut_response_still_delivers_what_came_before_the_cut() -> None:
    """A chunked answer that breaks its framing after the head and a first chunk, all in one
    read: the head and the chunk are batched, then the connection is aborted in the same pass;
    what was batched goes out before the abort (a cut-off response, never re-framed)."""
    answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n"
    async with raw_server(answer) as srv, steelyard(proxy_config({"api": [srv]})) as sy:
        for _ in range(5):
            raw = await RawClient.connect(sy.port)
            await raw.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            data = await raw.read_until_close()
            await raw.close()
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), data
            assert body == b"5\r\nhello\r\n"  # the first chunk, then the cut: no last chunk


async def test_streamed_download_to_a_slow_reader_keeps_back_pressure() -> None:
    size = 16 * MiB
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        sock = socket.create_connection(("127.0.0.1", sy.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"GET /big/%d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % size)
        await asyncio.sleep(0.3)  # read nothing: the buffers on the way fill
        listener = sy.listener()
        [down] = list(listener.connections)
        batch = listener.pools.batch
        peak_buffer = peak_batch = got = 0
        buf = b""
        while True:
            data = await asyncio.wait_for(reader.read(128 * 1024), 10)
            if not data:
                break
            buf += data
            if len(buf) > 1 * MiB:
                got += len(buf)
                buf = b""
            if not down.closed:
                peak_buffer = max(peak_buffer, down.transport.get_write_buffer_size())
            peak_batch = max(peak_batch, sum(len(d) for d in batch.items[1::2]))
            await asyncio.sleep(0.0005)
        got += len(buf)
        writer.close()
        head_len = got - size
        assert 0 < head_len < 1000
        assert listener.upstream_read_pauses > 0
        assert peak_buffer < 2 * MiB
        assert peak_batch < 2 * MiB


async def test_streamed_upload_arrives_whole() -> None:
    size = 4 * MiB
    blob = bytes(range(256)) * (size // 256)
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        raw = await RawClient.connect(sy.port)
        head = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size
        raw.writer.write(head)
        for i in range(0, size, 256 * 1024):
            raw.writer.write(blob[i : i + 256 * 1024])
            await raw.writer.drain()
        reply = await raw.read_response(timeout=30)
        await raw.close()
        assert reply.status == 200
        echoed = reply.json()["body"].encode("latin-1")
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(blob).digest()


async def test_tunnel_bytes_keep_their_order() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        raw, _ = await open_echo_tunnel(sy.port, b"ab")
        sent = b"ab"
        for i in range(200):
            part = b"x%dy" % i
            raw.writer.write(part)
            sent += part
            if i % 7 == 0:
                await raw.writer.drain()
        await raw.writer.drain()
        assert await raw.read_exactly(len(sent)) == sent.upper()
        await raw.close()


def test_flush_skips_closing_transports_and_survives_a_broken_one() -> None:
    class T:
        def __init__(self, closing: bool = False, broken: bool = False) -> None:
            self.closing, self.broken, self.got = closing, broken, []

        def is_closing(self) -> bool:
            return self.closing

        def write(self, data: bytes) -> None:
            if self.broken:
                raise RuntimeError("broken")
            self.got.append(data)

    loop = asyncio.new_event_loop()
    try:
        batch = WriteBatch(loop)
        a, closing, broken = T(), T(closing=True), T(broken=True)
        batch.write(a, b"1")
        batch.write(closing, b"x")
        batch.write(broken, b"y")
        batch.write(a, b"2")
        assert a.got == []  # nothing before the end of the pass
        loop.run_until_complete(asyncio.sleep(0))
        assert a.got == [b"1", b"2"] and closing.got == []
        assert (batch.flushes, batch.writes, batch.scheduled) == (1, 4, False)
        batch.write(a, b"3")
        batch.flush()  # an early flush (a close) ...
        batch.write(a, b"4")  # ... and a write after it, in the same pass: still one timer
        loop.run_until_complete(asyncio.sleep(0))
        assert a.got == [b"1", b"2", b"3", b"4"]
    finally:
        loop.close()
