"""Peek at a TLS ClientHello: the server name (SNI) without decrypting or consuming anything.

How this works: a TLS connection opens with one or more handshake records (RFC 8446 §5.1:
type 22, legacy version 0x03xx, a 2-byte length of at most 2^14 + 2048) whose fragments,
joined, carry the ClientHello handshake message (§4.1.2: type 1, a 3-byte length, then
legacy_version, 32 random bytes, session id, cipher suites, compression methods and the
extensions). The server_name extension (RFC 6066 §3, type 0) holds a list of names; the one of
type host_name (0) is what we route on. The caller keeps every byte it read and forwards them
untouched once the backend is chosen: this module only looks.

`parse_client_hello(buffer)` is called again with the whole buffer each time more data
arrives; it answers INCOMPLETE until the ClientHello is complete, then OK (with the name, or
None when the client sent no SNI), or INVALID as soon as the bytes cannot be a ClientHello.
The size is bounded by `MAX_HELLO_SIZE`: a larger "hello" is INVALID, so a client cannot make
us buffer without end.

`SniTable` maps a name to a backend: exact names first, then a `*.` wildcard that stands for
exactly one leftmost label (`*.example.com` matches `a.example.com`, not `example.com` and not
`a.b.example.com`), as in RFC 6125 §6.4.3.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

RECORD_HEADER: Final = 5
HANDSHAKE: Final = 22
CLIENT_HELLO: Final = 1
EXT_SERVER_NAME: Final = 0
EXT_ALPN: Final = 16
HOST_NAME: Final = 0
MAX_RECORD: Final = 2**14 + 2048
MAX_HELLO_SIZE: Final = 16384  # handshake body bytes we are willing to buffer


class HelloStatus(enum.Enum):
    INCOMPLETE = "incomplete"  # need more bytes
    OK = "ok"  # a complete, well-formed ClientHello
    INVALID = "invalid"  # not TLS, or a malformed / oversized ClientHello


@dataclass(frozen=True, slots=True)
class ClientHello:
    status: HelloStatus
    server_name: str | None = None  # lower case, no trailing dot; None = no SNI sent
    alpn: tuple[str, ...] = ()
    reason: str = ""  # why INVALID

    @property
    def complete(self) -> bool:
        return self.status is not HelloStatus.INCOMPLETE


_INCOMPLETE: Final = ClientHello(HelloStatus.INCOMPLETE)


def _invalid(reason: str) -> ClientHello:
    return ClientHello(HelloStatus.INVALID, reason=reason)


class _Malformed(Exception):
    pass


def _handshake_bytes(data: bytes) -> bytes | ClientHello:
    """Join the fragments of the leading handshake records into the ClientHello message.

    Returns the whole message (header included) or a verdict: INVALID, or INCOMPLETE.
    """
    pos = 0
    joined = bytearray()
    need: int | None = None  # total handshake message size once its header is known
    while True:
        if len(data) - pos < RECORD_HEADER:
            if len(data) > pos and data[pos] != HANDSHAKE:
                return _invalid("not a TLS handshake record")
            if len(data) - pos >= 2 and data[pos + 1] != 3:
                return _invalid("not a TLS record version")
            return _INCOMPLETE
        ctype = data[pos]
        if ctype != HANDSHAKE:
            return _invalid("not a TLS handshake record")
        if data[pos + 1] != 3 or data[pos + 2] > 4:
            return _invalid("not a TLS record version")
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if length == 0 or length > MAX_RECORD:
            return _invalid("bad TLS record length")
        end = pos + RECORD_HEADER + length
        fragment = data[pos + RECORD_HEADER : end]
        joined += fragment
        if need is None and len(joined) >= 4:
            if joined[0] != CLIENT_HELLO:
                return _invalid("first handshake message is not a ClientHello")
            need = 4 + int.from_bytes(joined[1:4], "big")
            if need - 4 > MAX_HELLO_SIZE:
                return _invalid("ClientHello too large")
        if end > len(data):
            # this record is still arriving
            if need is not None and len(joined) >= need:
                return bytes(joined[:need])
            return _INCOMPLETE
        if need is not None and len(joined) >= need:
            return bytes(joined[:need])
        pos = end


class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise _Malformed("truncated field")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_size: int) -> _Reader:
        n = self.uint(length_size)
        if self.pos + n > self.end:
            raise _Malformed("vector overruns its container")
        sub = _Reader(self.data, self.pos, self.pos + n)
        self.pos += n
        return sub

    @property
    def left(self) -> int:
        return self.end - self.pos


def _hostname(raw: bytes) -> str:
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise _Malformed("server name is not ASCII") from None
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        raise _Malformed("bad server name length")
    for label in name.split("."):
        if not label or len(label) > 63:
            raise _Malformed("bad server name label")
        for ch in label:
            if not (ch.isalnum() or ch in "-_"):
                raise _Malformed("bad character in server name")
    return name


def _parse_body(msg: bytes) -> ClientHello:
    r = _Reader(msg, 4)
    r.take(2)  # legacy_version
    r.take(32)  # random
    session_id = r.vector(1)
    if session_id.left > 32:
        raise _Malformed("session id too long")
    suites = r.vector(2)
    if suites.left < 2 or suites.left % 2:
        raise _Malformed("bad cipher suites")
    compression = r.vector(1)
    if compression.left < 1:
        raise _Malformed("no compression methods")
    if r.left == 0:
        return ClientHello(HelloStatus.OK)  # SSLv3-style hello without extensions
    extensions = r.vector(2)
    if r.left:
        raise _Malformed("trailing bytes after extensions")
    name: str | None = None
    alpn: tuple[str, ...] = ()
    seen: set[int] = set()
    while extensions.left:
        ext_type = extensions.uint(2)
        body = extensions.vector(2)
        if ext_type in seen:
            raise _Malformed("duplicate extension")
        seen.add(ext_type)
        if ext_type == EXT_SERVER_NAME:
            names = body.vector(2)
            if body.left:
                raise _Malformed("trailing bytes in server_name")
            while names.left:
                kind = names.uint(1)
                value = names.vector(2)
                if kind == HOST_NAME:
                    if name is not None:
                        raise _Malformed("two host names")
                    name = _hostname(value.take(value.left))
                else:
                    value.take(value.left)
        elif ext_type == EXT_ALPN:
            protocols = body.vector(2)
            found = []
            while protocols.left:
                proto = protocols.vector(1)
                found.append(proto.take(proto.left).decode("latin-1"))
            alpn = tuple(found)
    return ClientHello(HelloStatus.OK, name, alpn)


def parse_client_hello(data: bytes) -> ClientHello:
    """Look at the first bytes of a connection; never changes or consumes them."""
    joined = _handshake_bytes(data)
    if isinstance(joined, ClientHello):
        return joined
    try:
        return _parse_body(joined)
    except _Malformed as exc:
        return _invalid(str(exc))


def wildcard_of(name: str) -> str | None:
    """`a.example.com` -> `*.example.com`; None for a name with a single label."""
    _, dot, rest = name.partition(".")
    if not dot or not rest:
        return None
    return "*." + rest


class SniTable:
    """Server name -> backend name: exact first, then a one-label `*.` wildcard."""

    __slots__ = ("exact", "wildcard")

    def __init__(self, routes: Iterable[tuple[str, str]]) -> None:
        self.exact: dict[str, str] = {}
        self.wildcard: dict[str, str] = {}
        for server_name, backend in routes:
            key = server_name.lower().rstrip(".")
            table = self.wildcard if key.startswith("*.") else self.exact
            table.setdefault(key, backend)  # the first route for a name wins

    def lookup(self, name: str | None) -> str | None:
        if name is None:
            return None
        name = name.lower().rstrip(".")
        found = self.exact.get(name)
        if found is not None:
            return found
        wild = wildcard_of(name)
        if wild is None:
            return None
        return self.wildcard.get(wild)

    def __len__(self) -> int:
        return len(self.exact) + len(self.wildcard)

    def __repr__(self) -> str:
        return f"SniTable(exact={sorted(self.exact)}, wildcard={sorted(self.wildcard)})"
