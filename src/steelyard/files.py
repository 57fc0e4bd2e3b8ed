"""Open-file limits: raise the soft limit at start-up, and warn while running when the open
file descriptors near it (each proxied connection takes two; at the limit libuv accepts new
connections and closes them at once, without a word)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("steelyard")

WARN_AT = 0.9  # share of the soft limit in use that is worth a warning
WARN_EVERY = 60.0  # seconds between two warnings

# a proxied connection takes two file descriptors; below this many the process serves fewer
# than ~2000 connections at once and says so at start-up
LOW_FILE_LIMIT = 4096


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as HAProxy does for itself: shells and
    many service managers start processes with a soft limit of 1024, about 500 proxied
    connections, past which libuv accepts new connections and closes them at once. Returns
    (before, after); (-1, -1) where the limit cannot be read."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux/macOS
        return -1, -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # e.g. macOS caps it lower than the hard limit says
            return soft, soft
        return soft, target
    return soft, soft


def open_files() -> int:
    """File descriptors open in this process, or -1 where that is not cheap to know (Linux
    6.2+ reports their count as the size of /proc/self/fd, without listing it)."""
    try:
        n = os.stat("/proc/self/fd").st_size
    except OSError:
        return -1
    return n if n > 0 else -1


def soft_limit() -> int:
    try:
        import resource
    except ImportError:  # pragma: no cover
        return -1
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return -1 if soft == resource.RLIM_INFINITY else soft


class FileLimitWatch:
    """Called by the engine's tick: at most one check a second, at most one warning a minute."""

    __slots__ = ("checked_at", "warned_at")

    def __init__(self) -> None:
        self.checked_at = float("-inf")
        self.warned_at = float("-inf")

    def check(self, now: float) -> None:
        if now - self.checked_at < 1.0:
            return
        self.checked_at = now
        used = open_files()
        limit = soft_limit()
        if used < 0 or limit <= 0 or used < WARN_AT * limit:
            return
        if now - self.warned_at < WARN_EVERY:
            return
        self.warned_at = now
        log.warning(
            "%d of %d file descriptors in use: at the limit new connections are closed at "
            "once; raise the open-file limit (ulimit -n, LimitNOFILE=)",
            used, limit,
        )  # fmt: skip
