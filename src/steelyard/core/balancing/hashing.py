"""Stable hashes for the hash-based balancers.

Python's built-in ``hash()`` is salted per process (PYTHONHASHSEED), so two Steelyard instances
would disagree on where a key goes. Everything here is BLAKE2b (RFC 7693) or SHAKE256
(FIPS 202) from hashlib, whose output depends only on the bytes fed in: the same server set
sends the same key to the same server in every process and on every machine. Integers are
always read little-endian.

Distinct ``person`` strings give independent hash functions from the one primitive (BLAKE2's
personalization parameter), which is what Maglev needs for its offset and skip.
"""

from __future__ import annotations

import sys
from array import array
from hashlib import blake2b, shake_256
from typing import Final

_KEY: Final = b"steelyard-key"
_RING: Final = b"steelyard-ring"
_OFFSET: Final = b"maglev-offset"
_SKIP: Final = b"maglev-skip"
_BIG_ENDIAN: Final = sys.byteorder == "big"


# an initialised hasher that is only ever copied, never updated: copying skips parameter
# parsing and is about twice as fast as a fresh blake2b(...) for short keys. Hot paths inline
# hash64 as KEY_HASHER.copy(), update(data), int.from_bytes(digest(), "little").
KEY_HASHER: Final = blake2b(digest_size=8, person=_KEY)


def hash64(data: bytes) -> int:
    """A stable 64-bit hash of a request key (client IP, header value, ...)."""
    h = KEY_HASHER.copy()
    h.update(data)
    return int.from_bytes(h.digest(), "little")


def name_hash(name: str, person: bytes) -> int:
    """A stable 64-bit hash of a server name; ``person`` (<= 16 bytes) selects the function."""
    return int.from_bytes(
        blake2b(name.encode("utf-8"), digest_size=8, person=person).digest(), "little"
    )


def maglev_offset_skip(name: str, table_size: int) -> tuple[int, int]:
    """Maglev's (offset, skip) for one server: two independent hashes of its name.

    offset in [0, M), skip in [1, M); with M prime every skip is coprime to M, so
    offset + j * skip (mod M) visits every slot exactly once (Eisenbud et al. 2016, §3.4).
    """
    offset = name_hash(name, _OFFSET) % table_size
    skip = name_hash(name, _SKIP) % (table_size - 1) + 1
    return offset, skip


_TWO_POW_M52: Final = 2.0**-52
# byte 6 of a little-endian double: keep the low nibble (mantissa), force the high nibble to
# 0xF (exponent low bits); byte 7 = 0x3F. Together: exponent 0x3FF, a double in [1, 2).
_EXP_LOW: Final = bytes(0xF0 | (b & 0x0F) for b in range(256))


def key_position(h: int) -> float:
    """Map a 64-bit hash to a ring position in [1, 2) (the top 52 bits, exactly)."""
    return 1.0 + (h >> 12) * _TWO_POW_M52


def ring_point_bytes(name: str, count: int, tag: int) -> bytes:
    """``count`` ring points of one server as little-endian IEEE doubles in [1, 2).

    Each point is 8 stable random bytes from SHAKE256 of the name (FIPS 202; an extendable
    output function, so one C call yields all the points where ketama hashes MD5 once per 4).
    The exponent bits are forced so the double lies in [1, 2), where double order equals mantissa order; the low 16 mantissa bits
    carry ``tag`` (the server's index), so one float sort orders the ring and still tells the
    owner of every point (CPython sorts floats much faster than 64-bit ints). That leaves 36
    random bits of position per point.

    The points are a prefix of one endless stream per name (an XOF's shorter output is a prefix
    of its longer output), so a server whose weight grows keeps every point it had and only
    gains new ones: keys move only towards it.
    """
    if count <= 0:
        return b""
    stream = shake_256(_RING + b"\x00" + name.encode("utf-8")).digest(count * 8)
    buf = bytearray(stream)
    buf[0::8] = bytes((tag & 0xFF,)) * count
    buf[1::8] = bytes(((tag >> 8) & 0xFF,)) * count
    buf[6::8] = bytes(buf[6::8]).translate(_EXP_LOW)
    buf[7::8] = b"\x3f" * count
    return bytes(buf)


def doubles_from_le(data: bytes) -> array[float]:
    """Little-endian IEEE doubles -> array('d') on any machine."""
    out = array("d")
    out.frombytes(data)
    if _BIG_ENDIAN:
        out.byteswap()
    return out
