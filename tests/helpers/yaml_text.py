"""Positions in YAML test text, for asserting which token a config problem blames."""

from __future__ import annotations


def at(text: str, needle: str, nth: int = 0) -> str:
    """1-based "line:col" of the nth (0-based) occurrence of needle in text."""
    idx = -1
    for _ in range(nth + 1):
        idx = text.index(needle, idx + 1)
    line = text.count("\n", 0, idx) + 1
    col = idx - (text.rfind("\n", 0, idx) + 1) + 1
    return f"{line}:{col}"
