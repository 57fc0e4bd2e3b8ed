"""Access logs (SPEC §6): every key, JSON and text, to a file and to stdout, HTTP and L4."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_admin_support import close_servers, record, running, start_named_servers

from steelyard.logs import AccessLog, format_text

HTTP_KEYS = [
    "time",
    "listener",
    "client",
    "method",
    "path",
    "status",
    "backend",
    "server",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "retries",
    "request_id",
]
L4_KEYS = [k for k in HTTP_KEYS if k not in ("method", "path", "status", "request_id")]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_rfc3339(text: str) -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
    datetime.fromisoformat(text)


def test_json_lines_have_every_key(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "json")
    start = time.time()
    log(record(status=201, duration=0.0125, bytes_in=12, bytes_out=34, retries=1, when=start))
    log(record(listener="cache", backend="redis", server="r1", status=None, method=None))
    log.close()
    http, l4 = read_lines(path)
    assert list(http) == HTTP_KEYS
    assert list(l4) == L4_KEYS
    assert_rfc3339(http["time"])
    assert abs(datetime.fromisoformat(http["time"]).timestamp() - start) < 0.001
    assert http["listener"] == "web" and http["client"] == "127.0.0.1:55555"
    assert (http["method"], http["path"], http["status"]) == ("GET", "/secret/path?x=1", 201)
    assert (http["backend"], http["server"]) == ("api", "a")
    assert (http["bytes_in"], http["bytes_out"], http["retries"]) == (12, 34, 1)
    assert http["duration_ms"] == 12.5
    assert http["request_id"] == "req-1"
    assert (l4["listener"], l4["backend"], l4["server"]) == ("cache", "redis", "r1")


def test_text_format_and_escaping(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "text")
    log(record(status=200, duration=0.002))
    evil = record(path='/a"b\n2020-01-01 forged line', status=400, server=None, backend=None)
    log(evil)
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2  # the newline in the path did not split the line
    assert re.fullmatch(
        r'\S+Z web 127\.0\.0\.1:55555 "GET /secret/path\?x=1" 200 api/a in=100 out=1000 '
        r"2\.0ms retries=0 id=req-1",
        lines[0],
    ), lines[0]
    assert '\\"b\\x0a2020' in lines[1]
    assert " -/- " in lines[1]
    l4 = format_text(record(listener="db", status=None, method=None))
    assert '"' not in l4 and "id=" not in l4


def test_off_writes_nothing(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    log = AccessLog("off")
    log(record())
    log.close()
    assert capsys.readouterr().out == ""
    assert not (Path.cwd() / "off").exists()


def test_logger_is_steelyard_access(tmp_path: Path) -> None:
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            seen.append(rec.getMessage())

    handler = Collect()
    logging.getLogger("steelyard.access").addHandler(handler)
    try:
        log = AccessLog(str(tmp_path / "a.log"))
        log(record())
        log.close()
    finally:
        logging.getLogger("steelyard.access").removeHandler(handler)
    assert len(seen) == 1 and json.loads(seen[0])["request_id"] == "req-1"


CONFIG = """\
version: 1
listeners:
  - name: web
    protocol: http
    bind: 127.0.0.1:0
    routes:
      - match: {{path_prefix: /}}
        backend: app
  - name: raw
    protocol: tcp
    bind: 127.0.0.1:0
    backend: app
backends:
  app:
    servers:
      - {{address: 127.0.0.1:{port}, name: one}}
"""


async def test_real_http_and_tcp_traffic_is_logged(tmp_path: Path) -> None:
    servers = await start_named_servers(["one"])
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    try:
        async with running(CONFIG.format(port=servers[0][2])) as engine:
            engine.recorders.append(log)
            host, port = engine.bound["web"]
            ids = []
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
                for i in range(3):
                    r = await client.get(f"/item/{i}?q={i}")
                    assert r.status_code == 200
                    ids.append(r.headers["x-request-id"])
                r = await client.post(
                    "/upload", content=b"z" * 500, headers={"X-Request-Id": "mine-1"}
                )
                assert r.status_code == 200
                ids.append("mine-1")
            # one TCP connection carrying one HTTP request, byte for byte
            thost, tport = engine.bound["raw"]
            reader, writer = await asyncio.open_connection(thost, tport)
            request = b"GET /via-tcp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            writer.write(request)
            reply = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert reply.startswith(b"HTTP/1.1 200")
            for _ in range(100):
                if log.lines >= 5:
                    break
                await asyncio.sleep(0.02)
    finally:
        log.close()
        close_servers(servers)
    lines = read_lines(path)
    http = [line for line in lines if line["listener"] == "web"]
    tcp = [line for line in lines if line["listener"] == "raw"]
    assert len(http) == 4 and len(tcp) == 1
    for line, rid in zip(http, ids, strict=True):
        assert list(line) == HTTP_KEYS
        assert line["request_id"] == rid
        assert line["status"] == 200
        assert (line["backend"], line["server"]) == ("app", "one")
        assert re.fullmatch(r"127\.0\.0\.1:\d+", line["client"])
        assert_rfc3339(line["time"])
        assert line["duration_ms"] >= 0 and line["retries"] == 0
    assert [line["path"] for line in http[:3]] == ["/item/0?q=0", "/item/1?q=1", "/item/2?q=2"]
    assert http[3]["method"] == "POST"
    assert http[3]["bytes_in"] >= 500  # the body, plus the head where the proxy counts it
    (raw,) = tcp
    assert list(raw) == L4_KEYS
    assert (raw["backend"], raw["server"]) == ("app", "one")
    assert raw["bytes_in"] == len(request) and raw["bytes_out"] == len(reply)
    assert re.fullmatch(r"127\.0\.0\.1:\d+", raw["client"])


def test_steelyard_run_logs_json_to_stdout_by_default(tmp_path: Path) -> None:
    """Black box: the default destination is stdout, one JSON object per line."""
    cfg = tmp_path / "steelyard.yaml"
    cfg.write_text(
        """\
version: 1
listeners:
  - name: web
    protocol: http
    bind: 127.0.0.1:0
    routes:
      - match: {path_prefix: /}
        respond: {status: 204}
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "steelyard", "run", "-c", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        deadline = time.monotonic() + 30
        assert proc.stderr is not None and proc.stdout is not None
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            match = re.search(r"listener web on \S+:(\d+)", line)
            if match:
                port = int(match.group(1))
        assert port, "steelyard run did not log its listener"
        for i in range(2):
            r = httpx.get(f"http://127.0.0.1:{port}/x?n={i}", timeout=10)
            assert r.status_code == 204
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [line["path"] for line in lines] == ["/x?n=0", "/x?n=1"]
    for line in lines:
        assert list(line) == HTTP_KEYS
        assert line["status"] == 204 and line["listener"] == "web"


def test_a_stuck_destination_never_blocks_the_caller(tmp_path: Path) -> None:
    """The writer thread may block on a full pipe; the caller (the event loop) does not."""
    import os
    import threading

    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that opening for writing works
    log = AccessLog(str(fifo))
    n = 5000  # ~1.3 MB of lines: far beyond a pipe's 64 KiB buffer
    for i in range(n):
        log(record(path=f"/{i}"))  # returns at once although nobody reads yet
    assert log.lines == n
    chunks: list[bytes] = []
    done = threading.Event()

    def drain() -> None:
        os.set_blocking(reader, True)
        while chunk := os.read(reader, 65536):
            chunks.append(chunk)
        done.set()

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    log.close()  # writes out the queue, then closes the write end: the reader sees EOF
    assert done.wait(30)
    os.close(reader)
    lines = b"".join(chunks).decode().splitlines()
    assert len(lines) == n
    assert json.loads(lines[-1])["path"] == f"/{n - 1}"


def test_durations_have_sub_millisecond_precision() -> None:
    """uvloop's loop.time() moves in whole milliseconds; logged durations must not."""
    import uvloop
    from tests.helpers.http_backends import http_backend, proxy_config, steelyard

    async def main() -> list[float]:
        async with http_backend(name="s1") as b, steelyard(proxy_config({"b": [b]})) as sy:
            async with httpx.AsyncClient() as client:
                for _ in range(20):
                    await client.get(f"http://127.0.0.1:{sy.port}/")
            return [r.duration * 1000 for r in sy.records]

    durations = uvloop.run(main())  # the loop `steelyard run` uses
    assert len(durations) == 20
    assert any(abs(d - round(d)) > 1e-6 for d in durations), durations


@contextlib.asynccontextmanager
async def running_with_log(tmp_path: Path, log_section: str) -> AsyncIterator[Running]:
    """`steelyard run` as a process over one backend, with `log_section` appended to CONFIG."""
    from tests.helpers.http_backends import http_backend
    from tests.helpers.steelyard_process import SteelyardProcess

    path = tmp_path / "steelyard.yaml"
    async with http_backend("one") as b:
        base = CONFIG.format(port=b.port)
        path.write_text(base + log_section)
        with SteelyardProcess(path) as sy:
            yield Running(sy, await asyncio.to_thread(sy.port, "web"), base, path)


class Running:
    """What running_with_log gives: the process, its HTTP port, the config without its log
    section, and the config file."""

    def __init__(self, sy: Any, port: int, base: str, path: Path) -> None:
        self.sy, self.port, self.base, self.path = sy, port, base, path

    async def get_ok(self, target: str) -> None:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{self.port}{target}")
            assert r.status_code == 200

    async def reload(self, text: str, *expect: str) -> str:
        """Write `text` as the config, send SIGHUP, and wait for a line matching each of the
        `expect` patterns; the line that matched the first."""
        mark = len(self.sy.lines)
        self.path.write_text(text)
        self.sy.send(signal.SIGHUP)
        lines = [await asyncio.to_thread(self.sy.wait_for, rx, 15.0, mark) for rx in expect]
        return str(lines[0])


async def test_a_reload_switches_the_access_log(tmp_path: Path) -> None:
    """SIGHUP with a changed `log:` section: off -> a JSON file -> a text file -> off. Each
    request's line goes to the log in force when it ended; the old file is closed whole."""
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    async with running_with_log(tmp_path, "log: {access: off}\n") as run:
        await run.get_ok("/while-off")
        await run.reload(run.base + f"log: {{access: '{first}'}}\n", "reloaded")
        await run.get_ok("/to-first")
        await run.reload(run.base + f"log: {{access: '{second}', format: text}}\n", "reloaded")
        await run.get_ok("/to-second")
        await run.reload(run.base + "log: {access: off}\n", "reloaded")
        await run.get_ok("/off-again")
        assert run.sy.proc.poll() is None, run.sy.lines[-20:]
    assert [line["path"] for line in read_lines(first)] == ["/to-first"]
    text = second.read_text().splitlines()
    assert len(text) == 1 and "GET /to-second" in text[0] and not text[0].startswith("{")


async def test_a_reload_to_an_access_log_that_cannot_be_opened_is_refused(
    tmp_path: Path,
) -> None:
    """The whole reload is refused (a listener added in the same edit is not started), with
    the file, line and column of `access:`, and the old log goes on."""
    first = tmp_path / "first.log"
    async with running_with_log(tmp_path, f"log: {{access: '{first}'}}\n") as run:
        added = "  - {name: extra, protocol: tcp, bind: 127.0.0.1:0, backend: app}\n"
        bad_line = f"log: {{access: '{tmp_path / 'missing' / 'x.log'}'}}"
        bad = run.base.replace("backends:\n", added + "backends:\n") + bad_line + "\n"
        line = bad.splitlines().index(bad_line)
        got = await run.reload(bad, r"reload refused")
        assert f"{run.path}:{line + 1}:15: log.access: directory " in got, got
        assert f"'{tmp_path / 'missing'}' does not exist" in got, got
        await run.get_ok("/still-first")
        assert not any("listener extra" in line for line in run.sy.lines), run.sy.lines
        assert run.sy.proc.poll() is None
    assert [line["path"] for line in read_lines(first)] == ["/still-first"]


async def test_a_reload_whose_checked_access_log_fails_to_open_keeps_the_old_one(
    tmp_path: Path,
) -> None:
    """The config check passes the new path but open() refuses it (as root, /proc/self/status
    looks writable to access(2) and gives EINVAL): the rest of the reload applies, the error
    is logged, and request lines go on into the old file."""
    target = "/proc/self/status"
    if not os.access(target, os.W_OK):
        pytest.skip("the config check already refuses it here (not root)")
    first = tmp_path / "first.log"
    async with running_with_log(tmp_path, f"log: {{access: '{first}'}}\n") as run:
        await run.get_ok("/before")
        stays = re.escape(f"access log {target} cannot be opened, the old one stays")
        await run.reload(
            run.base + f"log: {{access: '{target}'}}\n", stays, re.escape(f"reloaded {run.path}")
        )
        await run.get_ok("/after")
        assert run.sy.proc.poll() is None
    assert [line["path"] for line in read_lines(first)] == ["/before", "/after"]


def test_start_with_an_access_log_that_cannot_be_opened_exits_with_the_reason(
    tmp_path: Path,
) -> None:
    path = tmp_path / "steelyard.yaml"
    text = CONFIG.format(port=9) + "log: {access: nowhere/access.log}\n"
    path.write_text(text)
    line = text.count("\n")  # the last line
    done = subprocess.run(
        [sys.executable, "-m", "steelyard", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert f"{path}:{line}:15: log.access: directory '{tmp_path}/nowhere' does not exist" in (
        done.stderr
    ), done.stderr
    assert "Traceback" not in done.stderr


def test_start_when_the_checked_access_log_still_fails_to_open(tmp_path: Path) -> None:
    """A path the config check passes but open() refuses (as root, /proc/self/status looks
    writable to access(2) and gives EINVAL): the start exits with code 3 and the reason."""
    target = "/proc/self/status"
    if not os.access(target, os.W_OK):
        pytest.skip("the config check already refuses it here (not root)")
    path = tmp_path / "steelyard.yaml"
    path.write_text(CONFIG.format(port=9) + f"log: {{access: '{target}'}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "steelyard", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 3, done.stderr
    assert f"steelyard: cannot open the access log {target}:" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
