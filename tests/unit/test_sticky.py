from __future__ import annotations

from steelyard.core.sticky import StickyCookies
from steelyard.core.websocket import close_frame

SERVERS = ["s1", "s2", "10.0.0.3:8080"]


def make(secret: bytes = b"k" * 32) -> StickyCookies:
    return StickyCookies(secret, "api", "SY_SRV", 86400)


def test_value_round_trips_to_its_server_and_hides_the_name() -> None:
    sticky = make()
    for server in SERVERS:
        value = sticky.value_for(server)
        assert server not in value and "10.0.0.3" not in value
        assert make().server_for(value, SERVERS) == server


def test_tampered_or_foreign_values_name_no_server() -> None:
    sticky = make()
    good = sticky.value_for("s1")
    flipped = ("A" if good[0] != "A" else "B") + good[1:]
    assert sticky.server_for(flipped, SERVERS) is None
    assert sticky.server_for("", SERVERS) is None
    assert sticky.server_for("s1", SERVERS) is None
    other_secret = make(b"z" * 32).value_for("s1")
    assert sticky.server_for(other_secret, SERVERS) is None


def test_removed_server_is_not_named_by_a_fresh_table() -> None:
    value = make().value_for("s2")
    assert make().server_for(value, ["s1"]) is None


def test_values_differ_per_backend() -> None:
    a = StickyCookies(b"k", "api", "c", 1).value_for("s1")
    b = StickyCookies(b"k", "web", "c", 1).value_for("s1")
    assert a != b


def test_set_cookie_attributes() -> None:
    sticky = make()
    header = sticky.set_cookie("s1", secure=False)
    assert header.startswith(f"SY_SRV={sticky.value_for('s1')}; ")
    assert "Path=/" in header and "Max-Age=86400" in header
    assert "HttpOnly" in header and "SameSite=Lax" in header
    assert "Secure" not in header
    assert header.endswith("; Secure") is False
    assert sticky.set_cookie("s1", secure=True).endswith("; Secure")


def test_close_frames() -> None:
    assert close_frame() == b"\x88\x02\x03\xe9"
    masked = close_frame(mask=b"\x01\x02\x03\x04")
    assert masked[:2] == b"\x88\x82" and masked[2:6] == b"\x01\x02\x03\x04"
    assert bytes(b ^ m for b, m in zip(masked[6:], b"\x01\x02", strict=True)) == b"\x03\xe9"
