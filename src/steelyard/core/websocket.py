"""WebSocket close frames (RFC 6455 §5.5.1) for tunnels cut on drain, reload or shutdown.

A frame to the client is unmasked; a frame to the server must be masked (§5.3), since the
proxy speaks to the server as a client would.
"""

from __future__ import annotations

import struct
from typing import Final

GOING_AWAY: Final = 1001


def close_frame(code: int = GOING_AWAY, reason: bytes = b"", *, mask: bytes | None = None) -> bytes:
    payload = struct.pack("!H", code) + reason[:123]
    if mask is None:
        return bytes((0x88, len(payload))) + payload
    if len(mask) != 4:
        raise ValueError("mask must be 4 bytes")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x88, 0x80 | len(payload))) + mask + masked


class FrameTracker:
    """Follows frame boundaries in one direction of a WebSocket byte stream (RFC 6455 §5.2),
    without buffering payloads: only the 2-14 header bytes of a frame are looked at. The
    proxy needs the boundaries to insert a close frame between two frames, never inside one
    (control frames may sit between the fragments of a message, §5.4)."""

    __slots__ = ("_head", "remaining", "frames", "close_seen")

    def __init__(self) -> None:
        self._head = b""  # a frame header split across reads
        self.remaining = 0  # payload bytes of the current frame still to come
        self.frames = 0
        self.close_seen = False

    @property
    def at_boundary(self) -> bool:
        return not self.remaining and not self._head

    def feed(self, data: bytes, *, stop_at_boundary: bool = False) -> int:
        """Account for `data`; returns how many bytes were consumed: all of them, or with
        `stop_at_boundary`, those up to the first frame boundary."""
        i = 0
        n = len(data)
        while i < n:
            if self.remaining:
                take = min(self.remaining, n - i)
                self.remaining -= take
                i += take
                if stop_at_boundary and not self.remaining:
                    return i
                continue
            head = self._head + data[i : i + 14]
            size = _header_size(head)
            if size is None or len(head) < size:
                self._head = head
                return n
            i += size - len(self._head)
            self._head = b""
            self.frames += 1
            if head[0] & 0x0F == 0x8:
                self.close_seen = True
            self.remaining = _payload_length(head)
            if stop_at_boundary and not self.remaining:
                return i
        return n

    def __repr__(self) -> str:
        return (
            f"FrameTracker(frames={self.frames}, remaining={self.remaining}, "
            f"partial_head={len(self._head)}, close_seen={self.close_seen})"
        )


def _header_size(head: bytes) -> int | None:
    if len(head) < 2:
        return None
    length = head[1] & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    if head[1] & 0x80:
        size += 4
    return size


def _payload_length(head: bytes) -> int:
    length = head[1] & 0x7F
    if length == 126:
        return int.from_bytes(head[2:4], "big")
    if length == 127:
        return int.from_bytes(head[2:10], "big")
    return length
