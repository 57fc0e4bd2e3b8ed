"""The PROXY protocol (HAProxy, "The PROXY protocol", versions 1 and 2): encode and parse.

How this works: a proxy that speaks it sends one header before any payload, carrying the
original client (source) and the address it connected to (destination).

- v1 (§2.1) is one ASCII line of at most 107 bytes:
  `PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\\r\\n`, `PROXY TCP6 ...`, or `PROXY UNKNOWN ...\\r\\n`.
- v2 (§2.2) is binary: the 12-byte signature `\\r\\n\\r\\n\\0\\r\\nQUIT\\n`, a byte with the
  version (high nibble, 2) and command (low nibble: 0 LOCAL, 1 PROXY), a byte with the address
  family (high nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) and transport (low nibble: 0 UNSPEC,
  1 STREAM, 2 DGRAM), a 2-byte big-endian length of what follows, the addresses
  (12 bytes for IPv4, 36 for IPv6, 216 for UNIX) and optional TLVs, which we skip.

`parse_header(buffer)` is called with everything received so far and answers INCOMPLETE, OK
(with the header and how many bytes it took: the caller strips exactly those) or INVALID. A
receiver that requires the header refuses a connection whose first bytes are anything else
(§2: "the receiver MUST NOT try to guess whether the header is present").
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Final

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX: Final = b"PROXY "
V1_MAX: Final = 107
V2_HEADER: Final = 16
V2_MAX_PAYLOAD: Final = 4096  # we accept TLVs up to this size; the spec allows 65535

_FAMILY_INET: Final = 0x1
_FAMILY_INET6: Final = 0x2
_FAMILY_UNIX: Final = 0x3
_STREAM: Final = 0x1
_DGRAM: Final = 0x2


class ParseStatus(enum.Enum):
    INCOMPLETE = "incomplete"
    OK = "ok"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int  # 1 or 2
    local: bool = False  # v2 LOCAL command / v1 UNKNOWN: no addresses, use the peer's
    transport: str = "tcp"  # tcp | udp
    source: str | None = None  # client address (text) when known
    source_port: int = 0
    destination: str | None = None
    destination_port: int = 0

    @property
    def client(self) -> tuple[str, int] | None:
        """(address, port) of the original client; None for LOCAL/UNKNOWN (keep the peer's)."""
        if self.local or self.source is None:
            return None
        return self.source, self.source_port

    def __repr__(self) -> str:
        if self.local or self.source is None:
            return f"ProxyHeader(v{self.version} LOCAL)"
        return (
            f"ProxyHeader(v{self.version} {self.transport} {self.source}:{self.source_port} -> "
            f"{self.destination}:{self.destination_port})"
        )


@dataclass(frozen=True, slots=True)
class ParseResult:
    status: ParseStatus
    header: ProxyHeader | None = None
    consumed: int = 0  # bytes of the header; the payload starts after them
    reason: str = ""


_INCOMPLETE: Final = ParseResult(ParseStatus.INCOMPLETE)


def _invalid(reason: str) -> ParseResult:
    return ParseResult(ParseStatus.INVALID, reason=reason)


# -------------------------------------------------------------------------------- parse


def parse_header(data: bytes) -> ParseResult:
    """Parse a v1 or v2 header at the start of `data` (which is not modified)."""
    if not data:
        return _INCOMPLETE
    if data[0] == V2_SIGNATURE[0]:
        n = min(len(data), len(V2_SIGNATURE))
        if data[:n] != V2_SIGNATURE[:n]:
            return _invalid("not a PROXY protocol header")
        if len(data) < V2_HEADER:
            return _INCOMPLETE
        return _parse_v2(data)
    n = min(len(data), len(V1_PREFIX))
    if data[:n] != V1_PREFIX[:n]:
        return _invalid("not a PROXY protocol header")
    return _parse_v1(data)


def _text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """IPv4-mapped IPv6 addresses are reported as the IPv4 address they carry."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _parse_v1(data: bytes) -> ParseResult:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data[:V1_MAX]:
            return _invalid("PROXY v1 line too long or not CRLF-terminated")
        return _INCOMPLETE
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        return _invalid("PROXY v1 line is not ASCII")
    parts = line.split(" ")
    consumed = end + 2
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ParseResult(ParseStatus.OK, ProxyHeader(1, local=True), consumed)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        return _invalid("malformed PROXY v1 line")
    _, proto, src, dst, sport, dport = parts
    try:
        src_ip = ipaddress.ip_address(src)
        dst_ip = ipaddress.ip_address(dst)
    except ValueError:
        return _invalid("bad address in PROXY v1 line")
    want = 4 if proto == "TCP4" else 6
    if src_ip.version != want or dst_ip.version != want:
        return _invalid("address family does not match in PROXY v1 line")
    ports = []
    for text in (sport, dport):
        if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
            return _invalid("bad port in PROXY v1 line")
        ports.append(int(text))
    header = ProxyHeader(1, False, "tcp", _text(src_ip), ports[0], _text(dst_ip), ports[1])
    return ParseResult(ParseStatus.OK, header, consumed)


def _parse_v2(data: bytes) -> ParseResult:
    ver_cmd = data[12]
    if ver_cmd >> 4 != 2:
        return _invalid("unsupported PROXY protocol version")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        return _invalid("unknown PROXY v2 command")
    fam = data[13]
    length = int.from_bytes(data[14:16], "big")
    if length > V2_MAX_PAYLOAD:
        return _invalid("PROXY v2 header too large")
    total = V2_HEADER + length
    if len(data) < total:
        return _INCOMPLETE
    if command == 0:  # LOCAL: the connection is the proxy's own (e.g. health checks)
        return ParseResult(ParseStatus.OK, ProxyHeader(2, local=True), total)
    family, proto = fam >> 4, fam & 0x0F
    transport = "udp" if proto == _DGRAM else "tcp"
    body = data[V2_HEADER:total]
    if family == _FAMILY_INET:
        if length < 12:
            return _invalid("PROXY v2 IPv4 addresses truncated")
        src = str(ipaddress.IPv4Address(body[0:4]))
        dst = str(ipaddress.IPv4Address(body[4:8]))
        sport = int.from_bytes(body[8:10], "big")
        dport = int.from_bytes(body[10:12], "big")
    elif family == _FAMILY_INET6:
        if length < 36:
            return _invalid("PROXY v2 IPv6 addresses truncated")
        src = _text(ipaddress.IPv6Address(body[0:16]))
        dst = _text(ipaddress.IPv6Address(body[16:32]))
        sport = int.from_bytes(body[32:34], "big")
        dport = int.from_bytes(body[34:36], "big")
    else:
        # UNSPEC or UNIX: no IP address to use; the receiver falls back to the peer address
        return ParseResult(ParseStatus.OK, ProxyHeader(2, local=True, transport=transport), total)
    header = ProxyHeader(2, False, transport, src, sport, dst, dport)
    return ParseResult(ParseStatus.OK, header, total)


# -------------------------------------------------------------------------------- encode


def _same_family(
    src: str, dst: str
) -> tuple[
    ipaddress.IPv4Address | ipaddress.IPv6Address, ipaddress.IPv4Address | ipaddress.IPv6Address
]:
    a = ipaddress.ip_address(src.split("%", 1)[0])
    b = ipaddress.ip_address(dst.split("%", 1)[0])
    if a.version != b.version:
        # mixed families: express both as IPv6 (IPv4-mapped), which every receiver accepts
        if a.version == 4:
            a = ipaddress.IPv6Address(f"::ffff:{a}")
        if b.version == 4:
            b = ipaddress.IPv6Address(f"::ffff:{b}")
    return a, b


def encode_v1(src: str, src_port: int, dst: str, dst_port: int) -> bytes:
    """`PROXY TCP4|TCP6 src dst sport dport\\r\\n`."""
    a, b = _same_family(src, dst)
    proto = "TCP4" if a.version == 4 else "TCP6"
    return f"PROXY {proto} {a} {b} {src_port} {dst_port}\r\n".encode("ascii")


def encode_v1_unknown() -> bytes:
    return b"PROXY UNKNOWN\r\n"


def encode_v2(src: str, src_port: int, dst: str, dst_port: int, *, transport: str = "tcp") -> bytes:
    """A v2 PROXY command header with the addresses (no TLVs)."""
    a, b = _same_family(src, dst)
    proto = _DGRAM if transport == "udp" else _STREAM
    if a.version == 4:
        fam = (_FAMILY_INET << 4) | proto
        body = a.packed + b.packed
    else:
        fam = (_FAMILY_INET6 << 4) | proto
        body = a.packed + b.packed
    body += src_port.to_bytes(2, "big") + dst_port.to_bytes(2, "big")
    return V2_SIGNATURE + bytes((0x21, fam)) + len(body).to_bytes(2, "big") + body


def encode_v2_local() -> bytes:
    return V2_SIGNATURE + bytes((0x20, 0x00)) + b"\x00\x00"


def encode(version: str, src: str, src_port: int, dst: str, dst_port: int) -> bytes:
    """version: "v1" | "v2" (the backend's `proxy_protocol` setting)."""
    if version == "v1":
        return encode_v1(src, src_port, dst, dst_port)
    if version == "v2":
        return encode_v2(src, src_port, dst, dst_port)
    raise ValueError(f"unknown PROXY protocol version {version!r}")
