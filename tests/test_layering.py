"""The sans-IO core imports no I/O: nothing under src/steelyard/core imports asyncio, socket
or ssl (DESIGN.md, Layers). Checked on the AST of every module, so a lazy import inside a
function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "src" / "steelyard" / "core"
FORBIDDEN = {"asyncio", "socket", "ssl"}


def io_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in {"__import__", "import_module"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        else:
            continue
        found += [
            f"{name} (line {node.lineno})" for name in names if name.split(".")[0] in FORBIDDEN
        ]
    return found


MODULES = sorted(CORE.rglob("*.py"))


def test_core_has_modules() -> None:
    assert CORE.is_dir()
    assert any(p.name == "base.py" for p in MODULES)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_imports_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert io_imports(tree) == []


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import socket as s",
        "from ssl import SSLContext",
        "from asyncio.events import AbstractEventLoop",
        "def f():\n    import socket",
        "import os, ssl",
        "importlib.import_module('asyncio')",
        "__import__('socket')",
    ],
)
def test_the_checker_catches(source: str) -> None:
    assert io_imports(ast.parse(source))


@pytest.mark.parametrize(
    "source",
    ["import selectors", "from . import socket", "import socketserver_like", "x = 'asyncio'"],
)
def test_the_checker_allows(source: str) -> None:
    assert io_imports(ast.parse(source)) == []
