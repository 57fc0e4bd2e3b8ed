"""Path normalization for `normalize_path: true` listeners (RFC 3986 §6.2.2), so that routes
match the resource a server will serve, whatever spelling the client chose.

How this works, on the path of an origin-form target (the query is left alone):

1. percent-encodings are checked (a `%` not followed by two hex digits makes the path
   malformed: None); those of unreserved characters (ALPHA, DIGIT, `-._~`, §2.3) are decoded,
   the others are kept, their hex in upper case (`%2f` -> `%2F`: an encoded slash stays a
   character of a segment, never a separator);
2. runs of `/` are merged into one (as nginx's `merge_slashes on`);
3. dot segments are removed (§5.2.4: `/a/./b/../c` -> `/a/c`; `..` never climbs above the
   root).

So `/%61dmin`, `/./admin`, `//admin` and `/x/../admin` all become `/admin`. Without the
option, routes see the path as received, as HAProxy does.
"""

from __future__ import annotations

_HEX = b"0123456789abcdefABCDEF"
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalize_path(path: bytes) -> bytes | None:
    """The normalized path, or None when a percent-encoding is malformed. `path` starts with
    '/' (origin form, without the query)."""
    if b"%" in path:
        decoded = _percent(path)
        if decoded is None:
            return None
        path = decoded
    while b"//" in path:
        path = path.replace(b"//", b"/")
    if b"/." not in path:
        return path  # no dot segment possible: the common case stops here
    return _remove_dot_segments(path)


def _percent(path: bytes) -> bytes | None:
    out = bytearray()
    i = 0
    n = len(path)
    while i < n:
        c = path[i]
        if c != 0x25:  # '%'
            out.append(c)
            i += 1
            continue
        pair = path[i + 1 : i + 3]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            return None
        value = int(pair, 16)
        if value in _UNRESERVED:
            out.append(value)
        else:
            out += b"%" + pair.upper()
        i += 3
    return bytes(out)


def _remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 §5.2.4 for an absolute path (no empty segments left by then)."""
    segments = path.split(b"/")[1:]  # path starts with '/'
    out: list[bytes] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == b".":
            if last:
                out.append(b"")  # "/a/." -> "/a/"
        elif seg == b"..":
            if out:
                out.pop()
            if last:
                out.append(b"")  # "/a/b/.." -> "/a/"
        else:
            out.append(seg)
    return b"/" + b"/".join(out)
