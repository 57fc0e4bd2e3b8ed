"""Closing WebSocket tunnels politely: a 1001 close frame to both sides, not a reset.

How this works. After a `101` the proxy relays bytes both ways (net/http_proxy.py). For a
WebSocket tunnel it also follows the frame boundaries of both directions (core.websocket
FrameTracker; headers only, payloads are skipped), so that when the tunnel must end -- drain
timeout or removal of its server, shutdown_timeout on SIGTERM, a listener removed by a reload,
the tunnel idle timeout -- `go_away()` can send each side a close frame, code 1001 "going
away" (RFC 6455 §7.4.1), between two frames:

    RUNNING --go_away--> CLOSING: per direction, the frame in flight (if any) is relayed to its
        end, then the close frame goes in its place (masked toward the server, §5.3: we are
        its client), and nothing more is relayed that way. What arrives afterwards is only
        watched for the peer's own close frame (its reply, §5.5.1) or its EOF.
    CLOSING --both replies seen, or GRACE seconds--> the tunnel ends: both connections are
        closed after their buffers drain (a side still inside a frame when GRACE runs out
        is cut: that is the only case without a close frame). On SIGTERM the close frames
        go out min(GRACE, shutdown_timeout/2) before the deadline and that is the grace,
        so the process still exits on time.

Other upgrades (no frames we know) end by closing both connections at once.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Final

from steelyard.core.websocket import GOING_AWAY, FrameTracker, close_frame

if TYPE_CHECKING:
    from steelyard.net.http_proxy import Exchange

GRACE: Final = 2.0  # seconds a closing tunnel waits for the close replies
REASON: Final = b"going away"


def is_websocket(upgrade: bytes | None) -> bool:
    return upgrade is not None and upgrade.strip().lower() == b"websocket"


class _Way:
    """One direction of a tunnel. `sent`: our close frame went out on it (in its sender's
    place); `replied`: the sender's own close frame was seen after that (its reply)."""

    __slots__ = ("tracker", "masked", "sent", "replied")

    def __init__(self, masked: bool) -> None:
        self.tracker = FrameTracker()
        self.masked = masked  # toward the server: we are its client (RFC 6455 §5.3)
        self.sent = False
        self.replied = False

    def close_frame(self) -> bytes:
        self.sent = True
        self.tracker.close_seen = False  # from now on: the sender's reply
        return close_frame(GOING_AWAY, REASON, mask=os.urandom(4) if self.masked else None)

    def __repr__(self) -> str:
        return f"_Way(sent={self.sent}, replied={self.replied}, tracker={self.tracker!r})"


class WebSocketTunnel:
    __slots__ = ("ex", "c2s", "s2c", "closing", "timer")

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.c2s = _Way(masked=True)  # client -> server
        self.s2c = _Way(masked=False)  # server -> client
        self.closing = False
        self.timer: Any = None

    # -- relaying (called for every read while the tunnel runs) ------------------------------

    def from_client(self, data: bytes) -> bytes:
        """Bytes from the client -> the bytes to send to the server."""
        if not self.closing:
            self.c2s.tracker.feed(data)
            return data
        return self._relay_closing(self.c2s, data)

    def from_server(self, data: bytes) -> bytes:
        """Bytes from the server -> the bytes to send to the client."""
        if not self.closing:
            self.s2c.tracker.feed(data)
            return data
        return self._relay_closing(self.s2c, data)

    def _relay_closing(self, way: _Way, data: bytes) -> bytes:
        tracker = way.tracker
        if way.sent:
            self._watch(tracker, data)
            if tracker.close_seen:
                way.replied = True
                self._check_done()
            return b""
        n = tracker.feed(data, stop_at_boundary=True)
        if not tracker.at_boundary:
            return data
        out = data[:n] + way.close_frame()
        if n < len(data):
            self._watch(tracker, data[n:])
            way.replied = way.replied or tracker.close_seen
        self._check_done()
        return out

    # -- closing -----------------------------------------------------------------------------

    def go_away(self, grace: float = GRACE) -> None:
        """Send 1001 to both sides (each at its next frame boundary), then end the tunnel
        when both replied or after `grace` seconds."""
        if self.closing:
            return
        self.closing = True
        ex = self.ex
        for way, write in (
            (self.c2s, ex.tunnel_write_upstream),
            (self.s2c, ex.tunnel_write_downstream),
        ):
            # a side that already sent its own close frame gets none from us
            closed = way.tracker.close_seen
            if way.tracker.at_boundary:
                if not closed:
                    write(way.close_frame())
                else:
                    way.sent = True
            way.replied = closed
        self.timer = ex.loop.call_later(grace, self._grace_over)
        self._check_done()

    def _watch(self, tracker: FrameTracker, data: bytes) -> None:
        if not tracker.close_seen:
            tracker.feed(data)

    def _check_done(self) -> None:
        c2s, s2c = self.c2s, self.s2c
        if c2s.sent and s2c.sent and c2s.replied and s2c.replied:
            self._end()

    def _grace_over(self) -> None:
        self.timer = None
        if not (self.c2s.sent and self.s2c.sent):
            self.ex.tunnel_cut()  # a side stayed inside a frame: nothing else is possible
            return
        self._end()

    def _end(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.ex.loop.call_soon(self.ex.end_tunnel)

    def __repr__(self) -> str:
        return f"WebSocketTunnel(closing={self.closing}, c2s={self.c2s!r}, s2c={self.s2c!r})"
