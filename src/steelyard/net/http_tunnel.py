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
        is cut: that is the only case without a close frame).

Other upgrades (no frames we know) end by closing both connections at once.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from steelyard.core.websocket import GOING_AWAY, FrameTracker, close_frame

if TYPE_CHECKING:
    from steelyard.net.http_proxy import Exchange

GRACE = 2.0  # seconds a closing tunnel waits for the close replies
REASON = b"going away"


def is_websocket(upgrade: bytes | None) -> bool:
    return upgrade is not None and upgrade.strip().lower() == b"websocket"


class WebSocketTunnel:
    __slots__ = (
        "ex",
        "c2s",
        "s2c",
        "closing",
        "to_server_sent",
        "to_client_sent",
        "server_replied",
        "client_replied",
        "timer",
    )

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.c2s = FrameTracker()  # client -> server (masked frames)
        self.s2c = FrameTracker()  # server -> client
        self.closing = False
        self.to_server_sent = False
        self.to_client_sent = False
        self.server_replied = False
        self.client_replied = False
        self.timer: Any = None

    # -- relaying (called for every read while the tunnel runs) ------------------------------

    def from_client(self, data: bytes) -> bytes:
        """Bytes from the client -> the bytes to send to the server."""
        if not self.closing:
            self.c2s.feed(data)
            return data
        if self.to_server_sent:
            self._watch(self.c2s, data)
            if self.c2s.close_seen:
                self.client_replied = True
                self._check_done()
            return b""
        n = self.c2s.feed(data, stop_at_boundary=True)
        if not self.c2s.at_boundary:
            return data
        out = data[:n] + self._frame_to_server()
        if n < len(data):
            self._watch(self.c2s, data[n:])
            self.client_replied = self.client_replied or self.c2s.close_seen
        self._check_done()
        return out

    def from_server(self, data: bytes) -> bytes:
        """Bytes from the server -> the bytes to send to the client."""
        if not self.closing:
            self.s2c.feed(data)
            return data
        if self.to_client_sent:
            self._watch(self.s2c, data)
            if self.s2c.close_seen:
                self.server_replied = True
                self._check_done()
            return b""
        n = self.s2c.feed(data, stop_at_boundary=True)
        if not self.s2c.at_boundary:
            return data
        out = data[:n] + self._frame_to_client()
        if n < len(data):
            self._watch(self.s2c, data[n:])
            self.server_replied = self.server_replied or self.s2c.close_seen
        self._check_done()
        return out

    # -- closing -----------------------------------------------------------------------------

    def go_away(self) -> None:
        """Send 1001 to both sides (each at its next frame boundary), then end the tunnel."""
        if self.closing:
            return
        self.closing = True
        ex = self.ex
        # a side that already sent its own close frame gets none from us
        client_closed = self.c2s.close_seen
        server_closed = self.s2c.close_seen
        if self.c2s.at_boundary:
            if not client_closed:
                ex.tunnel_write_upstream(self._frame_to_server())
            else:
                self.to_server_sent = True
        if self.s2c.at_boundary:
            if not server_closed:
                ex.tunnel_write_downstream(self._frame_to_client())
            else:
                self.to_client_sent = True
        self.client_replied = client_closed
        self.server_replied = server_closed
        self.timer = ex.loop.call_later(GRACE, self._grace_over)
        self._check_done()

    def _frame_to_server(self) -> bytes:
        self.to_server_sent = True
        self.c2s.close_seen = False  # from now on: the client's reply
        return close_frame(GOING_AWAY, REASON, mask=os.urandom(4))

    def _frame_to_client(self) -> bytes:
        self.to_client_sent = True
        self.s2c.close_seen = False  # from now on: the server's reply
        return close_frame(GOING_AWAY, REASON)

    def _watch(self, tracker: FrameTracker, data: bytes) -> None:
        if not tracker.close_seen:
            tracker.feed(data)

    def _check_done(self) -> None:
        if (
            self.to_server_sent
            and self.to_client_sent
            and self.server_replied
            and self.client_replied
        ):
            self._end()

    def _grace_over(self) -> None:
        self.timer = None
        if not (self.to_server_sent and self.to_client_sent):
            self.ex.tunnel_cut()  # a side stayed inside a frame: nothing else is possible
            return
        self._end()

    def _end(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.ex.loop.call_soon(self.ex.end_tunnel)

    def __repr__(self) -> str:
        return (
            f"WebSocketTunnel(closing={self.closing}, to_server_sent={self.to_server_sent}, "
            f"to_client_sent={self.to_client_sent}, server_replied={self.server_replied}, "
            f"client_replied={self.client_replied}, c2s={self.c2s!r}, s2c={self.s2c!r})"
        )
