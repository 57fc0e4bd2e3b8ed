"""Property tests (hypothesis) for the ClientHello peek: any valid name survives any record
split and any segmenting; no input makes the parser raise."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from steelyard.core.sni import HelloStatus, SniTable, parse_client_hello

LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
NAME = st.lists(LABEL, min_size=1, max_size=5).map(".".join)


def hello(name: bytes, alpn: list[bytes], extra_ext: bytes) -> bytes:
    entry = struct.pack("!BH", 0, len(name)) + name
    sni = struct.pack("!HH", 0, len(entry) + 2) + struct.pack("!H", len(entry)) + entry
    protos = b"".join(bytes([len(p)]) + p for p in alpn)
    alpn_ext = struct.pack("!HHH", 16, len(protos) + 2, len(protos)) + protos if alpn else b""
    exts = extra_ext + sni + alpn_ext
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(msg: bytes, cuts: list[int]) -> bytes:
    out = b""
    pos = 0
    for cut in sorted(set(c % max(len(msg), 1) for c in cuts if c % max(len(msg), 1))) + [len(msg)]:
        frag = msg[pos:cut]
        if frag:
            out += b"\x16\x03\x01" + struct.pack("!H", len(frag)) + frag
        pos = cut
    return out


@settings(max_examples=200, deadline=None)
@given(
    name=NAME,
    alpn=st.lists(st.binary(min_size=1, max_size=10), max_size=3),
    padding=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
)
def test_name_survives_any_record_split(
    name: str, alpn: list[bytes], padding: bytes, cuts: list[int]
) -> None:
    extra = struct.pack("!HH", 21, len(padding)) + padding  # a padding extension
    data = records(hello(name.encode(), alpn, extra), cuts)
    result = parse_client_hello(data)
    assert result.status is HelloStatus.OK
    assert result.server_name == name
    assert result.alpn == tuple(p.decode("latin-1") for p in alpn)
    # any strict prefix asks for more; the data itself is never changed
    for i in range(0, len(data), max(1, len(data) // 25)):
        assert parse_client_hello(data[:i]).status is HelloStatus.INCOMPLETE


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    result = parse_client_hello(data)
    assert result.status in HelloStatus


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=5000))
def test_tls_framed_garbage_never_raises(body: bytes, declared: int) -> None:
    msg = b"\x01" + declared.to_bytes(3, "big") + body
    result = parse_client_hello(b"\x16\x03\x01" + struct.pack("!H", len(msg)) + msg)
    assert result.status in HelloStatus


@given(name=NAME, sub=LABEL)
def test_wildcard_matches_exactly_one_label(name: str, sub: str) -> None:
    table = SniTable([("*." + name, "w")])
    assert table.lookup(f"{sub}.{name}") == "w"
    assert table.lookup(name) is None
    assert table.lookup(f"{sub}.{sub}.{name}") is None
