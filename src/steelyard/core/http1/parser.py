"""HTTP/1.1 message parsing: httptools (llhttp, strict mode) plus the checks it leaves to us.

How this works. llhttp, with every leniency off, already refuses most request-smuggling vectors
(RFC 9112 §6.3, §11.2): both Content-Length and Transfer-Encoding, duplicate Content-Length,
bare LF or CR, whitespace before a colon, obs-fold, invalid chunk sizes. On top of it we enforce:

- limits as bytes arrive: the head (64 KiB), the header count (100), the URI (8 KiB) and the
  body size (the listener's `max_body_size`); a head is never buffered past its limit plus
  one read;
- Transfer-Encoding must be exactly `chunked` (llhttp accepts `gzip, chunked`; we cannot frame
  a coding we do not decode, RFC 9112 §6.1) and is refused on HTTP/1.0;
- HTTP/1.0 or HTTP/1.1 only; exactly one Host on HTTP/1.1 (RFC 9112 §3.2); no CONNECT;
- hop-by-hop fields (RFC 9110 §7.6.1) are taken out of the header list, so the proxy forwards
  `head.headers` as it is.

Speed: llhttp calls `on_header` once per field, a C-to-Python call each; that callback only
appends the (name, value) pair. Everything else (classifying fields, the count and size limits)
happens in one loop at `on_headers_complete`; fields arriving after it are trailers, handled at
`on_message_complete`. `feed()` still refuses a head that outgrows its limits across reads, so a
head is never buffered much past its limit plus one read.

The parsers call a sink (the proxy) with whole heads, body pieces and the end of the message, so
the I/O layer is a thin shell and these classes are tested with plain calls. A ProtocolError
raised here means: answer with its status (if nothing was sent yet) and close the connection.

Responses: llhttp frames 1xx, 204 and 304 itself; a response to HEAD has no body whatever its
headers say, which httptools cannot be told, so the parser stops at the end of that head and a
fresh httptools parser takes over (`reusable` says whether the read ended exactly there).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httptools

from steelyard.errors import ProtocolError

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Limits:
    max_head: int = 64 * 1024
    max_headers: int = 100
    max_uri: int = 8 * 1024
    max_body: int = 0  # 0 = unlimited


DEFAULT_LIMITS: Final = Limits()
# responses from our own servers: same head limits, no body limit
UPSTREAM_LIMITS: Final = Limits(max_head=64 * 1024, max_headers=200, max_uri=0, max_body=0)

# kinds of request header fields we handle ourselves; everything else is forwarded as it came
_HOST: Final = 1
_CL: Final = 2
_TE: Final = 3
_CONNECTION: Final = 4
_HOP: Final = 5  # dropped
_XFF: Final = 6
_XF_DROP: Final = 7  # X-Forwarded-Proto / -Host: we set our own
_XRID: Final = 8
_EXPECT: Final = 9
_UPGRADE: Final = 10
# dropped, like _HOP; noted because llhttp reads it as Connection (see _version)
_PROXY_CONN: Final = 11

_REQUEST_FIELDS: Final[dict[bytes, int]] = {
    b"host": _HOST,
    b"content-length": _CL,
    b"transfer-encoding": _TE,
    b"connection": _CONNECTION,
    b"keep-alive": _HOP,
    b"proxy-connection": _PROXY_CONN,
    b"te": _HOP,
    b"trailer": _HOP,
    b"upgrade": _UPGRADE,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XF_DROP,
    b"x-forwarded-host": _XF_DROP,
    b"x-request-id": _XRID,
    b"expect": _EXPECT,
}

_RESPONSE_FIELDS: Final[dict[bytes, int]] = {
    b"content-length": _CL,
    b"transfer-encoding": _TE,
    b"connection": _CONNECTION,
    b"keep-alive": _HOP,
    b"proxy-connection": _PROXY_CONN,
    b"te": _HOP,
    b"trailer": _HOP,
    b"upgrade": _UPGRADE,
    b"x-request-id": _HOP,  # we echo our own
}


def _length_mask(kinds: dict[bytes, int]) -> int:
    """Bit n set when some name in `kinds` has n bytes: a field of another length is
    forwarded without hashing its name (Date, Server, ETag, Cache-Control, Cookie...)."""
    mask = 0
    for name in kinds:
        mask |= 1 << len(name)
    return mask


_GET: Final = b"GET"
_REQUEST_LENGTHS: Final = _length_mask(_REQUEST_FIELDS)
_RESPONSE_LENGTHS: Final = _length_mask(_RESPONSE_FIELDS)

# The same classifications keyed by the name as it came, so the usual spellings skip a
# `.lower()` per field; other spellings are learnt on first sight (bounded: a client sending
# random names only costs the lower() it cost before).
_RAW_CACHE_MAX: Final = 1024
_REQUEST_RAW: Final[dict[bytes, int]] = {}
_RESPONSE_RAW: Final[dict[bytes, int]] = {}


# The usual spellings, compared byte for byte before any hashing: httptools hands each name
# over as a new bytes object, so a dictionary lookup hashes it (siphash) and then compares it,
# ~440 instructions; a comparison costs ~30. Per name length: (spelling, kind) for the fields
# we handle and for common fields that only share a length with one of them (kind 0:
# forwarded as it is). Any other spelling takes the dictionaries below.
_COMMON_FIELDS: Final = (
    b"content-type",
    b"user-agent",
    b"set-cookie",
    b"accept",
    b"cookie",
    b"origin",
    b"pragma",
    b"referer",
    b"accept-encoding",
    b"accept-language",
    b"x-frame-options",
    b"x-powered-by",
    b"content-encoding",
    b"content-language",
    b"sec-fetch-site",
    b"sec-fetch-mode",
    b"sec-fetch-dest",
    b"sec-fetch-user",
)


def _title(name: bytes) -> bytes:
    return b"-".join(part[:1].upper() + part[1:] for part in name.split(b"-"))


def _spellings(kinds: dict[bytes, int]) -> list[list[tuple[bytes, int]]]:
    """Per name length, the spellings tried in turn: Title-Case first, then lower case."""
    lengths = _length_mask(kinds)
    names = [n for n in [*kinds, *_COMMON_FIELDS] if (lengths >> len(n)) & 1]
    spelled = [_title(n) for n in names]
    spelled += [n.upper() for n in names if len(n) == 2]  # TE
    spelled += [b"X-Request-ID" for n in names if n == b"x-request-id"]
    spelled += names
    table: list[list[tuple[bytes, int]]] = [[] for _ in range(max(map(len, kinds)) + 1)]
    for spelling in spelled:
        row = table[len(spelling)]
        pair = (spelling, kinds.get(spelling.lower(), 0))
        if pair not in row:
            row.append(pair)
    return table


_REQUEST_SPELLINGS: Final = _spellings(_REQUEST_FIELDS)
_RESPONSE_SPELLINGS: Final = _spellings(_RESPONSE_FIELDS)


def _field_kind(
    name: bytes,
    spellings: list[tuple[bytes, int]],
    cache: dict[bytes, int],
    kinds: dict[bytes, int],
) -> int:
    """The kind of a field name of a handled length: its usual spellings first, then the
    spellings seen before (`cache`), then `kinds` by the lower-case name."""
    for spelling, known in spellings:
        if name == spelling:
            return known
    try:
        return cache[name]  # (a plain subscript is cheaper than .get(); misses are rare)
    except KeyError:
        return _learn(cache, kinds, name)


def _learn(cache: dict[bytes, int], kinds: dict[bytes, int], name: bytes) -> int:
    """The kind of a field name not yet in `cache` (0: forwarded as it is)."""
    kind = kinds.get(name.lower(), 0)
    if len(cache) < _RAW_CACHE_MAX:
        cache[name] = kind
    return kind


# fields that must not appear in trailers (RFC 9110 §6.5.1): framing, routing, hop-by-hop
_TRAILER_FORBIDDEN: Final = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"authorization",
        b"set-cookie",
        b"cookie",
    }
)


def connection_tokens(values: list[bytes]) -> set[bytes]:
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip(b" \t").lower()
            if token:
                tokens.add(token)
    return tokens


_SIMPLE_TOKENS: Final[dict[bytes, frozenset[bytes]]] = {
    b"keep-alive": frozenset({b"keep-alive"}),
    b"close": frozenset({b"close"}),
    b"upgrade": frozenset({b"upgrade"}),
}


# the usual spellings of the one-word Connection values, as they come
_SIMPLE_RAW: Final[dict[bytes, frozenset[bytes]]] = {
    spelling: tokens
    for word, tokens in _SIMPLE_TOKENS.items()
    for spelling in (word, word.title(), word.capitalize())
}


def _simple_connection(values: list[bytes]) -> frozenset[bytes] | None:
    """The tokens of the usual one-word Connection field (keep-alive, close, upgrade), which
    names no field to drop; None for anything else (then connection_tokens and _drop_named)."""
    if len(values) == 1:
        return _SIMPLE_TOKENS.get(_rstrip_ows(values[0]).lower())
    return None


def _rstrip_ows(value: bytes) -> bytes:
    """`value.rstrip(b" \t")`, without the call when the value does not end in whitespace
    (llhttp keeps a field value's trailing whitespace; it rarely has any)."""
    n = len(value)
    if n and (value[n - 1] == 32 or value[n - 1] == 9):
        return value.rstrip(b" \t")
    return value


def _length_value(value: bytes) -> int:
    """A Content-Length value (llhttp has checked it: digits, maybe trailing whitespace) as an
    int; a digit loop for the usual short value (compiled, about a quarter of int(bytes))."""
    n = len(value)
    if 0 < n <= 18:
        total = 0
        for i in range(n):
            digit = value[i] - 48
            if digit < 0 or digit > 9:
                return int(value)
            total = total * 10 + digit
        return total
    return int(value)


def _version(p: Any, connection_fields: bool) -> str:
    """The message's HTTP version, as httptools spells it ("1.1").

    `get_http_version()` is a `'{}.{}'.format(...)` (~2.3k instructions). llhttp accepts only
    HTTP/0.9, 1.0, 1.1 and 2.0 (anything else is a parse error), and of those only 1.1 keeps a
    connection alive by default: so when the message has no Connection or Proxy-Connection
    field (llhttp sets its keep-alive/close flags from both), `should_keep_alive()` is True
    exactly for 1.1, at headers-complete. When it is False (or those fields are present), ask.
    tests/unit/test_http1_parser.py pins this for every version llhttp accepts."""
    if not connection_fields and p.should_keep_alive():
        return "1.1"
    version: str = p.get_http_version()
    return version


def _request_version(start: bytes, at: int) -> str:
    """The version of a request that began at offset 0 of `start` (a read), from the request
    line llhttp has accepted, or "" to ask llhttp (`_version`). `at` is where the version is
    when the line is `method SP target SP version CRLF`. The ten bytes there end with CRLF only
    if they end the request line (a request line holds no CR or LF), and then they hold the
    version whatever else the line holds; anything else (the line not whole in this read, CRLFs
    that llhttp skipped before it) gives "". tests/unit/test_http1_parser.py checks it against
    llhttp."""
    tail = start[at : at + 10]
    if tail == b"HTTP/1.1\r\n":
        return "1.1"
    if tail == b"HTTP/1.0\r\n":
        return "1.0"
    return ""


def _response_version(start: bytes) -> str:
    """The version of a response that began at offset 0 of `start` (a read), or "" to ask
    llhttp: the status line begins with it."""
    if start.startswith(b"HTTP/1.1 "):
        return "1.1"
    if start.startswith(b"HTTP/1.0 "):
        return "1.0"
    return ""


def _head_size(fields: Headers) -> int:
    """Bytes of the fields as they came: name, value, ': ' and CRLF."""
    size = 4 * len(fields)
    for name, value in fields:
        size += len(name) + len(value)
    return size


def _trailers(fields: Headers, limits: Limits, status: int, source: Any) -> Headers | None:
    """The trailer fields of a chunked message, minus those not allowed there."""
    if len(fields) > limits.max_headers or _head_size(fields) > limits.max_head:
        raise ProtocolError(status, "trailer section too large", source=source)
    kept = [f for f in fields if f[0].lower() not in _TRAILER_FORBIDDEN]
    return kept or None


def _drop_named(headers: Headers, tokens: AbstractSet[bytes]) -> Headers:
    """Remove the fields the Connection header names (RFC 9110 §7.6.1)."""
    named = tokens - {b"close", b"keep-alive", b"upgrade"}
    if not named:
        return headers
    return [(n, v) for n, v in headers if n.lower() not in named]


class RequestHead:
    """A parsed request head. `headers` holds only the end-to-end fields, in order."""

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "version",
        "headers",
        "host",
        "content_length",
        "chunked",
        "keep_alive",
        "upgrade",
        "expect_continue",
        "request_id",
        "forwarded_for",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.path = b""
        self.query: bytes | None = None  # None: no '?' in the target
        self.version = "1.1"
        self.headers: Headers = []
        self.host: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade: bytes | None = None  # the Upgrade value when this asks for an upgrade
        self.expect_continue = False
        self.request_id: bytes | None = None  # as the client sent it (not yet validated)
        self.forwarded_for: bytes | None = None  # the client's X-Forwarded-For, joined

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def header(self, lname: bytes) -> bytes | None:
        """First value of a forwarded field, by lower-case name (not for the hop-by-hop ones)."""
        for name, value in self.headers:
            if name.lower() == lname:
                return value
        return None

    def __repr__(self) -> str:
        return (
            f"RequestHead({self.method!r} {self.target!r} HTTP/{self.version} "
            f"host={self.host!r} cl={self.content_length} chunked={self.chunked} "
            f"keep_alive={self.keep_alive} upgrade={self.upgrade!r} headers={len(self.headers)})"
        )


class ResponseHead:
    __slots__ = (
        "status",
        "reason",
        "version",
        "headers",
        "content_length",
        "chunked",
        "keep_alive",
        "upgrade",
        "until_close",
        "no_body",
    )

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.version = "1.1"
        self.headers: Headers = []
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade: bytes | None = None
        self.until_close = False  # body delimited by the server closing the connection
        self.no_body = False  # HEAD, 1xx, 204, 304

    def __repr__(self) -> str:
        return (
            f"ResponseHead({self.status} {self.reason!r} HTTP/{self.version} "
            f"cl={self.content_length} chunked={self.chunked} until_close={self.until_close} "
            f"no_body={self.no_body} keep_alive={self.keep_alive} headers={len(self.headers)})"
        )


# a RequestParser's head before its first message: one object fewer
_NO_REQUEST: Final = RequestHead()
# per connection (partial_head makes a real one if it is asked before that)


class RequestSink(Protocol):
    def on_request_head(self, head: RequestHead) -> None: ...
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self, trailers: Headers | None) -> None: ...


class ResponseSink(Protocol):
    def on_interim(self, head: ResponseHead) -> None: ...
    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self, trailers: Headers | None) -> None: ...


class _Closed:
    """Stands in for httptools' parser and the sink after close(): any use is a bug."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"parser used after close() ({name})")


_CLOSED: Final[Any] = _Closed()


def _closed_feed(data: bytes) -> None:
    raise RuntimeError("parser used after close() (feed_data)")


class _Stop(Exception):
    """Raised inside a callback to stop httptools at the end of a response to HEAD."""


def _unwrap(exc: BaseException, status: int, source: Any) -> BaseException:
    inner = exc.__context__
    if isinstance(inner, ProtocolError):
        return inner
    if inner is not None and not isinstance(inner, _Stop):
        return inner  # a bug in a sink: let it surface
    return ProtocolError(status, "malformed message", source=source)


class RequestParser:
    """Feeds a downstream byte stream to llhttp; calls the sink per request (pipelining ok).

    `feed()` returns None, or the bytes that followed an upgrade request (they belong to the
    tunnel, not to HTTP).
    """

    __slots__ = (
        "_sink",
        "_limits",
        "_p",
        "_feed",
        "_between",
        "_fresh",
        "_start",
        "_head",
        "_url",
        "_fields",
        "_raw",
        "_chunk",
        "_in_head",
        "_body_bytes",
        "messages",
    )

    def __init__(self, sink: RequestSink, limits: Limits = DEFAULT_LIMITS) -> None:
        self._sink = sink
        self._limits = limits
        self._p = httptools.HttpRequestParser(self)
        self._feed: Callable[[bytes], None] = self._p.feed_data  # bound once: no lookup per read
        self._between = True  # no byte of a next message parsed yet
        self._fresh: bytes | None = None  # the read being parsed, if it began between messages
        self._start: bytes | None = None  # the read that began with the current message
        self._head = _NO_REQUEST  # replaced at each message's beginning (never mutated)
        self._url = b""
        self._fields: Headers = []  # as parsed: the head's fields, then the trailer's
        self._raw = 0  # bytes fed since the read in which the current message began
        self._chunk = 0  # bytes of the read being parsed
        self._in_head = True
        self._body_bytes = 0
        self.messages = 0  # heads seen

    def set_limits(self, limits: Limits) -> None:
        """Limits for the next messages (a reload)."""
        self._limits = limits

    @property
    def in_head(self) -> bool:
        """True between messages or inside a head (not inside a body)."""
        return self._in_head

    @property
    def partial_head(self) -> RequestHead:
        """What is known of the head being parsed (for the request id of an error reply)."""
        head = self._head
        if head is _NO_REQUEST:  # nothing parsed yet on this connection
            head = self._head = RequestHead()
        if head.request_id is None and self._in_head:
            for name, value in self._fields:
                if len(name) == 12 and name.lower() == b"x-request-id":
                    head.request_id = _rstrip_ows(value)
        return head

    def feed(self, data: bytes) -> bytes | None:
        self._chunk = n = len(data)
        if self._in_head:
            before = self._raw
            self._raw = before + n
            if before > self._limits.max_head:
                raise ProtocolError(431, "request head too large")
        self._fresh = data if self._between else None
        try:
            self._feed(data)
        except httptools.HttpParserUpgrade as exc:
            return data[int(exc.args[0]) :]
        except httptools.HttpParserCallbackError as exc:
            raise _unwrap(exc, 400, "downstream") from None
        except httptools.HttpParserError as exc:
            raise ProtocolError(400, f"malformed request: {exc}") from None
        if self._in_head and len(self._fields) > self._limits.max_headers:
            raise ProtocolError(431, "too many header fields")  # a head still incomplete
        return None

    def close(self) -> None:
        """The connection is gone: let go of httptools' parser and the sink. They refer to
        each other and to this object (httptools holds our bound callbacks), a cycle that
        only the garbage collector would free, once per connection."""
        self._p = _CLOSED
        self._feed = _closed_feed
        self._sink = _CLOSED

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._start = self._fresh
        self._fresh = None
        self._between = False
        self._head = RequestHead()
        self._url = b""
        self._fields = []
        self._in_head = True
        self._body_bytes = 0
        self._raw = self._chunk  # an upper bound of this message's bytes so far

    def on_url(self, url: bytes) -> None:
        self._url = self._url + url  # (compiled: `+` on bytes is a C call, `+=` a generic one)
        n = len(self._url)
        if n > self._limits.max_uri:
            raise ProtocolError(414, "URI too long")
        if n > self._limits.max_head:
            raise ProtocolError(431, "request head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        p = self._p
        head = self._head
        limits = self._limits
        fields = self._fields
        self._fields = []  # trailers, if any, go here
        if len(fields) > limits.max_headers:
            raise ProtocolError(431, "too many header fields")
        url = self._url
        # `_raw` bounds the head's size from above; count exactly only when it might be over
        if self._raw > limits.max_head and len(url) + _head_size(fields) > limits.max_head:
            raise ProtocolError(431, "request head too large")
        headers: Headers = []
        hosts = 0
        te: bytes | None = None
        conn: list[bytes] | None = None
        pconn = False
        xff: list[bytes] | None = None
        raw = _REQUEST_RAW
        for field in fields:
            name, value = field
            n = len(name)
            if not (_REQUEST_LENGTHS >> n) & 1:  # no field we handle is this long
                headers.append(field)
                continue
            kind = _field_kind(name, _REQUEST_SPELLINGS[n], raw, _REQUEST_FIELDS)
            if not kind:
                headers.append(field)
            elif kind == _HOST:
                hosts += 1
                head.host = host = _rstrip_ows(value)
                headers.append((name, host))
            elif kind == _CL:
                head.content_length = _length_value(value)  # llhttp checked: digits, one field
            elif kind == _TE:
                te = _rstrip_ows(value).lower()
            elif kind == _CONNECTION:
                if conn is None:
                    conn = [value]
                else:
                    conn.append(value)
            elif kind == _XFF:
                if xff is None:
                    xff = [_rstrip_ows(value)]
                else:
                    xff.append(_rstrip_ows(value))
            elif kind == _XRID:
                head.request_id = _rstrip_ows(value)
            elif kind == _EXPECT:
                if value.strip(b" \t").lower() == b"100-continue":
                    head.expect_continue = True
            elif kind == _UPGRADE:
                head.upgrade = _rstrip_ows(value)
            elif kind == _PROXY_CONN:
                pconn = True
            # _HOP, _XF_DROP, _PROXY_CONN: dropped
        start = self._start
        if start is not None and start.startswith(b"GET "):  # llhttp accepted that line
            method = _GET
        else:
            method = p.get_method()  # (a bytes object made by httptools per call)
        head.method = method
        version = ""
        if start is not None:
            self._start = None
            version = _request_version(start, len(method) + len(url) + 2)
        if not version:
            version = _version(p, pconn or conn is not None)
        head.version = version
        if version != "1.1" and version != "1.0":
            raise ProtocolError(400, f"unsupported HTTP version {version}")
        if method == b"CONNECT":
            raise ProtocolError(400, "CONNECT is not supported")
        if url[:1] == b"/":
            head.target = url
        elif url == b"*":
            if method != b"OPTIONS":
                raise ProtocolError(400, "asterisk-form only with OPTIONS")
            head.target = url
        else:
            url, headers = self._absolute_form(url, headers)
            hosts = 1
            head.target = url
        qpos = url.find(b"?")
        if qpos < 0:
            head.path = url
        else:
            head.path = url[:qpos]
            head.query = url[qpos + 1 :]
        if hosts != 1 and (version == "1.1" or hosts > 1):
            raise ProtocolError(400, "missing or repeated Host")
        if te is not None:
            if te != b"chunked":
                raise ProtocolError(400, "unsupported Transfer-Encoding")
            if version == "1.0":
                raise ProtocolError(400, "Transfer-Encoding on HTTP/1.0")
            head.chunked = True
        if conn is not None:
            simple = _SIMPLE_RAW.get(conn[0]) if len(conn) == 1 else None
            if simple is None:
                simple = _simple_connection(conn)
            tokens: AbstractSet[bytes]
            if simple is None:
                tokens = connection_tokens(conn)
                headers = _drop_named(headers, tokens)
            else:
                tokens = simple
            if version == "1.1":
                head.keep_alive = b"close" not in tokens
            else:
                head.keep_alive = b"keep-alive" in tokens
            if head.upgrade is not None and b"upgrade" not in tokens:
                head.upgrade = None
        else:
            head.keep_alive = version == "1.1"
            head.upgrade = None
        if head.upgrade is not None and version != "1.1":
            head.upgrade = None
        if xff is not None:
            head.forwarded_for = b", ".join(xff)
        if head.expect_continue and (version != "1.1" or not head.has_body):
            head.expect_continue = False
        max_body = limits.max_body
        if max_body and head.content_length is not None and head.content_length > max_body:
            raise ProtocolError(413, "request body too large")
        head.headers = headers
        self._in_head = False
        self._raw = 0
        self.messages += 1
        self._sink.on_request_head(head)

    def _absolute_form(self, url: bytes, headers: Headers) -> tuple[bytes, Headers]:
        """http://authority/path -> /path, and the authority replaces Host (RFC 9112 §3.2.2)."""
        lower = url[:8].lower()
        if lower.startswith(b"http://"):
            rest = url[7:]
        elif lower.startswith(b"https://"):
            rest = url[8:]
        else:
            raise ProtocolError(400, "invalid request target")
        cut = len(rest)
        for sep in (b"/", b"?"):
            i = rest.find(sep)
            if 0 <= i < cut:
                cut = i
        authority = rest[:cut]
        if not authority or b"@" in authority:
            raise ProtocolError(400, "invalid request target")
        path = rest[cut:]
        if not path.startswith(b"/"):
            path = b"/" + path
        self._head.host = authority
        headers = [(n, v) for n, v in headers if n.lower() != b"host"]
        headers.insert(0, (b"Host", authority))
        return path, headers

    def on_body(self, data: bytes) -> None:
        max_body = self._limits.max_body
        if max_body:
            self._body_bytes += len(data)
            if self._body_bytes > max_body:
                raise ProtocolError(413, "request body too large")
        self._sink.on_request_body(data)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._between = True
        self._raw = 0
        fields = self._fields
        trailers = None
        if fields:
            self._fields = []
            trailers = _trailers(fields, self._limits, 431, "downstream")
        self._sink.on_request_end(trailers)

    def __repr__(self) -> str:
        state = "head" if self._in_head else "body"
        return f"RequestParser({state}, messages={self.messages})"


class ResponseParser:
    """Parses the responses on one upstream connection, one per request sent.

    Call `expect(head_request)` before each request is sent. `feed()` returns None, or the bytes
    after a 101 response (tunnel data). `feed_eof()` ends a body delimited by the close; it
    returns False when the connection ended a message early.
    """

    __slots__ = (
        "_sink",
        "_limits",
        "_p",
        "_feed",
        "_between",
        "_fresh",
        "_start",
        "_head",
        "_reason",
        "_fields",
        "_raw",
        "_chunk",
        "_in_head",
        "_head_request",
        "_interim",
        "_stopped",
        "started",
        "complete",
        "reusable",
    )

    def __init__(self, sink: ResponseSink, limits: Limits = UPSTREAM_LIMITS) -> None:
        self._sink = sink
        self._limits = limits
        self._p = httptools.HttpResponseParser(self)
        self._feed: Callable[[bytes], None] = self._p.feed_data  # bound once: no lookup per read
        self._between = True  # no byte of a next message parsed yet
        self._fresh: bytes | None = None  # the read being parsed, if it began between messages
        self._start: bytes | None = None  # the read that began with the current message
        self._head = ResponseHead()
        self._reason = b""
        self._fields: Headers = []  # as parsed: the head's fields, then the trailer's
        self._raw = 0  # bytes fed since the read in which the current message began
        self._chunk = 0  # bytes of the read being parsed
        self._in_head = True
        self._head_request = False
        self._interim = False
        self._stopped = False
        self.started = False  # a byte of the current response was parsed
        self.complete = False  # the current response ended cleanly
        self.reusable = True  # the connection may carry another request

    def set_sink(self, sink: ResponseSink) -> None:
        self._sink = sink

    def expect(self, head_request: bool) -> None:
        self._head_request = head_request
        self.started = False
        self.complete = False

    def expect_response(self, sink: ResponseSink, head_request: bool) -> None:
        """set_sink() and expect() in one call (the proxy's hot path)."""
        self._sink = sink
        self._head_request = head_request
        self.started = False
        self.complete = False

    def feed(self, data: bytes) -> bytes | None:
        self._chunk = n = len(data)
        self._raw += n
        self._fresh = data if self._between else None
        try:
            self._feed(data)
        except httptools.HttpParserUpgrade as exc:
            return data[int(exc.args[0]) :]
        except httptools.HttpParserCallbackError as exc:
            if self._stopped:
                self._stopped = False
                self._p = httptools.HttpResponseParser(self)
                self._feed = self._p.feed_data
                self._between = True
                self._in_head = True
                self.reusable = self.reusable and data.endswith(b"\r\n\r\n")
                return None
            raise _unwrap(exc, 502, "upstream") from None
        except httptools.HttpParserError as exc:
            self.reusable = False
            raise ProtocolError(502, f"invalid response: {exc}", source="upstream") from None
        fields = self._fields
        if fields and len(fields) > self._limits.max_headers:  # a head or trailer still open
            self.reusable = False
            raise ProtocolError(502, "response head too large", source="upstream")
        return None

    def close(self) -> None:
        """The connection is gone: break the cycle with httptools' parser (see
        RequestParser.close)."""
        self._p = _CLOSED
        self._feed = _closed_feed
        self._sink = _CLOSED
        self.reusable = False

    def feed_eof(self) -> bool:
        """The server closed. True if that ended the current response (close-delimited body)."""
        self.reusable = False
        if self.started and not self.complete and not self._in_head and self._head.until_close:
            self.complete = True
            self._sink.on_response_end(None)
            return True
        return False

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._start = self._fresh
        self._fresh = None
        self._between = False
        self._head = ResponseHead()
        self._reason = b""
        self._fields = []
        self._raw = self._chunk  # an upper bound of this message's bytes so far
        self._in_head = True
        self.started = True
        self.complete = False

    def on_status(self, reason: bytes) -> None:
        self._reason = self._reason + reason  # (as in on_url)
        if len(self._reason) > self._limits.max_head:
            raise ProtocolError(502, "response head too large", source="upstream")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        p = self._p
        head = self._head
        limits = self._limits
        fields = self._fields
        self._fields = []  # trailers, if any, go here
        if len(fields) > limits.max_headers or (
            self._raw > limits.max_head and len(self._reason) + _head_size(fields) > limits.max_head
        ):
            self.reusable = False
            raise ProtocolError(502, "response head too large", source="upstream")
        headers: Headers = []
        te: bytes | None = None
        conn: list[bytes] | None = None
        pconn = False
        raw = _RESPONSE_RAW
        for field in fields:
            name, value = field
            n = len(name)
            if not (_RESPONSE_LENGTHS >> n) & 1:  # as in RequestParser
                headers.append(field)
                continue
            kind = _field_kind(name, _RESPONSE_SPELLINGS[n], raw, _RESPONSE_FIELDS)
            if not kind:
                headers.append(field)
            elif kind == _CL:
                head.content_length = _length_value(value)
            elif kind == _TE:
                te = _rstrip_ows(value).lower()
            elif kind == _CONNECTION:
                if conn is None:
                    conn = [value]
                else:
                    conn.append(value)
            elif kind == _UPGRADE:
                head.upgrade = _rstrip_ows(value)
            elif kind == _PROXY_CONN:
                pconn = True
        head.status = status = p.get_status_code()
        version = ""
        start = self._start
        if start is not None:
            self._start = None
            version = _response_version(start)
        if not version:
            version = _version(p, pconn or conn is not None)
        head.version = version
        head.reason = self._reason
        if version != "1.1" and version != "1.0":
            self.reusable = False
            raise ProtocolError(502, f"unsupported HTTP version {version}", source="upstream")
        if conn is not None:
            simple = _SIMPLE_RAW.get(conn[0]) if len(conn) == 1 else None
            if simple is None:
                simple = _simple_connection(conn)
            tokens: AbstractSet[bytes]
            if simple is None:
                tokens = connection_tokens(conn)
                headers = _drop_named(headers, tokens)
            else:
                tokens = simple
            if version == "1.1":
                head.keep_alive = b"close" not in tokens
            else:
                head.keep_alive = b"keep-alive" in tokens
        else:
            head.keep_alive = version == "1.1"
        head.headers = headers
        self._in_head = False
        if status < 200 and status != 101:
            self._interim = True
            self._sink.on_interim(head)
            return
        if self._head_request or status == 204 or status == 304 or status == 101:
            head.no_body = True
        elif te is not None:
            if te != b"chunked":
                self.reusable = False
                raise ProtocolError(502, "unsupported Transfer-Encoding", source="upstream")
            head.chunked = True
        elif head.content_length is None:
            head.until_close = True
            head.keep_alive = False
        if not head.keep_alive:
            self.reusable = False
        self._sink.on_response_head(head)
        if self._head_request and status >= 200:
            # httptools would wait for a body a HEAD response never has: end it here
            self.complete = True
            self._sink.on_response_end(None)
            self._stopped = True
            raise _Stop

    def on_body(self, data: bytes) -> None:
        if data:
            self._sink.on_response_body(data)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._between = True
        if self._interim:
            self._interim = False
            self.started = False
            return
        self.complete = True
        fields = self._fields
        trailers = None
        if fields:
            self._fields = []
            trailers = _trailers(fields, self._limits, 502, "upstream")
        self._sink.on_response_end(trailers)

    def __repr__(self) -> str:
        state = "head" if self._in_head else "body"
        return (
            f"ResponseParser({state}, started={self.started}, complete={self.complete}, "
            f"reusable={self.reusable})"
        )
