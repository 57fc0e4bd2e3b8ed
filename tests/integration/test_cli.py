"""The command line as a user runs it: a real `python -m steelyard` process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from steelyard import BUILD, __version__

PY = sys.executable


def steelyard(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "steelyard", *args], capture_output=True, text=True, timeout=timeout
    )


def test_version() -> None:
    result = steelyard("version")
    assert result.returncode == 0
    first, second = result.stdout.splitlines()
    assert first == f"steelyard {__version__}"
    # the subprocess sees the same files and environment as this test, so the same build
    expected = {"compiled": "data path: compiled (mypyc)", "python": "data path: Python"}
    assert second == expected[BUILD]


def test_no_command_is_a_usage_error() -> None:
    assert steelyard().returncode == 2


def test_unknown_command_is_a_usage_error() -> None:
    result = steelyard("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_run_with_invalid_config_exits_1_naming_the_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "version: 1\nlisteners:\n  - name: web\n    protocol: http\n    bind: 127.0.0.1:0\n"
        "    routes:\n      - match: {path_prefix: /}\n        backend: nope\nbackends: {}\n"
    )
    result = steelyard("run", "-c", str(cfg))
    assert result.returncode == 1
    assert f"{cfg}:8:18:" in result.stderr
    assert "nope" in result.stderr


def test_run_with_missing_file_exits_1(tmp_path: Path) -> None:
    result = steelyard("run", "-c", str(tmp_path / "absent.yaml"))
    assert result.returncode == 1
    assert "absent.yaml" in result.stderr


def test_run_on_a_taken_port_exits_3(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        cfg = tmp_path / "s.yaml"
        cfg.write_text(
            "version: 1\nlisteners:\n  - name: web\n    protocol: http\n"
            f"    bind: 127.0.0.1:{port}\n    routes:\n      - match: {{path_prefix: /}}\n"
            "        backend: b\nbackends:\n  b:\n    servers:\n      - {address: 127.0.0.1:9}\n"
        )
        result = steelyard("run", "-c", str(cfg))
        assert result.returncode == 3
        assert "cannot bind" in result.stderr
    finally:
        taken.close()


def _read_until(
    proc: subprocess.Popen[str],
    pattern: str,
    deadline: float,
    stderr: bool = False,
    seen: list[str] | None = None,
) -> re.Match[str]:
    """Read the process's stdout (or stderr) line by line until `pattern` (lines kept in
    `seen`, if given)."""
    stream = proc.stderr if stderr else proc.stdout
    assert stream is not None
    seen = [] if seen is None else seen
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"{pattern!r} not printed; got: {''.join(seen)}")


def test_demo_balances_over_three_servers_and_stops_on_ctrl_c() -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [PY, "-m", "steelyard", "demo", "--port", "0", "--admin-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        match = _read_until(proc, r"balancer\s+http://127\.0\.0\.1:(\d+)/", deadline)
        port = int(match.group(1))
        names = []
        with httpx.Client(timeout=5) as client:
            url = f"http://127.0.0.1:{port}/hello"
            for _ in range(60):  # health checks may take a moment to pass
                response = client.get(url)
                if response.status_code == 200:
                    break
                time.sleep(0.1)
            for _ in range(6):
                response = client.get(url)
                assert response.status_code == 200
                names.append(response.headers["x-server"])
                assert response.text.startswith(names[-1])
        assert sorted(set(names)) == ["alpha", "beta", "gamma"]
        assert names[:3] != names[3:] or len(set(names[:3])) == 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_gracefully_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text(
        "version: 1\nshutdown_timeout: 2s\nlisteners:\n  - name: web\n    protocol: http\n"
        "    bind: 127.0.0.1:0\n    routes:\n      - match: {path_prefix: /}\n"
        "        backend: b\nbackends:\n  b:\n    servers:\n      - {address: 127.0.0.1:9}\n"
    )
    proc = subprocess.Popen(
        [PY, "-m", "steelyard", "run", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "listener web on" in line or not line:
                break
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_with_an_unusable_certificate_exits_1_naming_the_file(tmp_path: Path) -> None:
    cert = tmp_path / "site.pem"
    key = tmp_path / "site.key"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    cfg = tmp_path / "s.yaml"
    cfg.write_text(
        "version: 1\nlisteners:\n  - name: web\n    protocol: http\n    bind: 127.0.0.1:0\n"
        f"    tls:\n      certificates:\n        - {{cert: {cert}, key: {key}}}\n"
        "    routes:\n      - match: {path_prefix: /}\n        backend: b\n"
        "backends:\n  b:\n    servers:\n      - {address: 127.0.0.1:9}\n"
    )
    result = steelyard("run", "-c", str(cfg))
    assert result.returncode == 1, result.stderr
    assert f"{cfg}:8:" in result.stderr and "site.pem" in result.stderr


def _run_with_file_limit(tmp_path: Path, soft: int, hard: int) -> subprocess.Popen[str]:
    """`steelyard run` (one http listener answering 200) under RLIMIT_NOFILE (soft, hard)."""
    import resource

    cfg = tmp_path / "s.yaml"
    cfg.write_text(
        "version: 1\nshutdown_timeout: 1s\nlisteners:\n  - name: web\n    bind: 127.0.0.1:0\n"
        "    routes:\n      - match: {path_prefix: /}\n        respond: {status: 200}\n"
    )

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return subprocess.Popen(
        [PY, "-m", "steelyard", "run", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lower,
    )


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' line")


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc/PID/limits")
@pytest.mark.parametrize("hard_low", [False, True])
def test_run_raises_the_open_file_limit_to_the_hard_one(tmp_path: Path, hard_low: bool) -> None:
    """A soft limit of 256 (shells and service managers often give 1024) would cap the
    process at ~128 proxied connections: `run` raises it to the hard limit, and warns when
    even that is low."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 512:
        pytest.skip(f"the hard limit here is {hard}")
    new_hard = 1000 if hard_low else hard
    proc = _run_with_file_limit(tmp_path, 256, new_hard)
    try:
        lines: list[str] = []
        _read_until(proc, "listener web on", time.monotonic() + 20, stderr=True, seen=lines)
        expected = new_hard if new_hard != resource.RLIM_INFINITY else 1 << 20
        assert _soft_nofile(proc.pid) == expected
        text = "".join(lines)
        assert f"open-file limit raised from 256 to {expected}" in text
        assert ("at most about 500 connections at once" in text) == hard_low, text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(
    not Path("/proc/self/fd").exists() or os.stat("/proc/self/fd").st_size == 0,
    reason="needs Linux 6.2+ (/proc/self/fd reports its count)",
)
def test_run_warns_when_descriptors_near_the_open_file_limit(tmp_path: Path) -> None:
    proc = _run_with_file_limit(tmp_path, 100, 100)
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 20
        match = _read_until(proc, r"listener web on \S+:(\d+)", deadline, stderr=True)
        port = int(match.group(1))
        for _ in range(95):  # idle keep-alive connections: one descriptor each
            try:
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        found = _read_until(proc, r"(\d+) of 100 file descriptors in use", deadline, stderr=True)
        assert int(found.group(1)) >= 90
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        for c in clients:
            c.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
