"""core.sni: the ClientHello peek, fed whole, byte by byte and at random split points."""

from __future__ import annotations

import random
import ssl
import struct

import pytest

from steelyard.core.sni import (
    MAX_HELLO_SIZE,
    ClientHello,
    HelloStatus,
    SniTable,
    parse_client_hello,
    wildcard_of,
)


def real_client_hello(server_name: str | None, alpn: list[str] | None = None) -> bytes:
    """The first flight of Python's own TLS client (no sockets: memory BIOs)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def ext(ext_type: int, body: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(body)) + body


def sni_ext(*names: bytes, kind: int = 0) -> bytes:
    entries = b"".join(struct.pack("!BH", kind, len(n)) + n for n in names)
    return ext(0, struct.pack("!H", len(entries)) + entries)


def hello(
    extensions: bytes | None, *, session_id: bytes = b"", suites: bytes = b"\x13\x01"
) -> bytes:
    body = b"\x03\x03" + bytes(32)
    body += bytes([len(session_id)]) + session_id
    body += struct.pack("!H", len(suites)) + suites
    body += b"\x01\x00"
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(msg: bytes, sizes: list[int] | None = None) -> bytes:
    """Wrap a handshake message in TLS records, split at `sizes` (default: one record)."""
    out = b""
    pos = 0
    for size in sizes or [len(msg)]:
        frag = msg[pos : pos + size]
        pos += size
        out += b"\x16\x03\x01" + struct.pack("!H", len(frag)) + frag
    if pos < len(msg):
        frag = msg[pos:]
        out += b"\x16\x03\x01" + struct.pack("!H", len(frag)) + frag
    return out


def test_real_hello_with_sni() -> None:
    data = real_client_hello("a.example.com", ["h2", "http/1.1"])
    result = parse_client_hello(data)
    assert result == ClientHello(HelloStatus.OK, "a.example.com", ("h2", "http/1.1"))


def test_real_hello_without_sni() -> None:
    result = parse_client_hello(real_client_hello(None))
    assert result.status is HelloStatus.OK
    assert result.server_name is None


def test_does_not_consume() -> None:
    data = real_client_hello("x.test")
    copy = bytes(data)
    parse_client_hello(data)
    assert data == copy


@pytest.mark.parametrize("name", ["a.example.com", "db.internal", "localhost"])
def test_every_prefix_is_incomplete_then_ok(name: str) -> None:
    data = real_client_hello(name)
    for i in range(len(data)):
        assert parse_client_hello(data[:i]).status is HelloStatus.INCOMPLETE, i
    assert parse_client_hello(data).server_name == name


def test_trailing_bytes_after_hello_are_ignored() -> None:
    data = real_client_hello("a.example.com") + b"\x14\x03\x03\x00\x01\x01"
    assert parse_client_hello(data).server_name == "a.example.com"


def test_hello_split_over_many_records() -> None:
    msg = hello(sni_ext(b"split.example.com"))
    rng = random.Random(7)
    for _ in range(50):
        cuts = []
        left = len(msg)
        while left > 0:
            n = rng.randint(1, max(1, left))
            cuts.append(n)
            left -= n
        data = records(msg, cuts)
        assert parse_client_hello(data).server_name == "split.example.com"
        for i in range(len(data)):
            assert parse_client_hello(data[:i]).status is HelloStatus.INCOMPLETE


def test_handshake_header_split_across_records() -> None:
    msg = hello(sni_ext(b"h.example"))
    data = records(msg, [1, 2, 1])
    assert parse_client_hello(data).server_name == "h.example"


def test_name_is_lowercased_and_trailing_dot_dropped() -> None:
    assert parse_client_hello(records(hello(sni_ext(b"WWW.Example.COM.")))).server_name == (
        "www.example.com"
    )


def test_hello_without_extensions() -> None:
    result = parse_client_hello(records(hello(None)))
    assert result.status is HelloStatus.OK
    assert result.server_name is None


def test_other_name_types_are_skipped() -> None:
    entries = struct.pack("!BH", 7, 3) + b"abc" + struct.pack("!BH", 0, 5) + b"a.b.c"
    extension = ext(0, struct.pack("!H", len(entries)) + entries)
    assert parse_client_hello(records(hello(extension))).server_name == "a.b.c"


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x02\x01\x00\x10",  # bad version
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x17\x03\x03\x00\x05hello",  # application data first
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # ServerHello, not ClientHello
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"\x16\x07",  # not version 3
    ],
    ids=["http", "bad-version", "empty-record", "appdata", "server-hello", "proxy", "short"],
)
def test_not_tls(data: bytes) -> None:
    result = parse_client_hello(data)
    assert result.status is HelloStatus.INVALID, result
    assert result.reason


@pytest.mark.parametrize(
    "msg",
    [
        hello(sni_ext(b"a.example.com", b"b.example.com")),  # two host names
        hello(sni_ext(b"bad name.com")),
        hello(sni_ext(b"caf\xc3\xa9.com")),
        hello(sni_ext(b"a..b")),
        hello(sni_ext(b"")),
        hello(sni_ext(b"x") + sni_ext(b"y")),  # duplicate extension
        hello(b"\x00\x00\x00\x09\x00\x07\x00\x00\x04abc"),  # truncated name
        hello(sni_ext(b"ok.com"), suites=b"\x13"),  # odd cipher suites
        hello(sni_ext(b"ok.com"), session_id=bytes(33)),
    ],
    ids=[
        "two-names",
        "space",
        "non-ascii",
        "empty-label",
        "empty",
        "duplicate",
        "truncated",
        "odd-suites",
        "long-session-id",
    ],
)
def test_malformed_hello(msg: bytes) -> None:
    result = parse_client_hello(records(msg))
    assert result.status is HelloStatus.INVALID, result


def test_trailing_garbage_inside_message() -> None:
    body_msg = hello(sni_ext(b"ok.com"))
    # declare one more byte than the extensions carry
    broken = b"\x01" + (len(body_msg) - 4 + 1).to_bytes(3, "big") + body_msg[4:] + b"\x00"
    assert parse_client_hello(records(broken)).status is HelloStatus.INVALID


def test_oversized_hello_is_invalid_before_it_is_complete() -> None:
    header = b"\x16\x03\x01\x40\x00" + b"\x01" + (MAX_HELLO_SIZE + 1).to_bytes(3, "big")
    assert parse_client_hello(header).status is HelloStatus.INVALID


def test_random_garbage_never_raises() -> None:
    rng = random.Random(1)
    base = real_client_hello("fuzz.example.com")
    for _ in range(2000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        result = parse_client_hello(bytes(data[: rng.randint(0, len(data))]))
        assert isinstance(result, ClientHello)


def test_wildcard_of() -> None:
    assert wildcard_of("a.example.com") == "*.example.com"
    assert wildcard_of("localhost") is None


def test_sni_table() -> None:
    table = SniTable(
        [
            ("a.example.com", "a"),
            ("*.example.com", "b"),
            ("*.example.com", "ignored"),
            ("Example.COM", "apex"),
        ]
    )
    assert table.lookup("a.example.com") == "a"
    assert table.lookup("A.EXAMPLE.COM.") == "a"
    assert table.lookup("c.example.com") == "b"
    assert table.lookup("example.com") == "apex"
    assert table.lookup("x.c.example.com") is None  # one label only
    assert table.lookup("other.org") is None
    assert table.lookup(None) is None
    assert len(table) == 3
    assert "example.com" in repr(table)


def test_wildcard_does_not_match_apex() -> None:
    table = SniTable([("*.example.com", "b")])
    assert table.lookup("example.com") is None
