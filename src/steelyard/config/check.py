"""`steelyard check -c FILE`: print every problem as FILE:LINE:COL: message."""

from __future__ import annotations

import sys
from typing import TextIO


def check_command(path: str, strict: bool = False, *, out: TextIO | None = None) -> int:
    """Validate `path`; print errors and warnings to stdout; return the exit code (0 or 1).

    The FILE printed is `path` as given. Warnings fail the check only when `strict`.
    """
    from steelyard.config.loader import analyse_file

    stream = out if out is not None else sys.stdout
    _config, errors, warnings = analyse_file(path)
    problems = sorted([*errors, *warnings], key=lambda p: (p.line, p.col))
    for p in problems:
        print(str(p), file=stream)
    if errors or (strict and warnings):
        return 1
    if not problems:
        print(f"{path}: ok", file=stream)
    return 0
