"""An index of members by a float key: the least key, ties broken in turn, in O(log n).

How this works: members are the indices 0..n-1 of a snapshot. Members with the same key share
a *level*: a sorted list of their indices. A heap holds the keys of the levels (each key
once), so the least key is the top of the heap; a level that emptied is dropped lazily when it
reaches the top. ``first(start)`` returns the least key and, among the members at that key, the
first one at or after ``start`` in cyclic order (a bisect in the level): exactly what a full
scan starting at ``start`` that keeps the first minimum would find. ``update(i, key)`` moves
one member between levels: a bisect and a list insert/delete (a memmove in C, cheap at the
sizes a backend has) plus at most one heap push. A heap key whose level is empty or gone is
dropped when it comes to the top; every level key is in the heap at least once.

The least-load balancers keep one of these in step with the live in-flight counts (and latency
estimates) through the load hooks the backend calls on acquire and release (see
base.LoadTracking), instead of scanning every server on every pick.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from heapq import heapify, heappop, heappush
from typing import Final

# levels whose key is no longer used stay in the heap until they reach its top; rebuild the
# heap when they outnumber the members this much (bounds memory whatever the key pattern)
_COMPACT_FACTOR: Final = 4
_COMPACT_SLACK: Final = 64
_INF: Final = float("inf")


class RotatingMinIndex:
    __slots__ = ("keys", "levels", "heap", "size")

    def __init__(self, keys: Sequence[float | None]) -> None:
        # keys[i] is None for an index that is not a member
        self.keys: list[float | None] = list(keys)
        self.levels: dict[float, list[int]] = {}
        self.size = 0
        for i, k in enumerate(self.keys):  # ascending i: every level list comes out sorted
            if k is not None:
                self.levels.setdefault(k, []).append(i)
                self.size += 1
        self.heap = list(self.levels)
        heapify(self.heap)

    def __len__(self) -> int:
        return self.size

    def update(self, i: int, key: float | None) -> None:
        """Set member i's key (None: i leaves the index)."""
        old = self.keys[i]
        if key == old:
            return
        self.keys[i] = key
        levels = self.levels
        if old is not None:
            members = levels[old]
            if len(members) == 1 and key is not None and key not in levels:
                # a member alone at its key moves to a new key (the usual case for float
                # costs): the level moves whole; the old key's heap entry is left to lapse
                del levels[old]
                levels[key] = members
                heappush(self.heap, key)
                if len(self.heap) > _COMPACT_FACTOR * len(self.keys) + _COMPACT_SLACK:
                    self._compact()
                return
            del members[bisect_left(members, i)]
            self.size -= 1
        if key is None:
            return
        self.size += 1
        members_new = levels.get(key)
        if members_new is None:
            levels[key] = [i]
            heappush(self.heap, key)
            if len(self.heap) > _COMPACT_FACTOR * len(self.keys) + _COMPACT_SLACK:
                self._compact()
        else:
            insort(members_new, i)

    def first(self, start: int) -> tuple[float, int]:
        """(least key, the member with it at or after ``start`` in cyclic order).

        The index must not be empty."""
        heap = self.heap
        levels = self.levels
        key = heap[0]
        members = levels.get(key)
        while not members:
            heappop(heap)
            if members is not None:
                del levels[key]
            key = heap[0]
            members = levels.get(key)
        k = bisect_left(members, start)
        return key, members[k] if k < len(members) else members[0]

    def _compact(self) -> None:
        # in place: callers (and LeastResponseTime's inlined first()) hold these objects
        live = {k: v for k, v in self.levels.items() if v}
        self.levels.clear()
        self.levels.update(live)
        self.heap[:] = live
        heapify(self.heap)

    def __repr__(self) -> str:
        live = sorted((k, v) for k, v in self.levels.items() if v)
        shown = ", ".join(f"{k:g}: {v[:8]}" for k, v in live[:4])
        return f"RotatingMinIndex(size={self.size}, levels={len(live)}, least=[{shown}])"


class FloatMinIndex:
    """The same answers as RotatingMinIndex, for keys that rarely tie (float costs).

    How this works: a heap of (key, member) entries, one pushed per update; an entry is valid
    while ``keys[member] == key``, and invalid ones are dropped when they reach the top (or by
    a compaction when they pile up). An update is one tuple and one heap push, no dict. The
    least key is the top; a tie with it can only sit in the connected part of the heap below
    the top whose entries equal it (a parent is never greater than its children), so the
    no-tie case costs two comparisons and a tie is resolved by walking that part: the first
    tied member at or after ``start`` in cyclic order, as a scan keeping the first minimum.
    Two sentinel entries (infinite key, member n, whose key is infinite) keep ``heap[1]`` and
    ``heap[2]`` in range; keys themselves must be finite.
    """

    __slots__ = ("n", "keys", "heap", "size", "limit")

    def __init__(self, keys: Sequence[float | None]) -> None:
        self.n = n = len(keys)
        self.keys: list[float | None] = [*keys, _INF]
        self.heap: list[tuple[float, int]] = []
        self.size = sum(1 for k in keys if k is not None)
        self.limit = _COMPACT_FACTOR * n + _COMPACT_SLACK
        self.compact()

    def __len__(self) -> int:
        return self.size

    def update(self, i: int, key: float | None) -> None:
        """Set member i's key (None: i leaves the index)."""
        keys = self.keys
        old = keys[i]
        if key == old:
            return
        keys[i] = key
        if key is None:
            self.size -= 1
            return
        if old is None:
            self.size += 1
        heap = self.heap
        heappush(heap, (key, i))
        if len(heap) > self.limit:
            self.compact()

    def first(self, start: int) -> tuple[float, int]:
        """(least key, the member with it at or after ``start`` in cyclic order).

        The index must not be empty."""
        heap = self.heap
        keys = self.keys
        key, i = heap[0]
        while keys[i] != key:
            heappop(heap)
            key, i = heap[0]
        if heap[1][0] == key or heap[2][0] == key:
            return key, self.tied(key, start)
        return key, i

    def tied(self, key: float, start: int) -> int:
        """Among the valid members at the least key (``key``), the first at or after start."""
        heap = self.heap
        keys = self.keys
        n = self.n
        best = -1
        best_distance = n
        todo = [0]
        while todo:
            j = todo.pop()
            k, i = heap[j]
            if k != key:
                continue
            if keys[i] == key:
                distance = i - start if i >= start else i - start + n
                if distance < best_distance:
                    best = i
                    best_distance = distance
            child = 2 * j + 1
            if child < len(heap):
                todo.append(child)
                if child + 1 < len(heap):
                    todo.append(child + 1)
        return best

    def compact(self) -> None:
        """Drop the invalid entries (in place: callers may hold the heap list)."""
        n = self.n
        live = [(k, i) for i, k in enumerate(self.keys[:n]) if k is not None]
        self.heap[:] = [*live, (_INF, n), (_INF, n)]
        heapify(self.heap)

    def __repr__(self) -> str:
        live = sorted((k, i) for i, k in enumerate(self.keys[: self.n]) if k is not None)
        shown = ", ".join(f"{k:g}: {i}" for k, i in live[:4])
        return f"FloatMinIndex(size={self.size}, entries={len(self.heap)}, least=[{shown}])"
