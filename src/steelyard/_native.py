"""Which build of the data path runs: the mypyc-compiled modules or their Python sources.

setup.py compiles the modules of the request path (its COMPILED list) to C extensions with
mypyc; CPython's import system prefers an extension module to the .py file beside it. Two
cases run the sources instead:

* `STEELYARD_PURE_PYTHON` set to anything but "" or "0": to debug, or to compare the two;
* in a source checkout (a pyproject.toml two directories above this package), a compiled
  module older than its .py file: it was built before the last edit, and loading it would run
  old code. A warning says so (`make build` compiles again).

The choice is made once, when `steelyard` is first imported and before any of its submodules
is: a finder placed first on sys.meta_path loads `steelyard.*` from source files only. The
compiled modules import one another, so it is all or nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).resolve().parent
EXTENSION = importlib.machinery.EXTENSION_SUFFIXES[0]  # e.g. ".cpython-311-x86_64-linux-gnu.so"
# mypyc puts the compiled code of all the modules in one library beside the package (setup.py's
# group_name); each module's own extension is a small shim that is not rebuilt when its
# source changes, so the library's time is the build's time
GROUP = "steelyard__mypyc"


class SourceOnly(importlib.abc.MetaPathFinder):
    """Finds `steelyard.*` modules among .py files only, never an extension module."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("steelyard.") or path is None:
            return None
        for entry in path:
            finder = importlib.machinery.FileFinder(
                entry,
                (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES),
            )
            spec = finder.find_spec(fullname, target)
            if spec is not None:
                return spec
        return None


def compiled_modules(package: Path = PACKAGE) -> list[Path]:
    """The extension modules built from this package's sources (each beside its .py)."""
    return sorted(p for p in package.rglob("*" + EXTENSION) if p.with_name(source_name(p)).exists())


def source_name(extension: Path) -> str:
    return extension.name[: -len(EXTENSION)] + ".py"


def stale(package: Path = PACKAGE) -> list[Path]:
    """In a source checkout, the compiled modules older than their .py files."""
    if not (package.parent.parent / "pyproject.toml").exists():
        return []  # an installed package: its files' times say nothing
    group = package.parent / (GROUP + EXTENSION)
    built = group.stat().st_mtime if group.exists() else 0.0
    return [
        ext
        for ext in compiled_modules(package)
        if ext.with_name(source_name(ext)).stat().st_mtime > max(built, ext.stat().st_mtime)
    ]


def _choose(found: list[Path]) -> tuple[str, str | None]:
    """(build, warning): build is "compiled" or "python"."""
    if not found or os.environ.get("STEELYARD_PURE_PYTHON", "") not in ("", "0"):
        return "python", None
    old = stale()
    if old:
        names = ", ".join(str(p.relative_to(PACKAGE.parent)) for p in old[:3])
        more = f" and {len(old) - 3} more" if len(old) > 3 else ""
        return "python", (
            f"compiled modules older than their sources ({names}{more}): running the Python "
            "sources instead; `make build` compiles them again"
        )
    return "compiled", None


_found = compiled_modules()
BUILD, WARNING = _choose(_found)
if BUILD == "python" and _found and not any(isinstance(f, SourceOnly) for f in sys.meta_path):
    sys.meta_path.insert(0, SourceOnly())
