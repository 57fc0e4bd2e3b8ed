"""Reading a health-check response (net/health_check._read_response) from a StreamReader fed
by hand: no sockets. Whole, one byte at a time, and at every split point."""

from __future__ import annotations

import asyncio

import pytest

from steelyard.net.health_check import CheckSpec, _read_response, spec_for


def spec(expect_body: bytes | None = None, statuses: str = "200-399") -> CheckSpec:
    ranges = tuple((int(p.split("-")[0]), int(p.split("-")[-1])) for p in statuses.split(","))
    return CheckSpec(
        kind="http",
        host="127.0.0.1",
        port=1,
        path="/health",
        host_header="127.0.0.1:1",
        statuses=ranges,
        expect_body=expect_body,
        interval=1.0,
        timeout=0.5,
        tls=None,
        proxy_protocol=None,
    )


async def read(pieces: list[bytes], s: CheckSpec) -> tuple[bool, str]:
    reader = asyncio.StreamReader()
    for piece in pieces:
        reader.feed_data(piece)
    reader.feed_eof()
    return await _read_response(reader, s)


def splits(data: bytes) -> list[list[bytes]]:
    out = [[data], [bytes([b]) for b in data]]
    out += [[data[:i], data[i:]] for i in range(1, len(data))]
    return out


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nall ok!"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nall \r\n3\r\nok!\r\n0\r\n\r\n"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown"
NO_LENGTH = b"HTTP/1.0 200 OK\r\n\r\nstatus: all ok!"


@pytest.mark.parametrize("pieces", splits(OK))
async def test_pass_with_body_at_any_split(pieces: list[bytes]) -> None:
    assert await read(pieces, spec(b"ok!")) == (True, "status 200")


@pytest.mark.parametrize("pieces", splits(CHUNKED))
async def test_chunked_body_is_matched_across_chunks(pieces: list[bytes]) -> None:
    assert await read(pieces, spec(b"all ok")) == (True, "status 200")


async def test_status_outside_range() -> None:
    assert await read([UNAVAILABLE], spec()) == (False, "status 503")
    assert await read([OK], spec(statuses="204")) == (False, "status 200")
    assert await read([UNAVAILABLE], spec(statuses="200,500-503")) == (True, "status 503")


async def test_body_mismatch() -> None:
    assert await read([OK], spec(b"healthy")) == (False, "body mismatch")


async def test_body_delimited_by_close() -> None:
    assert await read([NO_LENGTH], spec(b"all ok")) == (True, "status 200")


async def test_without_expect_body_the_head_is_enough() -> None:
    # the body never ends (no EOF needed): the head decides
    reader = asyncio.StreamReader()
    reader.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nxx")
    assert await asyncio.wait_for(_read_response(reader, spec()), 5) == (True, "status 200")


async def test_closed_before_a_response() -> None:
    assert await read([], spec()) == (False, "connection closed before a response")


async def test_truncated_head_is_invalid() -> None:
    assert await read([b"HTTP/1.1 200 OK\r\nContent-"], spec()) == (False, "invalid response")


async def test_garbage_raises_parser_error() -> None:
    import httptools

    with pytest.raises(httptools.HttpParserError):
        await read([b"NOT HTTP\r\n\r\n"], spec())


async def test_huge_head_is_refused() -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70000 + b"\r\n\r\n"
    ok, reason = await read([head], spec())
    assert not ok
    assert reason.startswith("invalid response")


def test_spec_from_config_model() -> None:
    from steelyard.config import load_config_text

    cfg = load_config_text(
        """
version: 1
backends:
  api:
    proxy_protocol: v2
    health_check: {type: http, path: /hc, host: h.example, expect_status: "200,204",
                   expect_body: up, interval: 2s, timeout: 1s}
    servers:
      - {address: "[::1]:8080", name: six}
"""
    ).backends["api"]

    class FakeBackend:
        config = cfg

    class FakeState:
        from steelyard.core.balancing.base import Server

        server = Server("six", "::1", 8080)

    s = spec_for(FakeBackend(), FakeState())
    assert s is not None
    assert (s.kind, s.host, s.port, s.path, s.host_header) == (
        "http",
        "::1",
        8080,
        "/hc",
        "h.example",
    )
    assert s.statuses == ((200, 200), (204, 204))
    assert (s.expect_body, s.interval, s.timeout, s.proxy_protocol) == (b"up", 2.0, 1.0, "v2")
    assert s.status_ok(204) and not s.status_ok(201)
