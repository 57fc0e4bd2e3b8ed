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


# -- WebSocket frame boundaries (core.websocket.FrameTracker) -----------------------------------

import random  # noqa: E402

from steelyard.core.websocket import FrameTracker  # noqa: E402


def frame(payload: bytes, opcode: int = 0x2, mask: bytes | None = None) -> bytes:
    n = len(payload)
    b1 = 0x80 if mask else 0
    if n < 126:
        head = bytes((0x80 | opcode, b1 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, b1 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, b1 | 127)) + n.to_bytes(8, "big")
    if mask:
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


STREAM = [
    frame(b"x" * 5),
    frame(b"y" * 126, mask=b"abcd"),
    frame(b"", opcode=0x9),
    frame(b"z" * 70000),
    frame(b"w" * 125, opcode=0x1, mask=b"\x00\x01\x02\x03"),
]


def boundaries(stream: list[bytes]) -> set[int]:
    out, pos = set(), 0
    for f in stream:
        pos += len(f)
        out.add(pos)
    return out


def test_frame_tracker_whole_and_byte_at_a_time() -> None:
    data = b"".join(STREAM)
    whole = FrameTracker()
    assert whole.feed(data) == len(data)
    assert whole.at_boundary and whole.frames == len(STREAM) and not whole.close_seen
    small = b"".join(STREAM[:3])
    one = FrameTracker()
    for i in range(len(small)):
        one.feed(small[i : i + 1])
        assert one.at_boundary == (i + 1 in boundaries(STREAM[:3]))
    assert one.frames == 3


def test_frame_tracker_random_splits_stop_at_each_boundary() -> None:
    data = b"".join(STREAM)
    expected = sorted(boundaries(STREAM))
    rng = random.Random(7)
    for _ in range(50):
        tracker = FrameTracker()
        pos = 0
        found = []
        while pos < len(data):
            piece = data[pos : pos + rng.randint(1, 40000)]
            used = tracker.feed(piece, stop_at_boundary=True)
            assert 0 < used <= len(piece)
            pos += used
            if tracker.at_boundary:
                found.append(pos)
        assert found == expected


def test_frame_tracker_sees_close_frames() -> None:
    tracker = FrameTracker()
    tracker.feed(frame(b"hi", opcode=0x1))
    assert not tracker.close_seen
    tracker.feed(close_frame(mask=b"\x09\x08\x07\x06")[:7])
    assert tracker.close_seen and not tracker.at_boundary
    tracker.feed(close_frame(mask=b"\x09\x08\x07\x06")[7:])
    assert tracker.at_boundary


# -- the proxy's side: registry across reloads, leases on the cookie's server -------------------

from types import SimpleNamespace  # noqa: E402

from steelyard.core.backend import Backend  # noqa: E402
from steelyard.core.balancing.base import BalancerSettings, Server  # noqa: E402
from steelyard.core.clock import FakeClock  # noqa: E402
from steelyard.core.load import Outcome  # noqa: E402
from steelyard.net.http_sticky import StickyRegistry, sticky_lease  # noqa: E402


def sticky_cfg(cookie: str = "SY_SRV", ttl: float = 60.0, secret: str | None = None) -> object:
    return SimpleNamespace(cookie=cookie, ttl=ttl, secret=secret)


def test_registry_keeps_values_across_config_objects_until_the_secret_changes() -> None:
    registry = StickyRegistry()
    first = registry.get("api", sticky_cfg())
    value = first.value_for("s1")
    again = registry.get("api", sticky_cfg(cookie="OTHER", ttl=120.0))  # a reload
    assert again is first and again.cookie == "OTHER" and again.ttl == 120.0
    assert again.server_for(value, ["s1"]) == "s1"
    assert registry.get("web", sticky_cfg()).value_for("s1") != value  # per backend
    rotated = registry.get("api", sticky_cfg(secret="new"))
    assert rotated.server_for(value, ["s1"]) is None
    # a configured secret gives the same values in another process
    assert StickyRegistry().get("api", sticky_cfg(secret="new")).value_for(
        "s1"
    ) == rotated.value_for("s1")


def backend(max_conns: int = 0) -> Backend:
    return Backend(
        "api",
        [Server(n, "127.0.0.1", 8000 + i) for i, n in enumerate(("a", "b"))],
        BalancerSettings(algorithm="round_robin"),
        clock=FakeClock(),
        rng=random.Random(1),
        max_connections_per_server=max_conns,
    )


def test_sticky_lease_only_on_a_server_that_may_take_traffic() -> None:
    b = backend()
    lease = sticky_lease(b, "a")
    assert lease is not None and lease.server.name == "a" and b.servers["a"].active == 1
    lease.release(Outcome.OK)
    assert b.servers["a"].active == 0 and b.servers["a"].requests_total == 1
    assert sticky_lease(b, "zz") is None
    b.disable("a")
    assert sticky_lease(b, "a") is None
    b.enable("a")
    b.drain("a")
    assert sticky_lease(b, "a") is None
    b.enable("a")
    b.set_weight("a", 0)
    assert sticky_lease(b, "a") is None
    capped = backend(max_conns=1)
    held = sticky_lease(capped, "b")
    assert held is not None and sticky_lease(capped, "b") is None  # at its cap
    held.release(Outcome.OK)
    assert sticky_lease(capped, "b") is not None
