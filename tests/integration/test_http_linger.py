"""Lingering close: an answer given before the client's request was read to its end (413 over
`max_body_size`, a malformed head with more bytes behind it) is followed by a FIN, and what the
client still sends is read and dropped -- so the client gets the answer and a clean end of
stream instead of a reset that could destroy the answer before it is read."""

from __future__ import annotations

import asyncio
import socket

import pytest
from tests.helpers.engine_setup import until
from tests.helpers.http_backends import http_backend, proxy_config, steelyard

from steelyard.net import http_proxy

BODY = 8 * 1024 * 1024


def upload_then_read(port: int, head: bytes, body_size: int, chunk: int = 64 * 1024) -> bytes:
    """Blocking, like a simple client: send the head and the whole body before reading the
    answer; then read to the end of the stream. A reset raises."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        block = b"x" * chunk
        sent = 0
        while sent < body_size:
            sent += sock.send(block[: min(chunk, body_size - sent)])
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while data := sock.recv(65536):
            out += data
        return out


async def test_413_reaches_a_client_that_sends_its_whole_body_first() -> None:
    async with http_backend("s1") as s1:
        cfg = proxy_config({"api": [s1]}, listener="    max_body_size: 1KiB")
        async with steelyard(cfg) as sy:
            head = f"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {BODY}\r\n\r\n".encode()
            # before: the close with 8 MiB unread reset the connection mid-upload
            out = await asyncio.to_thread(upload_then_read, sy.port, head, BODY)
            assert out.startswith(b"HTTP/1.1 413 "), out[:80]
            assert b"Connection: close" in out
            assert s1.requests == []
            await until(lambda: not sy.listener().connections)


async def test_413_for_a_chunked_upload_is_answered_then_drained() -> None:
    async with http_backend("s1") as s1:
        cfg = proxy_config({"api": [s1]}, listener="    max_body_size: 1KiB")
        async with steelyard(cfg) as sy:
            # one 8 MiB chunk: over the limit as soon as its first KiB is in
            head = (
                b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                + f"{BODY:x}\r\n".encode()
            )
            out = await asyncio.to_thread(upload_then_read, sy.port, head, BODY)
            assert out.startswith(b"HTTP/1.1 413 "), out[:80]


async def test_a_bad_head_with_more_behind_it_is_answered_then_drained() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        # both Content-Length and Transfer-Encoding: refused (never forwarded), and the
        # "body" behind it is dropped, not left to turn the close into a reset
        head = (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        out = await asyncio.to_thread(upload_then_read, sy.port, head, 2 * 1024 * 1024)
        assert out.startswith(b"HTTP/1.1 400 "), out[:80]
        assert s1.requests == []


async def test_a_client_that_goes_quiet_is_closed_after_linger_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_proxy, "LINGER_IDLE", 1.0)
    async with http_backend("s1") as s1:
        cfg = proxy_config({"api": [s1]}, listener="    max_body_size: 1KiB")
        async with steelyard(cfg) as sy:
            reader, writer = await asyncio.open_connection("127.0.0.1", sy.port)
            writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
            writer.write(b"x" * 2000)  # then nothing more, and no close
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 5)  # the answer, then our FIN
            assert answer.startswith(b"HTTP/1.1 413 ")
            assert sy.listener().connections  # still reading what the client may send
            loop = asyncio.get_running_loop()
            started = loop.time()
            await until(lambda: not sy.listener().connections)
            assert loop.time() - started < 3  # LINGER_IDLE (1 s), not LINGER_MAX (30 s)
            writer.close()
