"""`steelyard ctl` as a user runs it (`python -m steelyard ctl ...`) against running instances."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_admin_support import admin_url, basic_config, running, wait_for

PY = sys.executable


async def ctl(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the ctl in a subprocess without blocking this loop (the instance runs on it)."""
    proc = await asyncio.create_subprocess_exec(
        PY,
        "-m",
        "steelyard",
        "ctl",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_and_servers_tables() -> None:
    async with running(basic_config()) as engine:
        url = admin_url(engine)
        code, out, err = await ctl("--admin", url, "status")
        assert code == 0, err
        assert re.search(r"^version\s+" + re.escape(engine.status()["version"]), out, re.M)
        assert re.search(r"^config hash\s+[0-9a-f]{64}$", out, re.M)
        code, out, err = await ctl("--admin", url, "servers")
        assert code == 0, err
        lines = out.strip().splitlines()
        assert lines[0].split()[:5] == ["BACKEND", "ALGORITHM", "SERVER", "ADDRESS", "STATE"]
        rows = [line.split() for line in lines[1:]]
        assert [(r[0], r[2], r[3], r[4], r[5]) for r in rows] == [
            ("api", "a", "127.0.0.1:9001", "healthy", "1"),
            ("api", "b", "127.0.0.1:9002", "healthy", "3"),
            ("static", "127.0.0.1:9003", "127.0.0.1:9003", "healthy", "1"),
        ]
        code, out, _ = await ctl("--admin", url, "servers", "static")
        assert code == 0 and "api" not in out and "127.0.0.1:9003" in out
        # --json before or after the command: the API's own JSON
        for args in (("--json", "--admin", url, "servers"), ("servers", "--admin", url, "--json")):
            code, out, _ = await ctl(*args)
            assert code == 0
            assert [b["name"] for b in json.loads(out)["backends"]] == ["api", "static"]
        code, out, _ = await ctl("--admin", url, "--json", "status")
        assert json.loads(out)["version"] == engine.status()["version"]


async def test_drain_enable_disable_weight_add_remove() -> None:
    async with running(basic_config()) as engine:
        url = admin_url(engine)
        servers = engine.backends["api"].servers
        code, out, err = await ctl("--admin", url, "drain", "api/a")
        assert (code, err) == (0, "")
        assert "api/a" in out and "draining" in out
        assert servers["a"].state(engine.clock()) == "draining"
        code, out, _ = await ctl("--admin", url, "disable", "api/a")
        assert code == 0 and servers["a"].state(engine.clock()) == "disabled"
        code, out, _ = await ctl("--admin", url, "enable", "api/a")
        assert code == 0 and servers["a"].state(engine.clock()) == "healthy"
        code, out, _ = await ctl("--admin", url, "weight", "api/b", "42")
        assert code == 0 and "42" in out
        assert servers["b"].weight == 42
        code, out, err = await ctl("--admin", url, "add", "api", "127.0.0.1:9050", "--name", "c")
        assert code == 0, err
        added = servers["c"]
        code, out, _ = await ctl("--admin", url, "remove", "api/c")
        assert code == 0 and "draining" in out
        assert added.removed  # and, idle, soon gone from the backend
        # a server named after its address (with ':')
        code, out, _ = await ctl("--admin", url, "drain", "static/127.0.0.1:9003")
        assert code == 0
        assert engine.backends["static"].servers["127.0.0.1:9003"].admin.value == "draining"


async def test_errors_exit_non_zero() -> None:
    async with running(basic_config()) as engine:
        url = admin_url(engine)
        code, out, err = await ctl("--admin", url, "drain", "api/nope")
        assert code == 1 and out == ""
        assert "404" in err and "nope" in err
        code, _, err = await ctl("--admin", url, "drain", "nope/a")
        assert code == 1 and "404" in err
        code, _, err = await ctl("--admin", url, "add", "api", "127.0.0.1:9001", "--name", "a")
        assert code == 1 and "409" in err
        code, _, err = await ctl("--admin", url, "add", "api", "not-an-address")
        assert code == 1 and "400" in err
        code, _, err = await ctl("--admin", url, "reload")
        assert code == 1 and "400" in err  # no config file behind this instance
        # usage errors: 2
        for args in (
            ("drain", "no-slash"),
            ("weight", "api/a", "x"),
            ("weight", "api/a", "5000"),
            ("frobnicate",),
            (),
        ):
            code, _, err = await ctl("--admin", url, *args)
            assert code == 2, args
    # nothing listening any more: an error, not a crash
    code, _, err = await ctl("--admin", url, "status")
    assert code == 1 and "cannot reach" in err
    code, _, err = await ctl("--admin", "ftp://example", "status")
    assert code == 2


async def test_token_from_flag_and_environment() -> None:
    async with running(basic_config(token="ctl-secret")) as engine:
        url = admin_url(engine)
        code, _, err = await ctl("--admin", url, "status", env={"STEELYARD_ADMIN_TOKEN": ""})
        assert code == 1 and "401" in err and "--token" in err
        code, _, err = await ctl("--admin", url, "--token", "wrong", "status")
        assert code == 1 and "401" in err
        code, out, err = await ctl("--admin", url, "--token", "ctl-secret", "status")
        assert code == 0, err
        code, out, err = await ctl(
            "--admin", url, "drain", "api/a", env={"STEELYARD_ADMIN_TOKEN": "ctl-secret"}
        )
        assert code == 0, err
        assert engine.backends["api"].servers["a"].admin.value == "draining"


async def test_reload_reports_problems(tmp_path: Path) -> None:
    path = tmp_path / "steelyard.yaml"
    good = basic_config()
    path.write_text(good)
    async with running(good, config_path=str(path), filename=str(path)) as engine:
        url = admin_url(engine)
        path.write_text(good.replace("name: b, weight: 3", "name: b, weight: 4"))
        code, out, err = await ctl("--admin", url, "reload")
        assert code == 0, err
        assert out.startswith("reloaded")
        assert engine.backends["api"].servers["b"].weight == 4
        path.write_text(good.replace("algorithm: round_robin", "algorithm: round_robbin"))
        code, out, err = await ctl("--admin", url, "reload")
        assert code == 1
        assert "400" in err
        assert f"{path}:" in err and "round_robin" in err  # the problem, with a did-you-mean


def test_ctl_against_steelyard_run(tmp_path: Path) -> None:
    """Black box: `steelyard run` in one process, `steelyard ctl` in others."""
    cfg = tmp_path / "steelyard.yaml"
    cfg.write_text(basic_config())
    proc = subprocess.Popen(
        [PY, "-m", "steelyard", "run", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        deadline = time.monotonic() + 30
        assert proc.stderr is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            match = re.search(r"admin on (http://\S+)", line)
            if match:
                url = match.group(1)
        assert url, "steelyard run did not log its admin URL"

        def run_ctl(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [PY, "-m", "steelyard", "ctl", "--admin", url, *args],
                capture_output=True,
                text=True,
                timeout=60,
            )

        result = run_ctl("drain", "api/b")
        assert result.returncode == 0, result.stderr
        result = run_ctl("servers")
        assert result.returncode == 0
        row = next(line for line in result.stdout.splitlines() if line.split()[2:3] == ["b"])
        assert row.split()[4] == "draining"
        cfg.write_text(basic_config().replace("9003", "9004"))
        result = run_ctl("reload")
        assert result.returncode == 0, result.stderr
        result = run_ctl("servers", "static")
        assert "127.0.0.1:9004" in result.stdout and "9003" not in result.stdout.split("\n")[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


async def test_events_follows_the_stream() -> None:
    async with running(basic_config()) as engine:
        url = admin_url(engine)
        engine.backends["api"].drain("a")
        code, out, err = await ctl("--admin", url, "events", "--history", "5", "--count", "1")
        assert code == 0, err
        fields = out.split()
        assert fields[1:5] == ["drain", "api/a", "draining", "admin"]
        base = len(engine.events.subscribers)
        proc = asyncio.create_task(ctl("--admin", url, "events", "--count", "2", "--json"))
        # publish once the ctl's stream has subscribed
        await wait_for(lambda: len(engine.events.subscribers) > base, timeout=30)
        engine.backends["api"].disable("b")
        engine.backends["api"].enable("b")
        code, out, err = await asyncio.wait_for(proc, 60)
        assert code == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        assert [(e["type"], e["server"]) for e in events] == [("disable", "b"), ("enable", "b")]
