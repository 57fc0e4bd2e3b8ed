"""Parsers for the scalar formats of the config file: durations, sizes, addresses.

Each parser raises ValueError with a message meant for the user (it ends up after
`FILE:LINE:COL:`), and is used both by the pydantic models and by the semantic rules.
"""

from __future__ import annotations

import ipaddress
import re

_DURATION_UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)")
_NUMBER = re.compile(r"[+-]?(\d+(?:\.\d*)?|\.\d+)")


def parse_duration(value: object) -> float:
    """`250ms`, `5s`, `2m`, `1h`, `1d`, compound `1m30s`; a plain number is seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 5s or 250ms, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like 5s or 250ms, got {_kind(value)}")
    text = value.strip()
    if _NUMBER.fullmatch(text):
        seconds = float(text)
        if seconds < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return seconds
    if text.startswith("-"):
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"invalid duration {value!r}: use a number with a unit ms, s, m, h or d "
            "(e.g. 250ms, 5s, 2m, 1h30m)"
        )
    return total


_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]*)")


def parse_size(value: object) -> int:
    """`64KiB`, `1MiB`, `1GiB` (binary), `1KB`/`1MB` (decimal), `64k`/`1m` (binary, as nginx),
    or a plain byte count."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 64KiB or 1MiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    if isinstance(value, float):
        if value < 0 or value != int(value):
            raise ValueError(f"a size is a whole number of bytes, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size like 64KiB or 1MiB, got {_kind(value)}")
    m = _SIZE.fullmatch(value.strip())
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _SIZE_UNITS:
        raise ValueError(
            f"invalid size {value!r}: use a byte count or a number with a unit "
            "B, KiB, MiB, GiB (1024-based) or KB, MB, GB (1000-based), e.g. 64KiB"
        )
    assert unit is not None
    size = float(m.group(1)) * _SIZE_UNITS[unit]
    if size != int(size):
        raise ValueError(f"invalid size {value!r}: not a whole number of bytes")
    return int(size)


def split_host_port(value: str, *, allow_port_zero: bool = True) -> tuple[str, int]:
    """`host:port`, IPv6 as `[::1]:80`. Returns (host without brackets, port)."""
    if not isinstance(value, str):
        raise ValueError(f"expected an address host:port, got {_kind(value)}")
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ValueError(f"invalid address {value!r}: write IPv6 as [::1]:8080")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r} in {value!r}") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"invalid address {value!r}: expected host:port, e.g. 127.0.0.1:8080")
        if ":" in host:
            raise ValueError(f"invalid address {value!r}: write IPv6 in brackets, e.g. [::1]:8080")
    if not host:
        raise ValueError(f"invalid address {value!r}: the host is missing (e.g. 0.0.0.0:8080)")
    if not re.fullmatch(r"[A-Za-z0-9_.:%-]+", host):
        raise ValueError(f"invalid host {host!r} in {value!r}")
    if not port_text.isdigit():
        raise ValueError(f"invalid port {port_text!r} in {value!r}: expected a number 1-65535")
    port = int(port_text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"port {port} out of range {low}-65535 in {value!r}")
    return host, port


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_status_ranges(value: object) -> tuple[tuple[int, int], ...]:
    """`200`, `200-399`, `200,204,300-399` -> ((200, 200), ...)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f'expected a status or range like "200-399", got {_kind(value)}')
    ranges: list[tuple[int, int]] = []
    for part in str(value).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d{3})(?:\s*-\s*(\d{3}))?", part)
        if m is None:
            raise ValueError(
                f"invalid status range {value!r}: expected e.g. 200, 200-399 or 200,204"
            )
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if not (100 <= lo <= hi <= 599):
            raise ValueError(f"invalid status range {part!r}: statuses are 100-599, low <= high")
        ranges.append((lo, hi))
    return tuple(ranges)


def _kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return f"{type(value).__name__} {value!r}"
