"""A cheaper table of uvloop's transports by file descriptor.

uvloop registers every transport it makes in `Loop._transports`, a
`weakref.WeakValueDictionary` keyed by file descriptor. It reads the table in one place:
`add_reader`/`add_writer` refuse a descriptor that a live transport owns. The
dictionary is pure Python: storing a transport builds a `KeyedRef` in Python code, and
freeing the transport later runs a Python callback that removes it. callgrind put that at
about 6,400 instructions per accepted connection, ~7% of a `Connection: close` request
(bench/PROFILE.md, 2026-11-27, night).

`FdTransports` keeps the same answer for less: a plain dict from descriptor to a
callback-free weak reference. A dead reference reads as a missing key. Nothing is removed
when a transport dies; the next transport on the same descriptor overwrites the entry, so the
table never holds more entries than the process has had descriptors open at once.

uvloop reads `weakref.WeakValueDictionary` once, into a C variable, when `uvloop.loop` is
first imported. `import_uvloop()` swaps the name for that one import and puts it back; if
uvloop was imported earlier, the table stays uvloop's own and nothing else changes. The
standard modules uvloop imports are imported first, so that none of them is first imported
while the name is swapped.
"""

from __future__ import annotations

# What uvloop imports, imported before the swap: a module first imported while it lasts and
# making a WeakValueDictionary at import time (logging does) would get an FdTransports
import asyncio  # noqa: F401
import concurrent.futures.thread  # noqa: F401
import logging  # noqa: F401
import queue  # noqa: F401
import ssl  # noqa: F401
import subprocess  # noqa: F401
import sys
import weakref
from types import ModuleType
from typing import Any

# set by the first FdTransports(): the running process' uvloop uses this table
installed = False


class FdTransports:
    """The subset of a WeakValueDictionary[int, transport] that uvloop uses."""

    def __init__(self) -> None:
        global installed
        installed = True
        self.refs: dict[Any, weakref.ref[Any]] = {}

    def __setitem__(self, fd: Any, transport: Any) -> None:
        self.refs[fd] = weakref.ref(transport)

    def __getitem__(self, fd: Any) -> Any:
        transport = self.refs[fd]()  # KeyError: never had a transport
        if transport is None:
            raise KeyError(fd)
        return transport

    def __len__(self) -> int:
        return len(self.refs)


def import_uvloop() -> ModuleType:
    """`import uvloop`, with FdTransports as the table of the loops it makes."""
    if "uvloop.loop" in sys.modules:
        import uvloop

        return uvloop
    original = weakref.WeakValueDictionary
    weakref.WeakValueDictionary = FdTransports  # type: ignore[misc,assignment]
    try:
        import uvloop
    finally:
        weakref.WeakValueDictionary = original  # type: ignore[misc]
    return uvloop
