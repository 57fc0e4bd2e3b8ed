"""normalize_path (core/http1/paths.py): RFC 3986 §6.2.2 normal form of a request path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steelyard.core.http1.paths import normalize_path


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"/", b"/"),
        (b"/admin", b"/admin"),
        (b"/%61dmin", b"/admin"),  # an unreserved character, encoded
        (b"/%7e/x", b"/~/x"),
        (b"/./admin", b"/admin"),
        (b"//admin", b"/admin"),
        (b"/x/../admin", b"/admin"),
        (b"/a/%2e%2e/admin", b"/admin"),  # an encoded dot segment
        (b"/a/./b/../c", b"/a/c"),
        (b"/a/.", b"/a/"),
        (b"/a/b/..", b"/a/"),
        (b"/..", b"/"),
        (b"/../../a", b"/a"),  # never above the root
        (b"/a//b//", b"/a/b/"),
        (b"/a%2fb", b"/a%2Fb"),  # an encoded slash stays encoded (upper-case hex)
        (b"/a%2Fb/..", b"/"),  # ... and is part of its segment
        (b"/%20x", b"/%20x"),
        (b"/.hidden/..x", b"/.hidden/..x"),  # not dot segments
    ],
)
def test_normal_forms(raw: bytes, normal: bytes) -> None:
    assert normalize_path(raw) == normal


@pytest.mark.parametrize("raw", [b"/%", b"/%4", b"/%zz", b"/a%g0", b"/%%41"])
def test_malformed_percent_encodings_are_refused(raw: bytes) -> None:
    assert normalize_path(raw) is None


path_chars = st.sampled_from(list(b"/./%aA0~-_2eEfF%"))


@settings(max_examples=300, deadline=None)
@given(st.lists(path_chars, max_size=40).map(lambda cs: b"/" + bytes(cs)))
def test_normal_form_is_a_fixed_point_without_dot_segments_or_empty_ones(raw: bytes) -> None:
    normal = normalize_path(raw)
    if normal is None:
        return
    assert normal.startswith(b"/")
    assert normalize_path(normal) == normal  # idempotent
    assert b"//" not in normal
    segments = normal.split(b"/")[1:]
    assert b"." not in segments and b".." not in segments
    # what is left encoded is not unreserved, and in upper case
    i = normal.find(b"%")
    while i >= 0:
        pair = normal[i + 1 : i + 3]
        value = bytes([int(pair, 16)])
        assert pair == pair.upper() and not value.isalnum() and value not in b"-._~"
        i = normal.find(b"%", i + 1)
