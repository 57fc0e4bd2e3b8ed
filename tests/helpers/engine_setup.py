"""What the in-process Engine integration tests share: the one-listener `api` config in front
of test backends, a bounded poll (`until`), starting an Engine, and counting served requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from steelyard.config import load_config_text
from steelyard.engine import Engine


def api_config(
    backends: Sequence[Any],
    extra: str = "",
    *,
    top: str = "",
    routes: str = "",
    weights: dict[str, int] | None = None,
    bind: str = "127.0.0.1:0",
    more_listeners: str = "",
) -> str:
    """YAML: http listener `web` routing everything to backend `api` (servers = `backends`).

    extra: YAML lines for backend `api` (indented by 4); top: top-level lines; routes: route
    items before the catch-all (indented by 6); weights: per-server weight (written only when
    given); more_listeners: further listener items (indented by 2).
    """
    if weights is None:
        lines = [f"      - {{address: '{b.address}', name: {b.name}}}" for b in backends]
    else:
        lines = [
            f"      - {{address: '{b.address}', name: {b.name}, weight: {weights.get(b.name, 1)}}}"
            for b in backends
        ]
    servers = "\n".join(lines)
    return f"""
version: 1
{top}listeners:
  - name: web
    protocol: http
    bind: {bind}
    routes:
{routes}      - match: {{path_prefix: /}}
        backend: api
{more_listeners}backends:
  api:
{extra}    servers:
{servers}
"""


def tcp_config(backends: Sequence[Any], extra: str = "") -> str:
    """YAML: tcp listener `l4` forwarding to backend `api` (servers = `backends`); extra: YAML
    lines for backend `api` (indented by 4)."""
    servers = "\n".join(f"      - {{address: '{b.address}', name: {b.name}}}" for b in backends)
    return f"""
version: 1
listeners:
  - name: l4
    protocol: tcp
    bind: 127.0.0.1:0
    backend: api
backends:
  api:
{extra}    servers:
{servers}
"""


async def until(cond: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll cond() every 20 ms until it is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def start_engine(text: str, path: Path | None = None) -> tuple[Engine, int]:
    """Start an Engine from YAML text; return it and the bound port of listener `web`."""
    engine = Engine(
        load_config_text(text),
        str(path) if path else None,
        loop=asyncio.get_running_loop(),
    )
    await engine.start()
    return engine, engine.bound["web"][1]


def state_of(engine: Any, server: str, backend: str = "api") -> str:
    """The state of one server as the admin API names it (healthy, ejected, ...)."""
    b = engine.backends[backend]
    return str(b.servers[server].state(b.clock()))


def served(b: Any) -> int:
    """Requests a test backend answered, health checks not counted."""
    return len([r for r in b.requests if r.target != "/health"])
