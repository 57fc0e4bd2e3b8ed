"""The compiled data path (setup.py, mypyc) and the choice between it and the sources."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import steelyard
from steelyard import _native
from steelyard._native import EXTENSION, GROUP, compiled_modules, stale

SETUP = Path(__file__).resolve().parents[2] / "setup.py"


def test_the_build_is_the_one_make_asked_for() -> None:
    """`make test` runs the suite twice and says which build each run must see: a compiled
    run that silently fell back to the sources would otherwise pass unnoticed."""
    expected = os.environ.get("STEELYARD_EXPECT_BUILD")
    if expected is None:
        pytest.skip("STEELYARD_EXPECT_BUILD is set by `make test`")
    assert expected == steelyard.BUILD, _native.WARNING or (
        "no compiled modules: did `make build` fail? (.venv/build.log)"
    )


def test_every_compiled_source_named_in_setup_exists() -> None:
    text = SETUP.read_text()
    names = re.findall(r'"(src/steelyard/[^"]+)"', text)
    assert len(names) >= 8
    for name in names:
        assert (SETUP.parent / name).is_file(), name


def _module_file(env: dict[str, str], module: str = "steelyard.net.http_proxy") -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import {module} as m, steelyard; print(m.__file__, steelyard.BUILD)",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_pure_python_switch_loads_the_sources() -> None:
    env = {**os.environ, "STEELYARD_PURE_PYTHON": "1"}
    path, build = _module_file(env).split()
    assert path.endswith("http_proxy.py")
    assert build == "python"


def test_without_the_switch_the_build_present_is_loaded() -> None:
    env = {k: v for k, v in os.environ.items() if k != "STEELYARD_PURE_PYTHON"}
    path, build = _module_file(env).split()
    if compiled_modules() and not stale():
        assert path.endswith("http_proxy" + EXTENSION)
        assert build == "compiled"
    else:
        assert path.endswith("http_proxy.py")
        assert build == "python"
    env["STEELYARD_PURE_PYTHON"] = "0"  # "0" is not a request for the sources
    assert _module_file(env).split()[1] == build


def test_pure_python_still_finds_uncompiled_modules_and_packages() -> None:
    env = {**os.environ, "STEELYARD_PURE_PYTHON": "1"}
    path, _ = _module_file(env, "steelyard.config").split()
    assert path.endswith("config/__init__.py")


def _tree(tmp_path: Path, checkout: bool = True) -> Path:
    """A package `steelyard` with module a (compiled) and b (source only)."""
    if checkout:
        (tmp_path / "pyproject.toml").write_text("")
    pkg = tmp_path / "src" / "steelyard"
    (pkg / "sub").mkdir(parents=True)
    for name in ("a.py", "b.py", "sub/c.py", "a" + EXTENSION, "sub/c" + EXTENSION):
        (pkg / name).write_text("")
    (pkg / ("orphan" + EXTENSION)).write_text("")  # no .py beside it: not ours
    (tmp_path / "src" / (GROUP + EXTENSION)).write_text("")
    for f in [*pkg.rglob("*"), tmp_path / "src" / (GROUP + EXTENSION)]:
        os.utime(f, (1000, 1000))
    return pkg


def test_compiled_modules_are_the_extensions_beside_a_source(tmp_path: Path) -> None:
    pkg = _tree(tmp_path)
    assert [p.relative_to(pkg) for p in compiled_modules(pkg)] == [
        Path("a" + EXTENSION),
        Path("sub/c" + EXTENSION),
    ]


def test_stale_when_a_source_is_newer_than_the_build(tmp_path: Path) -> None:
    pkg = _tree(tmp_path)
    assert stale(pkg) == []
    os.utime(pkg / "sub" / "c.py", (2000, 2000))
    assert stale(pkg) == [pkg / "sub" / ("c" + EXTENSION)]
    # the shim is older, but the library that holds the code was built after the edit
    os.utime(tmp_path / "src" / (GROUP + EXTENSION), (3000, 3000))
    assert stale(pkg) == []
    os.utime(pkg / "b.py", (4000, 4000))  # not compiled: does not matter
    assert stale(pkg) == []


def test_an_installed_package_is_never_stale(tmp_path: Path) -> None:
    pkg = _tree(tmp_path, checkout=False)
    os.utime(pkg / "a.py", (2000, 2000))
    assert stale(pkg) == []


def test_choose_says_why_it_runs_the_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = _tree(tmp_path)
    monkeypatch.delenv("STEELYARD_PURE_PYTHON", raising=False)
    monkeypatch.setattr(_native, "PACKAGE", pkg)
    monkeypatch.setattr(_native, "stale", lambda: stale(pkg))
    found = compiled_modules(pkg)
    assert _native._choose(found) == ("compiled", None)
    assert _native._choose([]) == ("python", None)
    monkeypatch.setenv("STEELYARD_PURE_PYTHON", "yes")
    assert _native._choose(found) == ("python", None)
    monkeypatch.setenv("STEELYARD_PURE_PYTHON", "")
    os.utime(pkg / "a.py", (2000, 2000))
    build, warning = _native._choose(found)
    assert build == "python"
    assert warning is not None
    assert f"steelyard/a{EXTENSION}" in warning
    assert "make build" in warning
