"""Heads we build, checked with h11 as an independent parser; ids, templates, header rules."""

from __future__ import annotations

import random

import h11
import pytest
from tests.unit.test_http1_parser import Collect

from steelyard.core.http1.headers import (
    BODY_CHUNKED,
    BODY_CLOSE,
    BODY_LENGTH,
    BODY_NONE,
    HeaderActions,
    RequestContext,
    RequestIdGenerator,
    Template,
    build_request_head,
    build_response_head,
    chunk,
    last_chunk,
    local_response,
    response_mode,
    valid_request_id,
)
from steelyard.core.http1.parser import RequestHead, RequestParser, ResponseHead


def parse_request(data: bytes) -> RequestHead:
    sink = Collect()
    RequestParser(sink).feed(data)
    head = sink.events[0][1]
    assert isinstance(head, RequestHead)
    return head


def h11_server_reads(data: bytes) -> tuple[h11.Request, bytes, list[tuple[bytes, bytes]]]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    req = conn.next_event()
    assert isinstance(req, h11.Request)
    body = b""
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            return req, body, list(ev.headers)
        else:
            raise AssertionError(ev)


def test_request_head_as_h11_reads_it() -> None:
    head = parse_request(
        b"POST /p?q HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n"
        b"X-Forwarded-For: 9.9.9.9\r\nConnection: x-gone\r\nX-Gone: 1\r\nX-Stay: 2\r\n\r\n"
    )
    data = build_request_head(
        head,
        head.headers,
        target=head.target,
        client_ip=b"10.0.0.1",
        proto=b"http",
        request_id=b"rid",
    )
    data += chunk(b"abc") + last_chunk([(b"x-t", b"1")])
    req, body, trailers = h11_server_reads(data)
    headers = dict(req.headers)
    assert req.target == b"/p?q" and req.http_version == b"1.1"
    assert headers[b"x-forwarded-for"] == b"9.9.9.9, 10.0.0.1"
    assert headers[b"x-forwarded-proto"] == b"http"
    assert headers[b"x-forwarded-host"] == b"h.example"
    assert headers[b"x-request-id"] == b"rid"
    assert b"x-gone" not in headers and b"connection" not in headers
    assert headers[b"x-stay"] == b"2"
    assert body == b"abc" and trailers == [(b"x-t", b"1")]


def _resp(
    status: int,
    cl: int | None = None,
    chunked: bool = False,
    until_close: bool = False,
    no_body: bool = False,
) -> ResponseHead:
    r = ResponseHead()
    r.status = status
    r.reason = b""
    r.content_length = cl
    r.chunked = chunked
    r.until_close = until_close
    r.no_body = no_body
    r.headers = [(b"X-A", b"1")]
    return r


@pytest.mark.parametrize(
    ("resp", "http10", "mode"),
    [
        (_resp(200, cl=3), False, BODY_LENGTH),
        (_resp(200, chunked=True), False, BODY_CHUNKED),
        (_resp(200, until_close=True), False, BODY_CHUNKED),
        (_resp(200, chunked=True), True, BODY_CLOSE),
        (_resp(204, no_body=True), False, BODY_NONE),
    ],
)
def test_response_framing(resp: ResponseHead, http10: bool, mode: int) -> None:
    assert response_mode(resp, http10) == mode
    data = build_response_head(
        resp, resp.headers, mode=mode, keep_alive=True, http10_client=http10, request_id=b"r"
    )
    if mode == BODY_CHUNKED:
        data += chunk(b"abc") + last_chunk(None)
    elif mode == BODY_LENGTH:
        data += b"abc"
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "h")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    if mode == BODY_CLOSE:
        conn.receive_data(b"")
    ev = conn.next_event()
    assert isinstance(ev, h11.Response) and ev.status_code == resp.status
    assert dict(ev.headers)[b"x-request-id"] == b"r"
    body = b""
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Data):
            body += ev.data
        else:
            assert isinstance(ev, h11.EndOfMessage)
            break
    assert body == (b"" if mode in (BODY_NONE, BODY_CLOSE) else b"abc")


def test_local_response_names_request_id() -> None:
    data = local_response(
        503, b"abc123", close=True, message="no server", headers=[(b"Retry-After", b"1")]
    )
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "h")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    ev = conn.next_event()
    assert isinstance(ev, h11.Response) and ev.status_code == 503
    headers = dict(ev.headers)
    assert headers[b"retry-after"] == b"1" and headers[b"connection"] == b"close"
    assert headers[b"content-type"].startswith(b"text/plain")
    body = conn.next_event()
    assert isinstance(body, h11.Data) and b"abc123" in body.data and b"no server" in body.data


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (b"a", True),
        (b"A-z_0.9", True),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"", False),
        (b"a b", False),
        (b"a/b", False),
        (b"\xc3\xa9", False),
    ],
)
def test_valid_request_id(value: bytes, ok: bool) -> None:
    assert valid_request_id(value) is ok


def test_request_ids_unique_and_valid() -> None:
    gen = RequestIdGenerator(random.Random(1))
    ids = {gen() for _ in range(1000)}
    assert len(ids) == 1000 and all(valid_request_id(i) for i in ids)
    assert "issued=1000" in repr(gen)


def test_request_ids_are_prefix_and_hex_counter() -> None:
    """The table-and-block formatting equals the plain `%012x%08x`, across block boundaries and
    past 2**32 (where the counter grows a digit)."""
    gen = RequestIdGenerator(random.Random(7))
    prefix = b"%012x" % random.Random(7).getrandbits(48)
    for n in range(1, 1030):
        assert gen.next() == prefix + b"%08x" % n
    for start in (2**32 - 300, 2**40 + 5):
        gen._n = start
        for n in range(start + 1, start + 600):
            assert gen() == prefix + b"%08x" % n


def test_template() -> None:
    ctx = RequestContext(b"1.2.3.4", b"rid", b"h.example", b"/p", b"q=1", b"s1")
    t = Template("https://{host}{path}?{query} by {server} for {client_ip} ({request_id}) {other}")
    assert t.render(ctx) == b"https://h.example/p?q=1 by s1 for 1.2.3.4 (rid) {other}"
    assert Template("plain").constant == b"plain"
    assert Template("{host}").constant is None


def test_header_actions() -> None:
    actions = HeaderActions(
        set_={"X-Set": "v-{request_id}"}, add={"X-Add": "a"}, remove=["x-remove", "X-SET"]
    )
    headers = [(b"X-Remove", b"1"), (b"x-set", b"old"), (b"X-Keep", b"k"), (b"X-Add", b"0")]
    out = actions.apply(headers, RequestContext(request_id=b"r"))
    assert out == [(b"X-Keep", b"k"), (b"X-Add", b"0"), (b"X-Set", b"v-r"), (b"X-Add", b"a")]
    assert HeaderActions().empty


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Connection", "bad name"])
def test_header_actions_refuse_framing_fields(name: str) -> None:
    with pytest.raises(ValueError):
        HeaderActions(set_={name: "x"})
