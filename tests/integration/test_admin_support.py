"""Shared helpers for the admin, metrics, dashboard, ctl and access-log tests (no tests here).

Imported by the sibling test modules as `test_admin_support` (pytest puts this directory on
sys.path: tests/integration has no __init__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from steelyard.config import load_config_text
from steelyard.core.records import RequestRecord
from steelyard.engine import Engine

BASIC = """\
version: 1
shutdown_timeout: 2s
admin:
  bind: 127.0.0.1:0
{token}
backends:
  api:
    algorithm: {algorithm}
    drain_timeout: 2s
    servers:
      - {{address: 127.0.0.1:9001, name: a}}
      - {{address: 127.0.0.1:9002, name: b, weight: 3}}
  static:
    servers:
      - {{address: 127.0.0.1:9003}}
"""


def basic_config(algorithm: str = "round_robin", token: str | None = None) -> str:
    return BASIC.format(algorithm=algorithm, token=f"  token: {token}" if token else "")


@contextlib.asynccontextmanager
async def running(
    text: str, config_path: str | None = None, filename: str = "<test>"
) -> AsyncIterator[Engine]:
    """A started engine (listeners, admin, health checks) that is shut down afterwards."""
    config = load_config_text(text, filename)
    engine = Engine(config, config_path, loop=asyncio.get_running_loop())
    await engine.start()
    try:
        yield engine
    finally:
        await engine.shutdown(1.0)


def admin_url(engine: Engine) -> str:
    assert engine.admin is not None
    return str(engine.admin.url)


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02
) -> Any:
    """Poll until predicate() is truthy (bounded); return its value or raise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(interval)


def record(
    listener: str = "web",
    backend: str | None = "api",
    server: str | None = "a",
    status: int | None = 200,
    duration: float = 0.003,
    bytes_in: int = 100,
    bytes_out: int = 1000,
    retries: int = 0,
    method: str | None = "GET",
    path: str | None = "/secret/path?x=1",
    client: str = "127.0.0.1:55555",
    when: float | None = None,
) -> RequestRecord:
    rec = RequestRecord(listener, client, time.time() - duration if when is None else when)
    rec.method = method
    rec.path = path if method is not None else None
    rec.status = status
    rec.backend = backend
    rec.server = server
    rec.bytes_in = bytes_in
    rec.bytes_out = bytes_out
    rec.duration = duration
    rec.retries = retries
    rec.request_id = "req-1" if method is not None else None
    return rec


async def start_named_servers(names: list[str]) -> list[tuple[str, Any, int]]:
    """Tiny HTTP servers answering with their own name (x-server header and body)."""
    from steelyard.demo import start_demo_servers

    return await start_demo_servers(names)


def close_servers(servers: list[tuple[str, Any, int]]) -> None:
    for _, server, _ in servers:
        server.close()
