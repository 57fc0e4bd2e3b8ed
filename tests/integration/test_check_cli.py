"""`steelyard check -c FILE` (SPEC §1) as a user runs it: a subprocess, its stdout and exit code."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import trustme

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("steelyard.cli") is None, reason="steelyard.cli not written yet"
)

GOOD = """\
version: 1
listeners:
  - name: web
    bind: 127.0.0.1:0
    routes:
      - {match: {path_prefix: /}, backend: api}
backends:
  api:
    servers: [{address: 127.0.0.1:9000}]
"""


def check(
    *args: str, cwd: pathlib.Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "steelyard", "check", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_valid_file_exits_0(tmp_path: pathlib.Path) -> None:
    (tmp_path / "lb.yaml").write_text(GOOD)
    proc = check("-c", "lb.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == "lb.yaml: ok\n"


def test_default_file_is_steelyard_yaml(tmp_path: pathlib.Path) -> None:
    (tmp_path / "steelyard.yaml").write_text(GOOD)
    proc = check(cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_problem_printed_with_file_as_given_and_exit_1(tmp_path: pathlib.Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf/lb.yaml").write_text(
        "version: 1\n"
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:8080\n"
        "    routes:\n"
        "      - {match: {path_prefix: /}, backend: apii}\n"
        "backends:\n"
        "  api:\n"
        "    algoritm: round_robin\n"
        "    timeouts: {connect: 5x}\n"
        "    servers: [{address: 127.0.0.1:9000}]\n"
    )
    proc = check("-c", "conf/lb.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "conf/lb.yaml:6:44: unknown backend 'apii' (did you mean 'api'?)",
        "conf/lb.yaml:9:5: unknown key 'algoritm' in backends.api (did you mean 'algorithm'?)",
        "conf/lb.yaml:10:25: timeouts.connect: invalid duration '5x': use a number with a unit "
        "ms, s, m, h or d (e.g. 250ms, 5s, 2m, 1h30m)",
    ]


def test_yaml_syntax_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "lb.yaml").write_text("version: 1\nlisteners: [\n")
    proc = check("-c", "lb.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    (line,) = proc.stdout.splitlines()
    assert line.startswith("lb.yaml:3:1: YAML syntax error")


def test_missing_file(tmp_path: pathlib.Path) -> None:
    proc = check("-c", "nope.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.startswith("nope.yaml:1:1: cannot read config file")


def test_strict_fails_on_warnings(tmp_path: pathlib.Path) -> None:
    (tmp_path / "lb.yaml").write_text(
        GOOD + "  unused:\n    servers: [{address: 127.0.0.1:9001}]\n"
    )
    warning = "lb.yaml:10:3: warning: backend 'unused' is not used by any listener or route\n"
    lax = check("-c", "lb.yaml", cwd=tmp_path)
    assert (lax.returncode, lax.stdout) == (0, warning)
    strict = check("-c", "lb.yaml", "--strict", cwd=tmp_path)
    assert (strict.returncode, strict.stdout) == (1, warning)


def test_env_interpolation_from_the_process_environment(tmp_path: pathlib.Path) -> None:
    (tmp_path / "lb.yaml").write_text(GOOD.replace("127.0.0.1:9000", "'${UPSTREAM}'"))
    proc = check("-c", "lb.yaml", cwd=tmp_path, env={"UPSTREAM": "127.0.0.1:9000"})
    assert proc.returncode == 0, proc.stdout
    env = {k: v for k, v in os.environ.items() if k != "UPSTREAM"}
    proc = subprocess.run(
        [sys.executable, "-m", "steelyard", "check", "-c", "lb.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout == (
        "lb.yaml:9:26: environment variable UPSTREAM is not set "
        "(use ${UPSTREAM:-default} to give a default)\n"
    )


def test_tls_files_checked_relative_to_the_config(tmp_path: pathlib.Path) -> None:
    conf = tmp_path / "etc"
    (conf / "certs").mkdir(parents=True)
    cert = trustme.CA().issue_cert("example.com")
    cert.cert_chain_pems[0].write_to_path(str(conf / "certs/site.pem"))
    cert.private_key_pem.write_to_path(str(conf / "certs/site.key"))
    tls = "    tls: {certificates: [{cert: certs/site.pem, key: certs/site.key}]}\n"
    text = GOOD.replace("    routes:\n", tls + "    routes:\n")
    (conf / "lb.yaml").write_text(text)
    proc = check("-c", "etc/lb.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    (conf / "certs/site.key").unlink()
    proc = check("-c", "etc/lb.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.startswith("etc/lb.yaml:5:54: key: file 'certs/site.key' not found")
