"""`accept_proxy_protocol` on HTTP listeners (plain and HTTPS) and on TLS-terminating TCP
listeners (net/proxy_preface.py): the PROXY header's source is the client -- in
X-Forwarded-For and in the access record -- and a connection without a header is refused.

The TLS cases send the header and the ClientHello in one segment, as a proxy in front does:
the header must come off the socket without a byte of the hello (tls_after_header below
builds the hello with an ssl.MemoryBIO so that both go out in one send).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from tests.helpers.http_backends import HttpBackend, http_backend, steelyard

from steelyard.config import load_config_text
from steelyard.core.proxy_protocol import encode_v1, encode_v2, encode_v2_local
from steelyard.net import proxy_preface

CLIENT = ("203.0.113.7", 4242)
REQUEST = b"GET /who HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n"


def header(version: str) -> bytes:
    encode = encode_v1 if version == "v1" else encode_v2
    return encode(CLIENT[0], CLIENT[1], "198.51.100.1", 443)


def http_config(backend: HttpBackend, tls: tuple[str, str] | None = None) -> str:
    text = "version: 1\nlisteners:\n  - name: web\n    bind: 127.0.0.1:0\n"
    text += "    accept_proxy_protocol: true\n    timeouts: {request_head: 1s}\n"
    if tls is not None:
        text += f"    tls:\n      certificates:\n        - {{cert: '{tls[0]}', key: '{tls[1]}'}}\n"
    text += "    routes:\n      - match: {path_prefix: /}\n        backend: api\n"
    text += f"backends:\n  api:\n    servers:\n      - {{address: '{backend.address}'}}\n"
    return text


async def raw_exchange(port: int, chunks: list[bytes], delay: float = 0.0) -> bytes:
    """Send the chunks (with a pause between them), then read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, chunk in enumerate(chunks):
            if i and delay:
                await asyncio.sleep(delay)
            writer.write(chunk)
            await writer.drain()
        data = b""
        while True:
            part = await asyncio.wait_for(reader.read(65536), 5)
            data += part
            if not part:  # the requests say Connection: close
                return data
    finally:
        writer.close()


def tls_after_header(
    port: int, prefix: bytes, ctx: ssl.SSLContext, name: str, payload: bytes, split: bool = False
) -> bytes:
    """Blocking: a TLS client whose PROXY header and ClientHello leave in one send (or, with
    `split`, the header's first 7 bytes first); sends `payload`, returns what comes back
    until the server closes (HTTP) or a line ends (anything else)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = outgoing.read()
        if split:
            sock.sendall(prefix[:7])
            time.sleep(0.05)
            sock.sendall(prefix[7:] + hello)
        else:
            sock.sendall(prefix + hello)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                out = outgoing.read()
                if out:
                    sock.sendall(out)
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                incoming.write(data)
        out = outgoing.read()
        if out:
            sock.sendall(out)
        tls.write(payload)
        sock.sendall(outgoing.read())
        got = b""
        while True:
            try:
                chunk = tls.read(65536)
                if not chunk:
                    return got
                got += chunk
                if got.endswith(b"\n") and not got.startswith(b"HTTP/"):
                    return got  # a line from the tcp echo (HTTP: read to the close)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    return got
                incoming.write(data)
    finally:
        sock.close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    leaf = ca.issue_cert("proxied.test")
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "c.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert_path))
    for pem in leaf.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_path), append=True)
    leaf.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


# -- HTTP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_http_listener_takes_the_client_from_the_proxy_header(version: str) -> None:
    async with http_backend("s1") as b, steelyard(http_config(b)) as sy:
        # header and request in one segment, then a second request on the same connection
        reply = await raw_exchange(sy.port, [header(version) + REQUEST])
        assert reply.startswith(b"HTTP/1.1 200")
        # the header split across two reads, the request right behind it
        reply = await raw_exchange(
            sy.port, [header(version)[:7], header(version)[7:] + REQUEST], 0.05
        )
        assert reply.startswith(b"HTTP/1.1 200")
        assert [r.header("x-forwarded-for") for r in b.requests] == [CLIENT[0], CLIENT[0]]
        assert [r.client for r in sy.records] == [f"{CLIENT[0]}:{CLIENT[1]}"] * 2


async def test_http_record_names_an_ipv6_client_in_brackets() -> None:
    """The record's client text is made when the request is recorded (client_text()):
    an IPv6 address is written `[addr]:port`."""
    async with http_backend("s1") as b, steelyard(http_config(b)) as sy:
        proxy = encode_v1("2001:db8::7", 4242, "2001:db8::1", 443)
        reply = await raw_exchange(sy.port, [proxy + REQUEST])
        assert reply.startswith(b"HTTP/1.1 200")
        assert [r.header("x-forwarded-for") for r in b.requests] == ["2001:db8::7"]
        assert [r.client for r in sy.records] == ["[2001:db8::7]:4242"]


async def test_http_listener_refuses_a_connection_without_the_header() -> None:
    async with http_backend("s1") as b, steelyard(http_config(b)) as sy:
        assert await raw_exchange(sy.port, [REQUEST]) == b""  # closed, nothing answered
        # none at all: closed after timeouts.request_head (1s)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await raw_exchange(sy.port, []) == b""
        assert 0.8 <= loop.time() - started < 3
        assert b.requests == [] and sy.records == []


async def test_refusals_are_warned_about_once_a_minute_per_listener(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # every connection refused usually means the proxy in front sends no header: say so, but
    # not once per connection
    monkeypatch.setattr(proxy_preface, "_refusals", {})
    caplog.set_level(logging.WARNING, logger="steelyard")
    async with http_backend("s1") as b, steelyard(http_config(b)) as sy:
        for _ in range(3):
            assert await raw_exchange(sy.port, [REQUEST]) == b""
        warnings = [r.getMessage() for r in caplog.records if "PROXY header" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert "web: refused 1 connection(s)" in warnings[0] and "from 127.0.0.1" in warnings[0]
        monkeypatch.setattr(proxy_preface, "WARN_EVERY", 0.0)
        assert await raw_exchange(sy.port, [REQUEST]) == b""
        warnings = [r.getMessage() for r in caplog.records if "PROXY header" in r.getMessage()]
        assert len(warnings) == 2 and "refused 3 connection(s)" in warnings[1], warnings


async def test_http_listener_local_header_keeps_the_peer_address() -> None:
    # a LOCAL header (the proxy in front checking health) carries no client: the peer's own
    async with http_backend("s1") as b, steelyard(http_config(b)) as sy:
        reply = await raw_exchange(sy.port, [encode_v2_local() + REQUEST])
        assert reply.startswith(b"HTTP/1.1 200")
        assert b.requests[0].header("x-forwarded-for") == "127.0.0.1"


async def test_a_reload_that_turns_the_header_on_restarts_the_listener() -> None:
    async with http_backend("s1") as b:
        plain = http_config(b).replace("    accept_proxy_protocol: true\n", "")
        async with steelyard(plain) as sy:
            assert (await raw_exchange(sy.port, [REQUEST])).startswith(b"HTTP/1.1 200")
            await sy.engine.reload(load_config_text(http_config(b)))
            port = sy.engine.bound["web"][1]
            assert await raw_exchange(port, [REQUEST]) == b""  # refused now
            reply = await raw_exchange(port, [header("v1") + REQUEST])
            assert reply.startswith(b"HTTP/1.1 200")
            assert [r.header("x-forwarded-for") for r in b.requests] == ["127.0.0.1", CLIENT[0]]


@pytest.mark.parametrize("split", [False, True])
async def test_https_listener_reads_the_header_before_the_handshake(
    ca: trustme.CA, cert: tuple[str, str], split: bool
) -> None:
    async with http_backend("s1") as b, steelyard(http_config(b, tls=cert)) as sy:
        reply = await asyncio.to_thread(
            tls_after_header, sy.port, header("v2"), client_ctx(ca), "proxied.test", REQUEST, split
        )
        assert reply.startswith(b"HTTP/1.1 200"), reply
        seen = b.requests[0]
        assert seen.header("x-forwarded-for") == CLIENT[0]
        assert seen.header("x-forwarded-proto") == "https"
        assert sy.records[0].client == f"{CLIENT[0]}:{CLIENT[1]}"


async def test_https_listener_refuses_tls_without_the_header(
    ca: trustme.CA, cert: tuple[str, str]
) -> None:
    async with http_backend("s1") as b, steelyard(http_config(b, tls=cert)) as sy:
        with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
            await asyncio.to_thread(
                tls_after_header, sy.port, b"", client_ctx(ca), "proxied.test", REQUEST
            )
        assert b.requests == []


async def test_https_listener_closes_when_no_tls_follows_the_header(
    cert: tuple[str, str],
) -> None:
    async with http_backend("s1") as b, steelyard(http_config(b, tls=cert)) as sy:
        # not TLS after a good header: the handshake fails and the connection is closed
        reply = await raw_exchange(sy.port, [header("v1") + b"GET / HTTP/1.1\r\n\r\n"])
        assert not reply.startswith(b"HTTP/")
        # nothing after the header: closed by the handshake timeout (timeouts.request_head)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await raw_exchange(sy.port, [header("v2")]) == b""
        assert 0.8 <= loop.time() - started < 3
        assert b.requests == []


# -- TCP with TLS termination ------------------------------------------------------------------


async def test_tls_tcp_listener_reads_the_header_before_the_handshake(
    ca: trustme.CA, cert: tuple[str, str]
) -> None:
    """Was broken: the header went into the TLS handshake. Now it is read first, the
    plaintext reaches the server, and the server gets the original client in the PROXY
    header Steelyard sends on."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        while b"ping\n" not in data:
            part = await reader.read(4096)
            if not part:
                break
            data += part
        if not got.done():
            got.set_result(data)
        writer.write(b"pong\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(server, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    text = (
        "version: 1\nlisteners:\n  - name: web\n    protocol: tcp\n    bind: 127.0.0.1:0\n"
        "    backend: b\n    accept_proxy_protocol: true\n"
        f"    tls:\n      certificates:\n        - {{cert: '{cert[0]}', key: '{cert[1]}'}}\n"
        f"backends:\n  b:\n    proxy_protocol: v1\n    servers:\n      - {{address: '127.0.0.1:{port}'}}\n"
    )
    async with srv, steelyard(text) as sy:
        reply = await asyncio.to_thread(
            tls_after_header, sy.port, header("v2"), client_ctx(ca), "proxied.test", b"ping\n"
        )
        assert reply == b"pong\n"
        data = await asyncio.wait_for(got, 5)
        assert data == encode_v1(CLIENT[0], CLIENT[1], "198.51.100.1", 443) + b"ping\n"
        await asyncio.sleep(0.1)
        records: list[Any] = sy.records
        assert records and records[0].client == f"{CLIENT[0]}:{CLIENT[1]}"
