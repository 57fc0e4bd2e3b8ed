"""Header rewriting and message heads: what Steelyard sends up- and downstream.

The parsers (parser.py) already took the hop-by-hop fields (RFC 9110 §7.6.1) and the framing
fields out of the header lists; here the heads are rebuilt around the end-to-end fields with our
own framing (RFC 9112 §6), the forwarding fields (X-Forwarded-For appended, -Proto and -Host set)
and the request id. Each head is built as one bytes join.

Placeholders ({client_ip}, {request_id}, {host}, {path}, {query}, {server}) are compiled once
into a Template; rendering is a join of literals and context fields.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from steelyard.core.http1.parser import Headers, RequestHead, ResponseHead

REASONS: Final[dict[int, bytes]] = {
    100: b"Continue",
    101: b"Switching Protocols",
    102: b"Processing",
    103: b"Early Hints",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def reason(status: int) -> bytes:
    return REASONS.get(status, b"Unknown")


# -- request ids ------------------------------------------------------------------------------

_RID_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"


def valid_request_id(value: bytes) -> bool:
    """1 to 128 characters of A-Z a-z 0-9 . _ - (SPEC §3)."""
    return 0 < len(value) <= 128 and not value.translate(None, _RID_ALPHABET)


# "00" .. "ff": the counter's last two hex digits, without a %-format per id
_HEX_BYTE: Final = [b"%02x" % i for i in range(256)]


class RequestIdGenerator:
    """Unique ids without a syscall per request: a random per-instance prefix (12 hex digits)
    and a counter (`%08x`, more digits past 2**32). The prefix and all but the counter's last
    two digits are formatted once per 256 ids; an id is that block plus a table entry."""

    __slots__ = ("_prefix", "_n", "_high", "_block")

    def __init__(self, rng: random.Random) -> None:
        self._prefix = b"%012x" % rng.getrandbits(48)
        self._n = 0
        self._high = 0  # the counter's value >> 8 that _block was formatted for
        self._block = self._prefix + b"000000"

    def next(self) -> bytes:
        n = self._n + 1
        self._n = n
        high = n >> 8
        if high != self._high:
            self._high = high
            self._block = self._prefix + b"%06x" % high
        return self._block + _HEX_BYTE[n & 0xFF]

    def __call__(self) -> bytes:
        return self.next()

    def __repr__(self) -> str:
        return f"RequestIdGenerator(prefix={self._prefix.decode()}, issued={self._n})"


# -- placeholders -----------------------------------------------------------------------------


class RequestContext:
    """Per-request values that templates may use. All bytes; empty when not known."""

    __slots__ = ("client_ip", "request_id", "host", "path", "query", "server")

    def __init__(
        self,
        client_ip: bytes = b"",
        request_id: bytes = b"",
        host: bytes = b"",
        path: bytes = b"",
        query: bytes = b"",
        server: bytes = b"",
    ) -> None:
        self.client_ip = client_ip
        self.request_id = request_id
        self.host = host
        self.path = path
        self.query = query
        self.server = server

    def __repr__(self) -> str:
        return (
            f"RequestContext(client_ip={self.client_ip!r}, request_id={self.request_id!r}, "
            f"host={self.host!r}, path={self.path!r}, server={self.server!r})"
        )


PLACEHOLDERS: Final = ("client_ip", "request_id", "host", "path", "query", "server")


class Template:
    """A string with {placeholder}s, compiled once. Unknown {names} stay literal."""

    __slots__ = ("source", "_parts", "_constant")

    def __init__(self, source: str) -> None:
        self.source = source
        parts: list[bytes | str] = []
        literal = ""
        i = 0
        while i < len(source):
            if source[i] == "{":
                end = source.find("}", i)
                name = source[i + 1 : end] if end > 0 else ""
                if name in PLACEHOLDERS:
                    if literal:
                        parts.append(literal.encode())
                        literal = ""
                    parts.append(name)
                    i = end + 1
                    continue
            literal += source[i]
            i += 1
        if literal:
            parts.append(literal.encode())
        self._parts = tuple(parts)
        self._constant: bytes | None = None
        if all(isinstance(p, bytes) for p in parts):
            self._constant = b"".join(p for p in parts if isinstance(p, bytes))

    @property
    def constant(self) -> bytes | None:
        return self._constant

    def render(self, ctx: RequestContext) -> bytes:
        if self._constant is not None:
            return self._constant
        return b"".join(p if isinstance(p, bytes) else getattr(ctx, p) for p in self._parts)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


# fields route actions may not touch: framing and hop-by-hop belong to the proxy
_PROTECTED: Final = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
    }
)


def _check_name(name: str) -> bytes:
    raw = name.strip().encode("latin-1")
    if not raw or any(c <= 32 or c >= 127 or c in b'()<>@,;:\\"/[]?={}' for c in raw):
        raise ValueError(f"invalid header name {name!r}")
    if raw.lower() in _PROTECTED:
        raise ValueError(f"header {name!r} is managed by the proxy and cannot be rewritten")
    return raw


def _check_value(value: str) -> str:
    if any(c in value for c in "\r\n\x00"):
        raise ValueError(f"invalid header value {value!r}")
    return value


class HeaderActions:
    """Compiled `request_headers` / `response_headers`: remove, then set, then add."""

    __slots__ = ("_drop", "_append", "empty")

    def __init__(
        self,
        set_: Mapping[str, str] | None = None,
        add: Mapping[str, str] | None = None,
        remove: Iterable[str] | None = None,
    ) -> None:
        drop: set[bytes] = set()
        append: list[tuple[bytes, Template]] = []
        for name in remove or ():
            drop.add(_check_name(name).lower())
        for name, value in (set_ or {}).items():
            raw = _check_name(name)
            drop.add(raw.lower())
            append.append((raw, Template(_check_value(value))))
        for name, value in (add or {}).items():
            append.append((_check_name(name), Template(_check_value(value))))
        self._drop = frozenset(drop)
        self._append = tuple(append)
        self.empty = not drop and not append

    @classmethod
    def from_config(cls, cfg: object | None) -> HeaderActions:
        if cfg is None:
            return cls()
        return cls(
            set_=getattr(cfg, "set", None),
            add=getattr(cfg, "add", None),
            remove=getattr(cfg, "remove", None),
        )

    def apply(self, headers: Headers, ctx: RequestContext) -> Headers:
        if self._drop:
            drop = self._drop
            headers = [(n, v) for n, v in headers if n.lower() not in drop]
        for name, template in self._append:
            headers.append((name, template.render(ctx)))
        return headers

    def __repr__(self) -> str:
        return f"HeaderActions(drop={sorted(self._drop)}, append={[n for n, _ in self._append]})"


# -- heads ------------------------------------------------------------------------------------

BODY_NONE: Final = 0
BODY_LENGTH: Final = 1
BODY_CHUNKED: Final = 2
BODY_CLOSE: Final = 3  # delimited by closing the connection (HTTP/1.0 clients only)


def build_request_head(
    head: RequestHead,
    headers: Headers,
    target: bytes,
    client_ip: bytes,
    proto: bytes,
    request_id: bytes,
) -> bytes:
    """The head we send upstream: always HTTP/1.1, persistent unless an upgrade."""
    # Built from few pieces, each one `bytes % (...)` of bytes and ints: compiled, that is a
    # single allocation and copy (mypyc's CPyBytes_Build, no format parsing). One piece per
    # field, joined once: b"".join costs ~125 instructions per item and list.append ~85, so
    # four items per field (name, ": ", value, CRLF) cost ~3.5k more per request (callgrind).
    parts = [b"%s %s HTTP/1.1\r\n" % (head.method, target)]
    for name, value in headers:
        parts.append(b"%s: %s\r\n" % (name, value))
    content_length = head.content_length
    if head.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif content_length is not None:
        parts.append(b"Content-Length: %d\r\n" % content_length)
    if head.expect_continue:
        parts.append(b"Expect: 100-continue\r\n")
    upgrade = head.upgrade
    if upgrade is not None:
        parts.append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % upgrade)
    forwarded_for = head.forwarded_for
    if forwarded_for:
        client_ip = b"%s, %s" % (forwarded_for, client_ip)
    host = head.host
    if host is not None:
        parts.append(
            b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\n"
            b"X-Request-Id: %s\r\n\r\n" % (client_ip, proto, host, request_id)
        )
    else:
        parts.append(
            b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Request-Id: %s\r\n\r\n"
            % (client_ip, proto, request_id)
        )
    return b"".join(parts)


def response_mode(resp: ResponseHead, http10_client: bool) -> int:
    if resp.no_body:
        return BODY_NONE
    if resp.content_length is not None and not resp.chunked:
        return BODY_LENGTH
    return BODY_CLOSE if http10_client else BODY_CHUNKED


_STATUS_LINES: Final[dict[tuple[int, bytes], bytes]] = {}  # (status, reason) -> status line
_LAST_STATUS_LINE: Final[dict[int, tuple[bytes, bytes]]] = {}  # status -> (reason as sent, line)


def _status_line(status: int, reason_: bytes) -> bytes:
    line = _STATUS_LINES.get((status, reason_))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason_)
        if len(_STATUS_LINES) < 512:  # servers use a handful; never grow without bound
            _STATUS_LINES[(status, reason_)] = line
    return line


def build_response_head(
    resp: ResponseHead,
    headers: Headers,
    mode: int,
    keep_alive: bool,
    http10_client: bool,
    request_id: bytes,
) -> bytes:
    """The head we send downstream. `mode` from response_mode(); a CLOSE mode never keeps alive.
    (Positional parameters: the proxy calls it once per response, keywords cost more.)"""
    status = resp.status
    # _status_line(), inline: the last line per status is checked first (an int key; the
    # (status, reason) key would build a tuple and hash the reason's bytes every time)
    last = _LAST_STATUS_LINE.get(status)
    if last is not None and last[0] == resp.reason:
        line = last[1]
    else:
        line = _status_line(status, resp.reason or reason(status))
        if len(_LAST_STATUS_LINE) < 512:
            _LAST_STATUS_LINE[status] = (resp.reason, line)
    parts = [line]  # few pieces, one join: as in build_request_head
    for name, value in headers:
        parts.append(b"%s: %s\r\n" % (name, value))
    if mode == BODY_LENGTH:
        parts.append(b"Content-Length: %d\r\n" % (resp.content_length or 0))
    elif mode == BODY_CHUNKED:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    else:
        content_length = resp.content_length
        if content_length is not None and status != 204 and status >= 200:
            # HEAD / 304: as the server said
            parts.append(b"Content-Length: %d\r\n" % content_length)
    if status == 101:
        upgrade = resp.upgrade
        if upgrade is not None:
            parts.append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % upgrade)
        else:
            parts.append(b"Connection: upgrade\r\n")
    elif not keep_alive or mode == BODY_CLOSE:
        parts.append(b"Connection: close\r\n")
    elif http10_client:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"X-Request-Id: %s\r\n\r\n" % request_id)
    return b"".join(parts)


def build_interim(resp: ResponseHead) -> bytes:
    """A 1xx (not 101) relayed downstream as the server sent it, minus hop-by-hop fields."""
    lines = [b"HTTP/1.1 %d %s" % (resp.status, resp.reason or reason(resp.status))]
    lines += [n + b": " + v for n, v in resp.headers]
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def last_chunk(trailers: Headers | None) -> bytes:
    if not trailers:
        return b"0\r\n\r\n"
    return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"


def local_response(
    status: int,
    request_id: bytes,
    *,
    close: bool,
    message: str = "",
    body: bytes | None = None,
    content_type: bytes = b"text/plain; charset=utf-8",
    headers: Headers | None = None,
    head_only: bool = False,
    http10_client: bool = False,
) -> bytes:
    """A response Steelyard makes itself: errors, redirects, `respond` routes.

    Error bodies are one short plain-text line naming the request id.
    """
    if body is None:
        text = reason(status)
        if message:
            text += b": " + message.encode("utf-8", "replace")
        body = b"%d %s (request id %s)\n" % (status, text, request_id)
    lines = [b"HTTP/1.1 %d %s" % (status, reason(status))]
    if body or status not in (204, 304):
        lines.append(b"Content-Type: " + content_type)
        lines.append(b"Content-Length: %d" % len(body))
    if headers:
        lines += [n + b": " + v for n, v in headers]
    if close:
        lines.append(b"Connection: close")
    elif http10_client:
        lines.append(b"Connection: keep-alive")
    lines.append(b"X-Request-Id: " + request_id)
    lines.append(b"\r\n")
    out = b"\r\n".join(lines)
    if head_only or status in (204, 304):
        return out
    return out + body
