"""core.proxy_protocol: v1/v2 encode and parse, whole, byte by byte and at every split."""

from __future__ import annotations

import random
import struct

import pytest

from steelyard.core.proxy_protocol import (
    V2_SIGNATURE,
    ParseStatus,
    ProxyHeader,
    encode,
    encode_v1,
    encode_v1_unknown,
    encode_v2,
    encode_v2_local,
    parse_header,
)


def test_encode_v1_ipv4() -> None:
    assert encode_v1("192.168.0.1", 56324, "192.168.0.11", 443) == (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )


def test_encode_v1_ipv6() -> None:
    assert encode_v1("::1", 1, "2001:db8::5", 2) == b"PROXY TCP6 ::1 2001:db8::5 1 2\r\n"


def test_encode_v1_mixed_families_uses_mapped_ipv6() -> None:
    line = encode_v1("10.0.0.1", 5, "::1", 6)
    assert line == b"PROXY TCP6 ::ffff:a00:1 ::1 5 6\r\n"
    header = parse_header(line).header
    assert header is not None and header.source == "10.0.0.1"  # mapped -> IPv4


def test_encode_v2_ipv4_bytes() -> None:
    data = encode_v2("1.2.3.4", 1000, "5.6.7.8", 80)
    assert data[:12] == V2_SIGNATURE
    assert data[12] == 0x21  # version 2, PROXY
    assert data[13] == 0x11  # INET, STREAM
    assert struct.unpack("!H", data[14:16])[0] == 12
    assert data[16:] == bytes([1, 2, 3, 4, 5, 6, 7, 8]) + struct.pack("!HH", 1000, 80)


def test_encode_v2_ipv6_udp() -> None:
    data = encode_v2("::1", 53, "::2", 5353, transport="udp")
    assert data[13] == 0x22
    assert len(data) == 16 + 36
    result = parse_header(data)
    assert result.header == ProxyHeader(2, False, "udp", "::1", 53, "::2", 5353)


def test_encode_dispatch() -> None:
    assert encode("v1", "1.1.1.1", 1, "2.2.2.2", 2).startswith(b"PROXY TCP4")
    assert encode("v2", "1.1.1.1", 1, "2.2.2.2", 2).startswith(V2_SIGNATURE)
    with pytest.raises(ValueError):
        encode("v3", "1.1.1.1", 1, "2.2.2.2", 2)


@pytest.mark.parametrize(
    "src,sport,dst,dport",
    [
        ("127.0.0.1", 40000, "127.0.0.1", 6379),
        ("0.0.0.0", 0, "255.255.255.255", 65535),
        ("2001:db8::1", 12345, "2001:db8::2", 443),
    ],
)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_round_trip(version: str, src: str, sport: int, dst: str, dport: int) -> None:
    payload = b"payload bytes"
    data = encode(version, src, sport, dst, dport) + payload
    result = parse_header(data)
    assert result.status is ParseStatus.OK
    assert result.header is not None
    assert result.header.version == int(version[1])
    assert (result.header.source, result.header.source_port) == (src, sport)
    assert (result.header.destination, result.header.destination_port) == (dst, dport)
    assert data[result.consumed :] == payload
    # every prefix short of the header is incomplete
    for i in range(result.consumed):
        assert parse_header(data[:i]).status is ParseStatus.INCOMPLETE, i


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_mapped_ipv6_source_is_reported_as_ipv4(version: str) -> None:
    header = parse_header(encode(version, "::ffff:1.2.3.4", 1, "::1", 2)).header
    assert header is not None
    assert (header.source, header.destination) == ("1.2.3.4", "::1")


def test_v1_unknown_and_v2_local() -> None:
    r1 = parse_header(encode_v1_unknown() + b"x")
    assert r1.status is ParseStatus.OK and r1.header is not None and r1.header.local
    assert r1.consumed == len(encode_v1_unknown())
    r2 = parse_header(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
    assert r2.status is ParseStatus.OK and r2.header is not None and r2.header.local
    r3 = parse_header(encode_v2_local())
    assert r3.status is ParseStatus.OK and r3.header is not None and r3.header.local
    assert r3.consumed == 16
    assert "LOCAL" in repr(r3.header)


def test_v2_tlvs_are_skipped() -> None:
    base = encode_v2("1.2.3.4", 1, "5.6.7.8", 2)
    tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP-ish
    body = base[16:] + tlv
    data = base[:14] + struct.pack("!H", len(body)) + body + b"rest"
    result = parse_header(data)
    assert result.status is ParseStatus.OK
    assert data[result.consumed :] == b"rest"
    assert result.header is not None and result.header.source == "1.2.3.4"


def test_v2_unspec_family_is_local() -> None:
    data = V2_SIGNATURE + b"\x21\x00\x00\x00"
    result = parse_header(data)
    assert result.status is ParseStatus.OK and result.header is not None and result.header.local


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        b"PROXY " + b"A" * 120,
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n",
        V2_SIGNATURE[:5] + b"X",
        V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in a v2 header
        V2_SIGNATURE + b"\x23\x11\x00\x0c" + bytes(12),  # unknown command
        V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),  # IPv4 addresses truncated
        V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12),  # IPv6 addresses truncated
        V2_SIGNATURE + b"\x21\x11\xff\xff",  # absurd length
        b"\x16\x03\x01\x00\x05hello",  # TLS, no header
    ],
)
def test_invalid(data: bytes) -> None:
    result = parse_header(data)
    assert result.status is ParseStatus.INVALID, result
    assert result.reason


def test_empty_is_incomplete() -> None:
    assert parse_header(b"").status is ParseStatus.INCOMPLETE


def test_random_bytes_never_raise() -> None:
    rng = random.Random(3)
    seeds = [encode_v1("1.2.3.4", 5, "6.7.8.9", 10), encode_v2("::1", 1, "::2", 2)]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        result = parse_header(bytes(data[: rng.randint(0, len(data))]))
        assert result.status in ParseStatus
        if result.status is ParseStatus.OK:
            assert 0 < result.consumed <= len(data)


def test_repr_shows_addresses() -> None:
    header = parse_header(encode_v2("1.2.3.4", 1, "5.6.7.8", 2)).header
    assert repr(header) == "ProxyHeader(v2 tcp 1.2.3.4:1 -> 5.6.7.8:2)"
