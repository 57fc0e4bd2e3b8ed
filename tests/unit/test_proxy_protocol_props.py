"""Property tests (hypothesis) for the PROXY protocol: round trips for any addresses, every
prefix incomplete, payload untouched, arbitrary input never raises."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from steelyard.core.proxy_protocol import ParseStatus, encode, parse_header

V4 = st.ip_addresses(v=4).map(str)
V6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)
PORT = st.integers(min_value=0, max_value=65535)


def canonical(addr: str) -> str:
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from(["v1", "v2"]),
    src=st.one_of(V4, V6),
    dst=st.one_of(V4, V6),
    sport=PORT,
    dport=PORT,
    payload=st.binary(max_size=64),
)
def test_round_trip(
    version: str, src: str, dst: str, sport: int, dport: int, payload: bytes
) -> None:
    data = encode(version, src, sport, dst, dport) + payload
    result = parse_header(data)
    assert result.status is ParseStatus.OK
    header = result.header
    assert header is not None and not header.local
    # mixed families travel as IPv4-mapped IPv6 and come back as IPv4
    assert (header.source, header.destination) == (canonical(src), canonical(dst))
    assert (header.source_port, header.destination_port) == (sport, dport)
    assert data[result.consumed :] == payload
    for i in range(result.consumed):
        assert parse_header(data[:i]).status is ParseStatus.INCOMPLETE


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    result = parse_header(data)
    if result.status is ParseStatus.OK:
        assert 0 < result.consumed <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_signature_then_garbage_never_raises(rest: bytes) -> None:
    result = parse_header(b"\r\n\r\n\x00\r\nQUIT\n" + rest)
    assert result.status in ParseStatus
