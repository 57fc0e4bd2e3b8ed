"""Durations, sizes, addresses and status ranges as the config file writes them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from steelyard.config.units import (
    is_loopback,
    parse_duration,
    parse_size,
    parse_status_ranges,
    split_host_port,
)
from steelyard.core.balancing.maglev import is_prime


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("0", 0.0),
        ("0s", 0.0),
        (" 10s ", 10.0),
        (30, 30.0),  # a plain number is seconds (the lint warns about it)
        (0.5, 0.5),
        ("7", 7.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("5x", "invalid duration '5x'"),
        ("s", "invalid duration"),
        ("", "invalid duration"),
        ("5 s", "invalid duration"),
        ("5s5", "invalid duration"),
        ("-1s", "cannot be negative"),
        (-3, "cannot be negative"),
        (True, "expected a duration"),
        (None, "expected a duration"),
        ([1], "expected a duration"),
    ],
)
def test_parse_duration_refuses(text: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64KiB", 65536),
        ("1MiB", 1048576),
        ("1GiB", 1024**3),
        ("1KB", 1000),
        ("2MB", 2_000_000),
        ("64k", 65536),
        ("1m", 1048576),
        ("512", 512),
        ("512B", 512),
        (4096, 4096),
        (0, 0),
        ("1.5KiB", 1536),
        ("64kib", 65536),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["12XB", "KiB", "-1", "1.5", "ten", True, None, 1.5, -2])
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("0.0.0.0:0", "0.0.0.0", 0),
        ("[::1]:80", "::1", 80),
        ("[::]:443", "::", 443),
        ("localhost:9901", "localhost", 9901),
        ("backend-1.internal:5432", "backend-1.internal", 5432),
    ],
)
def test_split_host_port(text: str, host: str, port: int) -> None:
    assert split_host_port(text) == (host, port)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("8080", "expected host:port"),
        (":8080", "host is missing"),
        ("::1:80", "IPv6 in brackets"),
        ("[::1]80", "write IPv6 as"),
        ("[zz]:80", "invalid IPv6"),
        ("host:http", "invalid port"),
        ("host:70000", "out of range"),
        ("bad host:80", "invalid host"),
    ],
)
def test_split_host_port_refuses(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        split_host_port(text)


def test_server_port_zero_refused() -> None:
    with pytest.raises(ValueError, match="out of range 1-65535"):
        split_host_port("10.0.0.1:0", allow_port_zero=False)


def test_loopback() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("127.8.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("10.0.0.1")
    assert not is_loopback("example.com")


def test_is_prime() -> None:
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert is_prime(65537)
    assert not is_prime(65536)
    assert not is_prime(65535)


def test_status_ranges() -> None:
    assert parse_status_ranges("200-399") == ((200, 399),)
    assert parse_status_ranges(200) == ((200, 200),)
    assert parse_status_ranges("200, 204,300-302") == ((200, 200), (204, 204), (300, 302))
    for bad in ("2xx", "399-200", "700", "", True):
        with pytest.raises(ValueError):
            parse_status_ranges(bad)


UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(UNITS))), min_size=1, max_size=4
    )
)
def test_compound_durations_add_up(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert parse_duration(text) == pytest.approx(sum(n * UNITS[u] for n, u in parts))


@given(
    st.integers(0, 2**40), st.sampled_from([("", 1), ("KiB", 1024), ("MiB", 1024**2), ("KB", 1000)])
)
def test_sizes_scale(n: int, unit: tuple[str, int]) -> None:
    assert parse_size(f"{n}{unit[0]}") == n * unit[1]
