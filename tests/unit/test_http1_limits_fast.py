"""Limits after the parser's fast path (fields collected, then classified at headers-complete;
the head size summed only when the bytes read could exceed it): nothing slips through when
several messages share one read, and field order is kept."""

from __future__ import annotations

import pytest
from tests.unit.test_http1_parser import Collect

from steelyard.core.http1.parser import (
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
)
from steelyard.errors import ProtocolError

BIG = b"v" * (64 * 1024)


def test_second_pipelined_request_with_a_huge_head_in_the_same_read() -> None:
    sink = Collect()
    parser = RequestParser(sink)
    data = (
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: a\r\nX-Big: " + BIG + b"\r\n\r\n"
    )
    with pytest.raises(ProtocolError) as info:
        parser.feed(data)
    assert info.value.status == 431
    heads = [e for k, e in sink.events if k == "head"]
    assert len(heads) == 1 and isinstance(heads[0], RequestHead) and heads[0].target == b"/a"


def test_huge_head_after_a_body_in_the_same_read() -> None:
    sink = Collect()
    parser = RequestParser(sink)
    parser.feed(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.feed(b"abcGET /b HTTP/1.1\r\nHost: a\r\nX-Big: " + BIG + b"\r\n\r\n")
    assert info.value.status == 431


def test_head_just_under_the_limit_passes_and_just_over_fails() -> None:
    base = b"GET / HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n"
    # size counted: url (1) + per field 4 + name + value: Host (4 + 4 + 1), X (4 + 1 + room)
    room = 64 * 1024 - (1 + 9 + 5)
    ok = base.replace(b"X: ", b"X: " + b"v" * room)
    sink = Collect()
    RequestParser(sink).feed(ok)
    assert [k for k, _ in sink.events][0] == "head"
    with pytest.raises(ProtocolError) as info:
        RequestParser(Collect()).feed(base.replace(b"X: ", b"X: " + b"v" * (room + 1)))
    assert info.value.status == 431


def test_too_many_fields_in_an_unfinished_head_refused_at_once() -> None:
    parser = RequestParser(Collect())
    fields = b"".join(b"X%d: v\r\n" % i for i in range(150))
    with pytest.raises(ProtocolError) as info:
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + fields)  # no blank line yet
    assert info.value.status == 431


def test_host_with_trailing_blanks_is_forwarded_stripped_in_place() -> None:
    sink = Collect()
    RequestParser(sink).feed(b"GET / HTTP/1.1\r\nA: 1\r\nHost: a \t\r\nB: 2\r\n\r\n")
    head = sink.events[0][1]
    assert isinstance(head, RequestHead)
    assert head.headers == [(b"A", b"1"), (b"Host", b"a"), (b"B", b"2")]
    assert head.host == b"a"


def test_client_request_id_known_for_an_error_before_the_head_ends() -> None:
    parser = RequestParser(Collect())
    # a field is complete (and reported) when the next one starts
    parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc-1\r\nX-Next: 1")
    assert parser.partial_head.request_id == b"abc-1"


def test_second_response_with_a_huge_head_in_the_same_read() -> None:
    sink = Collect()
    parser = ResponseParser(sink)
    parser.expect(False)
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\nX-Big: " + BIG + b"\r\nContent-Length: 0\r\n\r\n"
    )
    with pytest.raises(ProtocolError) as info:
        parser.feed(data)
    assert info.value.status == 502 and info.value.source == "upstream"
    heads = [e for k, e in sink.events if k == "head"]
    assert len(heads) == 1 and isinstance(heads[0], ResponseHead)


def test_response_connection_keep_alive_simple_and_named_fields() -> None:
    sink = Collect()
    parser = ResponseParser(sink)
    parser.expect(False)
    parser.feed(b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive \r\nContent-Length: 0\r\n\r\n")
    head = sink.events[0][1]
    assert isinstance(head, ResponseHead) and head.keep_alive and head.headers == []
    sink = Collect()
    parser = ResponseParser(sink)
    parser.expect(False)
    parser.feed(
        b"HTTP/1.1 200 OK\r\nConnection: close, X-Priv\r\nX-Priv: 1\r\nX-Pub: 2\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    head = sink.events[0][1]
    assert isinstance(head, ResponseHead)
    assert not head.keep_alive and head.headers == [(b"X-Pub", b"2")]


def test_trailer_limits_and_forbidden_fields() -> None:
    sink = Collect()
    parser = RequestParser(sink)
    parser.feed(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\nx\r\n0\r\nX-Sum: 9\r\nSet-Cookie: a=1\r\n\r\n"
    )
    assert sink.events[-1] == ("end", [(b"X-Sum", b"9")])
    parser = RequestParser(Collect())
    trailer = b"".join(b"T%d: v\r\n" % i for i in range(101))
    with pytest.raises(ProtocolError) as info:
        parser.feed(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
            + trailer
            + b"\r\n"
        )
    assert info.value.status == 431


def test_close_breaks_the_parser_cycle() -> None:
    """httptools holds our bound callbacks and we hold it: close() lets refcounting free a
    connection's parser (no work for the cyclic GC per connection)."""
    import gc

    class Conn(Collect):
        def __init__(self) -> None:
            super().__init__()
            self.parser = RequestParser(self)

    gc.collect()
    gc.disable()
    try:
        for close in (False, True):
            for _ in range(50):
                conn = Conn()
                conn.parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                if close:
                    conn.parser.close()
                del conn
            found = gc.collect()
            assert (found == 0) == close, (close, found)
    finally:
        gc.enable()
    response = ResponseParser(Collect())
    response.close()
    assert not response.reusable
    with pytest.raises(RuntimeError):
        response.feed(b"HTTP/1.1 200 OK\r\n\r\n")
