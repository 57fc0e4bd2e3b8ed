"""The strict HTTP/1.1 parsers: fed whole, one byte at a time and at random split points."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steelyard.core.http1.parser import (
    Headers,
    Limits,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
)
from steelyard.errors import ProtocolError


class Collect:
    """A sink that records events as tuples."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_request_head(self, head: RequestHead) -> None:
        self.events.append(("head", head))

    def on_request_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_request_end(self, trailers: Headers | None) -> None:
        self.events.append(("end", trailers))

    def on_interim(self, head: ResponseHead) -> None:
        self.events.append(("interim", head))

    def on_response_head(self, head: ResponseHead) -> None:
        self.events.append(("head", head))

    def on_response_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_response_end(self, trailers: Headers | None) -> None:
        self.events.append(("end", trailers))

    def merged(self) -> list[tuple[str, object]]:
        """Body pieces joined, so different splits compare equal."""
        out: list[tuple[str, object]] = []
        for kind, value in self.events:
            if kind == "body" and out and out[-1][0] == "body":
                out[-1] = ("body", out[-1][1] + value)  # type: ignore[operator]
            else:
                out.append((kind, value))
        return out


def feed_request(chunks: list[bytes], limits: Limits | None = None) -> Collect:
    sink = Collect()
    parser = RequestParser(sink, limits or Limits())
    for c in chunks:
        parser.feed(c)
    return sink


def summary(events: list[tuple[str, object]]) -> list[object]:
    out: list[object] = []
    for kind, value in events:
        if kind == "head" and isinstance(value, RequestHead):
            out.append(
                (
                    "head",
                    value.method,
                    value.target,
                    value.path,
                    value.query,
                    value.version,
                    tuple(value.headers),
                    value.host,
                    value.content_length,
                    value.chunked,
                    value.keep_alive,
                    value.upgrade,
                    value.expect_continue,
                    value.request_id,
                    value.forwarded_for,
                )
            )
        elif kind in ("head", "interim") and isinstance(value, ResponseHead):
            out.append((kind, value.status, value.reason, tuple(value.headers), value.chunked))
        else:
            out.append((kind, value))
    return out


PIPELINE = (
    b"GET /a?x=1 HTTP/1.1\r\nHost: example.com\r\nX-Request-Id: r1\r\n"
    b"X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nConnection: keep-alive, X-Drop\r\n"
    b"X-Drop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Kept: k\r\n\r\n"
    b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 11\r\n\r\nhello world"
    b"PUT /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n"
    b"Expect: 100-continue\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 9\r\nSet-Cookie: a=1\r\n\r\n"
    b"GET /last HTTP/1.0\r\n\r\n"
)


def test_pipeline_whole() -> None:
    events = feed_request([PIPELINE]).merged()
    kinds = [k for k, _ in events]
    assert kinds == ["head", "end", "head", "body", "end", "head", "body", "end", "head", "end"]
    first = events[0][1]
    assert isinstance(first, RequestHead)
    assert first.path == b"/a" and first.query == b"x=1"
    assert first.request_id == b"r1"
    assert first.forwarded_for == b"1.1.1.1, 2.2.2.2"
    assert first.headers == [(b"Host", b"example.com"), (b"X-Kept", b"k")]
    assert first.keep_alive
    post = events[2][1]
    assert isinstance(post, RequestHead) and post.content_length == 11
    assert events[3] == ("body", b"hello world")
    put = events[5][1]
    assert isinstance(put, RequestHead) and put.chunked and put.expect_continue
    assert events[6] == ("body", b"hello world")
    assert events[7] == ("end", [(b"X-Sum", b"9")])  # Set-Cookie may not be a trailer
    last = events[8][1]
    assert isinstance(last, RequestHead)
    assert last.version == "1.0" and not last.keep_alive and last.host is None


def test_pipeline_one_byte_at_a_time() -> None:
    whole = summary(feed_request([PIPELINE]).merged())
    bytewise = summary(feed_request([PIPELINE[i : i + 1] for i in range(len(PIPELINE))]).merged())
    assert bytewise == whole


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(PIPELINE)), max_size=12))
def test_pipeline_random_splits(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [PIPELINE[a:b] for a, b in zip([0, *points], [*points, len(PIPELINE)], strict=True)]
    assert summary(feed_request(chunks).merged()) == summary(feed_request([PIPELINE]).merged())


BAD = {
    "cl+te": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    "two cl": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        400,
    ),
    "same cl twice": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        400,
    ),
    "bad chunk": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n", 400),
    "space colon": (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    "bare lf": (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", 400),
    "te gzip": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    "te gzip, chunked": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        400,
    ),
    "te http/1.0": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    "no host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    "http/2.0": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
    "http/0.9": (b"GET /\r\n\r\n", 400),
    "connect": (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n", 400),
    "relative target": (b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "star not options": (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "uri too long": (b"GET /" + b"a" * 8192 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    "head too large": (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 65536 + b"\r\n\r\n", 431),
    "too many headers": (
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        + b"".join(b"X%d: v\r\n" % i for i in range(100))
        + b"\r\n",
        431,
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("bytewise", [False, True])
def test_refused(name: str, bytewise: bool) -> None:
    data, status = BAD[name]
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    sink = Collect()
    with pytest.raises(ProtocolError) as info:
        parser = RequestParser(sink)
        for c in chunks:
            parser.feed(c)
    assert info.value.status == status
    if name != "bad chunk":  # a broken body follows a good head
        assert not any(k == "head" for k, _ in sink.events)  # never handed on


def test_head_limit_holds_without_buffering_everything() -> None:
    parser = RequestParser(Collect())
    parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
    with pytest.raises(ProtocolError) as info:
        for _ in range(100):
            parser.feed(b"v" * 4096)  # a header value that never ends
    assert info.value.status == 431


def test_body_limit() -> None:
    limits = Limits(max_body=10)
    with pytest.raises(ProtocolError) as info:
        feed_request([b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n"], limits)
    assert info.value.status == 413
    sink = Collect()
    parser = RequestParser(sink, limits)
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.feed(b"6\r\nabcdef\r\n0\r\n\r\n")
    assert info.value.status == 413
    ok = feed_request(
        [b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789"], limits
    )
    assert ok.merged()[1] == ("body", b"0123456789")


def test_connection_close_and_upgrade() -> None:
    sink = Collect()
    parser = RequestParser(sink)
    rest = parser.feed(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nFRAME"
    )
    head = sink.events[0][1]
    assert isinstance(head, RequestHead)
    assert head.upgrade == b"websocket"
    assert rest == b"FRAME"
    sink = Collect()
    RequestParser(sink).feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: close\r\n\r\n"
    )
    head = sink.events[0][1]
    assert isinstance(head, RequestHead)
    assert head.upgrade is None and not head.keep_alive


def test_absolute_form_target() -> None:
    sink = feed_request([b"GET http://Example.com:81/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n"])
    head = sink.events[0][1]
    assert isinstance(head, RequestHead)
    assert head.target == b"/p?q=1" and head.host == b"Example.com:81"
    assert head.headers == [(b"Host", b"Example.com:81")]


# -- responses --------------------------------------------------------------------------------


def feed_response(
    chunks: list[bytes], head_request: bool = False
) -> tuple[Collect, ResponseParser]:
    sink = Collect()
    parser = ResponseParser(sink)
    parser.expect(head_request)
    for c in chunks:
        parser.feed(c)
    return sink, parser


RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: x-hop\r\nX-Hop: 1\r\nX-Ok: 1\r\n\r\nhello",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
]


@pytest.mark.parametrize("data", RESPONSES)
def test_responses_split_anywhere(data: bytes) -> None:
    whole, p1 = feed_response([data])
    bytewise, p2 = feed_response([data[i : i + 1] for i in range(len(data))])
    assert summary(whole.merged()) == summary(bytewise.merged())
    assert whole.events[-1][0] == "end"
    assert p1.complete and p1.reusable and p2.complete and p2.reusable


def test_response_hop_by_hop_and_trailers() -> None:
    sink, _ = feed_response([RESPONSES[0]])
    head = sink.events[0][1]
    assert isinstance(head, ResponseHead)
    assert head.headers == [(b"X-Ok", b"1")] and head.content_length == 5
    sink, _ = feed_response([RESPONSES[2]])
    assert sink.events[-1] == ("end", [(b"X-T", b"1")])
    assert sink.merged()[1] == ("body", b"abc")


def test_interim_then_final() -> None:
    sink, _ = feed_response([RESPONSES[1]])
    assert [k for k, _ in sink.events] == ["interim", "head", "end"]


def test_response_to_head_has_no_body() -> None:
    sink, parser = feed_response([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"], True)
    assert [k for k, _ in sink.events] == ["head", "end"]
    assert parser.complete and parser.reusable
    # the connection carries on: a fresh response parses
    parser.expect(False)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert sink.events[-2:] == [("body", b"ok"), ("end", None)]


def test_response_until_close() -> None:
    sink, parser = feed_response([b"HTTP/1.1 200 OK\r\n\r\nabc", b"def"])
    head = sink.events[0][1]
    assert isinstance(head, ResponseHead) and head.until_close and not head.keep_alive
    assert parser.feed_eof() is True
    assert sink.merged()[1:] == [("body", b"abcdef"), ("end", None)]
    assert not parser.reusable


def test_response_cut_short() -> None:
    _, parser = feed_response([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"])
    assert parser.feed_eof() is False
    assert not parser.complete


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n",
    ],
)
def test_invalid_responses_are_502(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        feed_response([data])
    assert info.value.status == 502 and info.value.source == "upstream"


def test_101_returns_tunnel_bytes() -> None:
    sink = Collect()
    parser = ResponseParser(sink)
    parser.expect(False)
    rest = parser.feed(b"HTTP/1.1 101 Switching\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\nDATA")
    assert rest == b"DATA"
    assert [k for k, _ in sink.events] == ["head", "end"]


@settings(max_examples=100, deadline=None)
@given(
    body=st.binary(max_size=2000),
    pieces=st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=10),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=8),
)
def test_h11_encoded_messages_parse_the_same(
    body: bytes, pieces: list[int], cuts: list[int]
) -> None:
    """h11 as the oracle: what h11 encodes, our parser reads back exactly, however it is split."""
    conn = h11.Connection(h11.CLIENT)
    data = conn.send(
        h11.Request(
            method="POST",
            target="/x",
            headers=[("host", "h"), ("transfer-encoding", "chunked"), ("x-a", "1")],
        )
    )
    i = 0
    for n in pieces:
        part = body[i : i + n]
        i += n
        if part:
            data += conn.send(h11.Data(data=part))
    if body[i:]:
        data += conn.send(h11.Data(data=body[i:]))
    data += conn.send(h11.EndOfMessage(headers=[("x-trailer", "t")]))
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    events = feed_request(chunks).merged()
    got_body = b"".join(v for k, v in events if k == "body")  # type: ignore[misc]
    assert got_body == body
    assert events[-1] == ("end", [(b"x-trailer", b"t")])


RESPONSE_STREAM = b"".join(RESPONSES[:3])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(RESPONSE_STREAM)), max_size=12))
def test_responses_random_splits(cuts: list[int]) -> None:
    """Three responses on one connection, split anywhere: the same events as fed whole."""

    def run(chunks: list[bytes]) -> list[object]:
        sink = Collect()
        parser = ResponseParser(sink)
        parser.expect(False)
        for c in chunks:
            parser.feed(c)
        return summary(sink.merged())

    points = sorted(set(cuts))
    chunks = [
        RESPONSE_STREAM[a:b]
        for a, b in zip([0, *points], [*points, len(RESPONSE_STREAM)], strict=True)
    ]
    whole = run([RESPONSE_STREAM])
    assert [k for k, *_ in whole] == [
        "head",
        "body",
        "end",
        "interim",
        "head",
        "end",
        "head",
        "body",
        "end",
    ]  # type: ignore[misc]
    assert run(chunks) == whole


@pytest.mark.parametrize("round_", [1, 2])  # the second sees the field names cached
def test_field_names_any_case_twice(round_: int) -> None:
    sink = feed_request(
        [
            b"POST /u HTTP/1.1\r\nhOsT: a\r\nCONTENT-LENGTH: 2\r\nConnection: Keep-Alive\r\n"
            b"X-Forwarded-For: 1.2.3.4\r\nkEeP-aLiVe: 5\r\nX-Other: y\r\n\r\nok"
            b"GET / HTTP/1.1\r\nHOST: b\r\nCONNECTION: CLOSE\r\n\r\n"
        ]
    )
    first, second = sink.events[0][1], sink.events[3][1]
    assert isinstance(first, RequestHead) and isinstance(second, RequestHead)
    assert first.host == b"a" and first.content_length == 2 and first.keep_alive
    assert first.forwarded_for == b"1.2.3.4"
    assert first.headers == [(b"hOsT", b"a"), (b"X-Other", b"y")]
    assert second.host == b"b" and not second.keep_alive
    resp, parser = feed_response(
        [b"HTTP/1.1 200 OK\r\nCONTENT-length: 1\r\nCONNECTION: Close\r\nX-A: 1\r\n\r\nz"]
    )
    head = resp.events[0][1]
    assert isinstance(head, ResponseHead)
    assert head.content_length == 1 and not head.keep_alive and not parser.reusable
    assert head.headers == [(b"X-A", b"1")]


# the version without get_http_version() (parser._version): every version llhttp accepts, with
# and without the fields that set llhttp's keep-alive flags
VERSION_FIELDS = [b"", b"Connection: keep-alive\r\n", b"Proxy-Connection: keep-alive\r\n"]


@pytest.mark.parametrize("extra", VERSION_FIELDS)
@pytest.mark.parametrize("version", [b"0.9", b"1.0", b"1.1", b"2.0", b"1.2", b"3.0"])
def test_request_versions(version: bytes, extra: bytes) -> None:
    data = b"GET / HTTP/" + version + b"\r\nHost: a\r\n" + extra + b"\r\n"
    if version not in (b"1.0", b"1.1"):
        with pytest.raises(ProtocolError) as err:
            feed_request([data])
        assert err.value.status == 400
        return
    head = feed_request([data]).events[0][1]
    assert isinstance(head, RequestHead)
    assert head.version == version.decode()
    assert head.keep_alive == (version == b"1.1" or extra.startswith(b"Connection"))
    assert head.headers == [(b"Host", b"a")]  # Connection and Proxy-Connection are hop-by-hop


@pytest.mark.parametrize("extra", VERSION_FIELDS)
@pytest.mark.parametrize("framing", [b"Content-Length: 0\r\n", b""])
@pytest.mark.parametrize("version", [b"0.9", b"1.0", b"1.1", b"2.0", b"1.2"])
def test_response_versions(version: bytes, framing: bytes, extra: bytes) -> None:
    data = b"HTTP/" + version + b" 200 OK\r\n" + framing + extra + b"\r\n"
    if version not in (b"1.0", b"1.1"):
        with pytest.raises(ProtocolError) as err:
            feed_response([data])
        assert err.value.status == 502
        return
    sink, _ = feed_response([data])
    head = sink.events[0][1]
    assert isinstance(head, ResponseHead)
    assert head.version == version.decode()
    framed = bool(framing)
    assert head.keep_alive == (framed and (version == b"1.1" or extra.startswith(b"Connection")))


# The version is read from the bytes of the read a message began in (parser._request_version,
# _response_version) and asked of llhttp otherwise: whatever the methods, targets, Connection
# fields, pipelining, blank lines before a request and split points, every head's version is
# the one on the wire.
METHODS = [b"GET", b"POST", b"OPTIONS", b"DELETE", b"PROPFIND", b"M-SEARCH"]
CONNECTION_FIELDS = [
    b"",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"Connection: x-a, close\r\nX-A: 1\r\n",
    b"Proxy-Connection: close\r\n",
]
TARGET_CHARS = st.sampled_from(list(b"abcXYZ019/-._~%?=&:@!$'()*+,;"))


@st.composite
def request_stream(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    wire = b""
    versions: list[str] = []
    count = draw(st.integers(1, 3))
    for i in range(count):
        version = draw(st.sampled_from(["1.0", "1.1"]))
        method = draw(st.sampled_from(METHODS))
        target = b"/" + bytes(draw(st.lists(TARGET_CHARS, max_size=30)))
        if method == b"OPTIONS" and draw(st.booleans()):
            target = b"*"
        blank = b"\r\n" * draw(st.integers(0, 2)) if wire else b""
        conn = draw(st.sampled_from(CONNECTION_FIELDS))
        if i < count - 1:  # llhttp refuses bytes after a message that closes the connection
            conn = (
                b"Connection: keep-alive\r\n" if version == "1.0" else conn.replace(b"close", b"x")
            )
        wire += blank + method + b" " + target + b" HTTP/" + version.encode() + b"\r\n"
        wire += b"Host: a\r\n" + conn + b"\r\n"
        versions.append(version)
    return wire, versions


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        if p > last:
            pieces.append(data[last:p])
            last = p
    return pieces


@settings(max_examples=300, deadline=None)
@given(request_stream(), st.lists(st.integers(0, 10_000), max_size=6))
def test_request_version_from_the_read_matches_the_wire(
    stream: tuple[bytes, list[str]], cuts: list[int]
) -> None:
    wire, versions = stream
    sink = feed_request(split(wire, cuts))
    heads = [v for k, v in sink.events if k == "head"]
    assert [h.version for h in heads] == versions  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["1.0", "1.1"]),
            st.sampled_from(CONNECTION_FIELDS[:3]),
            st.sampled_from([b"OK", b"", b"HTTP/1.0 is not the version"]),
        ),
        min_size=1,
        max_size=3,
    ),
    st.lists(st.integers(0, 10_000), max_size=6),
    st.booleans(),
)
def test_response_version_from_the_read_matches_the_wire(
    responses: list[tuple[str, bytes, bytes]], cuts: list[int], interim: bool
) -> None:
    sink = Collect()
    parser = ResponseParser(sink)
    for version, conn, reason in responses:
        parser.expect(False)
        wire = b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b""
        wire += b"HTTP/" + version.encode() + b" 200 " + reason + b"\r\n"
        wire += b"Content-Length: 2\r\n" + conn + b"\r\nhi"
        for piece in split(wire, cuts):
            parser.feed(piece)
        if not parser.reusable:
            parser = ResponseParser(sink)
    heads = [v for k, v in sink.events if k == "head"]
    assert [h.version for h in heads] == [v for v, _, _ in responses]  # type: ignore[attr-defined]


@given(
    st.text(alphabet="0123456789", min_size=1, max_size=30),
    st.text(alphabet=" \t", max_size=3),
)
def test_length_value_is_int(digits: str, ows: str) -> None:
    """The digit loop for Content-Length gives int()'s answer, short or long, with trailing
    whitespace or without."""
    from steelyard.core.http1.parser import _length_value

    raw = (digits + ows).encode()
    assert _length_value(raw) == int(raw)


@given(st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))
def test_rstrip_ows_is_rstrip(value: bytes) -> None:
    from steelyard.core.http1.parser import _rstrip_ows

    for tail in (b"", b" ", b"\t", b" \t ", b"x"):
        assert _rstrip_ows(value + tail) == (value + tail).rstrip(b" \t")


@pytest.mark.parametrize("reason", [b"OK", b"Fine", b""])
def test_status_line_per_reason(reason: bytes) -> None:
    """The status line cache keyed by status still sends each response's own reason."""
    from steelyard.core.http1.headers import BODY_LENGTH, build_response_head
    from steelyard.core.http1.parser import ResponseHead

    for r in (reason, b"Other", reason):
        resp = ResponseHead()
        resp.status = 200
        resp.reason = r
        resp.content_length = 0
        head = build_response_head(resp, [], BODY_LENGTH, True, False, b"id")
        assert head.startswith(b"HTTP/1.1 200 " + (r or b"OK") + b"\r\n")


# -- field names: the usual spellings are compared before any dictionary lookup ---------------


def test_the_spelling_tables_agree_with_the_field_kinds() -> None:
    from steelyard.core.http1 import parser

    for table, kinds in (
        (parser._REQUEST_SPELLINGS, parser._REQUEST_FIELDS),
        (parser._RESPONSE_SPELLINGS, parser._RESPONSE_FIELDS),
    ):
        assert sum(map(len, table)) > len(kinds)
        for n, row in enumerate(table):
            for spelling, kind in row:
                assert len(spelling) == n
                assert kind == kinds.get(spelling.lower(), 0), spelling
        for name in kinds:  # every handled field has its lower and Title-Case spellings
            assert (name, kinds[name]) in table[len(name)]
            assert any(s != name and s.lower() == name for s, _ in table[len(name)])


def _request_with(names: dict[str, bytes]) -> RequestHead:
    head = (
        b"POST /x HTTP/1.1\r\n"
        + b"".join(names[k].encode() + b": " + v + b"\r\n" for k, v in _FIELDS.items())
        + b"\r\nabc"
    )
    events = feed_request([head]).events
    assert events[0][0] == "head", events
    return events[0][1]  # type: ignore[return-value]


_FIELDS = {
    "host": b"example.test",
    "content-length": b"3",
    "connection": b"close",
    "x-request-id": b"rid-1",
    "x-forwarded-for": b"192.0.2.7",
    "content-type": b"text/plain",
    "user-agent": b"probe",
}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=17, max_size=17))
def test_a_field_is_classified_the_same_in_every_spelling(upper: list[bool]) -> None:
    def spell(name: str) -> str:
        return "".join(c.upper() if u else c for c, u in zip(name, upper * 2, strict=False))

    plain = _request_with({k: k for k in _FIELDS})
    for spelled in (
        {k: spell(k) for k in _FIELDS},
        {k: "-".join(p.capitalize() for p in k.split("-")) for k in _FIELDS},
        {k: k.upper() for k in _FIELDS},
    ):
        head = _request_with(spelled)
        assert head.host == plain.host == b"example.test"
        assert head.content_length == plain.content_length == 3
        assert head.keep_alive is plain.keep_alive is False
        assert head.request_id == plain.request_id == b"rid-1"
        assert head.forwarded_for == plain.forwarded_for == b"192.0.2.7"
        forwarded = sorted(n.lower() for n, _ in head.headers)
        assert forwarded == sorted(n.lower() for n, _ in plain.headers)
        assert b"content-type" in forwarded and b"connection" not in forwarded
