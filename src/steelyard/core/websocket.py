"""WebSocket close frames (RFC 6455 §5.5.1) for tunnels cut on drain, reload or shutdown.

A frame to the client is unmasked; a frame to the server must be masked (§5.3), since the
proxy speaks to the server as a client would.
"""

from __future__ import annotations

import struct

GOING_AWAY = 1001


def close_frame(code: int = GOING_AWAY, reason: bytes = b"", *, mask: bytes | None = None) -> bytes:
    payload = struct.pack("!H", code) + reason[:123]
    if mask is None:
        return bytes((0x88, len(payload))) + payload
    if len(mask) != 4:
        raise ValueError("mask must be 4 bytes")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x88, 0x80 | len(payload))) + mask + masked
