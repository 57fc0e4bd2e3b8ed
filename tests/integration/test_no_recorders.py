"""`log: {access: off}` and no admin: nothing records requests, and the data path then skips
the record's strings (method, path, request id, client text) and the access log's call
(net/http_proxy.py Exchange._finish, net/tcp_proxy.py, net/udp_proxy.py). The proxy must behave exactly as
with a recorder: these tests drive a real `steelyard run` process over real sockets."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_access_log import CONFIG
from tests.helpers.http_backends import HttpBackend, http_backend
from tests.helpers.servers import start_udp_echo
from tests.helpers.steelyard_process import SteelyardProcess

RID = re.compile(rb"\r\nX-Request-Id: ([0-9a-f]{20})\r\n", re.IGNORECASE)


@pytest.fixture
async def backend() -> AsyncIterator[HttpBackend]:
    async with http_backend("a") as b:
        yield b


def write_config(tmp_path: Path, server: HttpBackend) -> Path:
    """test_access_log's two listeners (http `web`, tcp `raw`) with the access log off."""
    path = tmp_path / "steelyard.yaml"
    path.write_text(CONFIG.format(port=server.port) + "log: {access: off}\n")
    return path


def exchange(port: int, payload: bytes, responses: int) -> list[bytes]:
    """Send `payload` on one connection; read until `responses` whole responses came (each
    with a Content-Length) or the server closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        data = b""
        out: list[bytes] = []
        while len(out) < responses:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                m = re.search(rb"content-length: (\d+)", data[:end], re.IGNORECASE)
                assert m, data
                total = end + 4 + int(m.group(1))
                if len(data) >= total:
                    out.append(data[:total])
                    data = data[total:]
                    continue
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return out


async def test_http_without_recorders_keepalive_pipelining_and_close(
    backend: HttpBackend, tmp_path: Path
) -> None:
    with SteelyardProcess(write_config(tmp_path, backend)) as sy:
        port = await asyncio.to_thread(sy.port, "web")
        # keep-alive, with three pipelined requests (the queue is made at the first)
        req = b"GET /p?q=1 HTTP/1.1\r\nHost: example.test\r\n\r\n"
        got = await asyncio.to_thread(exchange, port, req * 3, 3)
        assert len(got) == 3
        ids = set()
        for resp in got:
            assert resp.startswith(b"HTTP/1.1 200 OK\r\n"), resp
            m = RID.search(resp)
            assert m, resp
            ids.add(m.group(1))
        assert len(ids) == 3
        # Connection: close, a POST with a body, and a client-sent request id kept
        req = (
            b"POST /submit HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n"
            b"X-Request-Id: mine-1\r\nContent-Length: 5\r\n\r\nhello"
        )
        (resp,) = await asyncio.to_thread(exchange, port, req, 1)
        assert resp.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nConnection: close\r\n" in resp
        assert b"\r\nX-Request-Id: mine-1\r\n" in resp
        seen = backend.requests
        assert len(seen) == 4
        for r in seen:
            assert r.header("x-forwarded-for") == "127.0.0.1"
            assert r.header("x-forwarded-host") == "example.test"
        post = next(r for r in seen if r.method == "POST")
        assert post.body == b"hello" and post.header("x-request-id") == "mine-1"
        # an error answered by Steelyard itself still names a request id
        (resp,) = await asyncio.to_thread(exchange, port, b"GET / HTTP/1.1\r\n\r\n", 1)
        assert resp.startswith(b"HTTP/1.1 400 ") and b"request id" in resp
        assert sy.proc.poll() is None, sy.lines[-20:]


async def test_tcp_without_recorders(backend: HttpBackend, tmp_path: Path) -> None:
    with SteelyardProcess(write_config(tmp_path, backend)) as sy:
        port = await asyncio.to_thread(sy.port, "raw")
        for _ in range(4):
            req = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            (resp,) = await asyncio.to_thread(exchange, port, req, 1)
            assert resp.startswith(b"HTTP/1.1 200 "), resp  # the server's own bytes
            assert b"X-Request-Id" not in resp  # (no HTTP handling on a tcp listener)
        assert len(backend.requests) == 4
        assert sy.proc.poll() is None, sy.lines[-20:]


async def test_udp_without_recorders(tmp_path: Path) -> None:
    """Sessions open, answer and close (idle timeout, then a new session for the same
    client) with nothing recording them."""
    echo = start_udp_echo(tag="u:")
    try:
        path = tmp_path / "steelyard.yaml"
        path.write_text(
            "log: {access: off}\n"
            "listeners:\n"
            "  - {name: dns, protocol: udp, bind: 127.0.0.1:0, backend: u,"
            " session_idle_timeout: 0.3s}\n"
            "backends:\n"
            f"  u: {{servers: [{{address: 127.0.0.1:{echo.port}}}]}}\n"
        )
        with SteelyardProcess(path) as sy:
            port = await asyncio.to_thread(sy.port, "dns")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                for i in range(3):
                    s.sendto(b"q%d" % i, ("127.0.0.1", port))
                    assert s.recv(100) == b"u:q%d" % i
                    await asyncio.sleep(0.6)  # past the idle timeout: the session closes
            assert sy.proc.poll() is None, sy.lines[-20:]
            assert not any("Traceback" in line or "failed" in line for line in sy.lines), sy.lines
    finally:
        echo.stop()
