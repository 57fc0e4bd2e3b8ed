"""Metrics after real HTTP traffic through the proxy: the counters equal what was sent."""

from __future__ import annotations

import httpx
from test_admin_support import admin_url, close_servers, running, start_named_servers
from test_metrics import scrape, value
from tests.helpers.http_backends import DeadServer

CONFIG = """\
version: 1
admin: {{bind: 127.0.0.1:0}}
listeners:
  - name: web
    protocol: http
    bind: 127.0.0.1:0
    routes:
      - match: {{path_prefix: /app/}}
        backend: app
      - match: {{path_prefix: /flaky/}}
        backend: flaky
      - match: {{path_prefix: /down/}}
        backend: down
backends:
  app:
    servers:
      - {{address: 127.0.0.1:{p1}, name: s1}}
      - {{address: 127.0.0.1:{p2}, name: s2}}
  flaky:
    retries: 1
    servers:
      - {{address: 127.0.0.1:{dead}, name: dead}}
      - {{address: 127.0.0.1:{p3}, name: alive}}
  down:
    retries: 0
    servers:
      - {{address: 127.0.0.1:{dead}, name: gone}}
"""


async def test_counters_equal_the_http_traffic_sent() -> None:
    servers = await start_named_servers(["s1", "s2", "alive"])
    (_, _, p1), (_, _, p2), (_, _, p3) = servers
    blocker = DeadServer("gone")
    dead = blocker.port
    try:
        text = CONFIG.format(p1=p1, p2=p2, p3=p3, dead=dead)
        async with running(text) as engine:
            host, port = engine.bound["web"]
            base = f"http://{host}:{port}"
            received = 0
            seen: dict[str, int] = {}
            async with httpx.AsyncClient(base_url=base) as client:
                for i in range(20):
                    r = await client.get(f"/app/item?i={i}")
                    assert r.status_code == 200
                    seen[r.headers["x-server"]] = seen.get(r.headers["x-server"], 0) + 1
                    received += len(r.content)
                for _ in range(3):
                    r = await client.post("/app/upload", content=b"x" * 1000)
                    assert r.status_code == 200
                    seen[r.headers["x-server"]] = seen.get(r.headers["x-server"], 0) + 1
                    received += len(r.content)
                for _ in range(2):
                    r = await client.get("/nowhere")
                    assert r.status_code == 404
                flaky_ok = 0
                for _ in range(6):
                    r = await client.get("/flaky/x")
                    assert r.status_code == 200 and r.headers["x-server"] == "alive"
                    flaky_ok += 1
                r = await client.get("/down/x")
                assert r.status_code == 503
            dead_failures = engine.backends["flaky"].servers["dead"].failures_total
            async with httpx.AsyncClient(base_url=admin_url(engine)) as admin:
                _, samples, _ = await scrape(admin)
    finally:
        blocker.close()
        close_servers(servers)

    req = "steelyard_requests_total"
    for name in ("s1", "s2"):
        assert (
            value(samples, req, listener="web", backend="app", server=name, code="2xx")
            == (seen[name])
        )
    assert seen["s1"] + seen["s2"] == 23
    assert value(samples, req, listener="web", backend="", server="", code="4xx") == 2
    assert (
        value(samples, req, listener="web", backend="flaky", server="alive", code="2xx") == flaky_ok
    )
    down = [
        v
        for (n, labels), v in samples.items()
        if n == req and ("backend", "down") in labels and ("code", "5xx") in labels
    ]
    assert sum(down) == 1
    hist = "steelyard_request_duration_seconds"
    assert value(samples, hist + "_count", listener="web", backend="app") == 23
    assert value(samples, hist + "_count", listener="web", backend="flaky") == 6
    # every attempt on the dead server failed to connect and was retried on the other one
    assert dead_failures >= 1
    assert value(samples, "steelyard_retries_total", backend="flaky") == dead_failures
    assert value(samples, "steelyard_retries_total", backend="app") == 0
    assert value(samples, "steelyard_bytes_total", listener="web", direction="in") >= 3000


async def test_bytes_total_counts_bytes_to_and_from_clients() -> None:
    servers = await start_named_servers(["s1", "s2", "alive"])
    (_, _, p1), (_, _, p2), (_, _, p3) = servers
    blocker = DeadServer("gone")
    dead = blocker.port
    try:
        async with running(CONFIG.format(p1=p1, p2=p2, p3=p3, dead=dead)) as engine:
            host, port = engine.bound["web"]
            received = 0
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
                for _ in range(5):
                    r = await client.post("/app/upload", content=b"x" * 1000)
                    assert r.status_code == 200
                    received += len(r.content)
            async with httpx.AsyncClient(base_url=admin_url(engine)) as admin:
                _, samples, _ = await scrape(admin)
    finally:
        blocker.close()
        close_servers(servers)
    # at least the request bodies in, at least the response bodies out
    assert value(samples, "steelyard_bytes_total", listener="web", direction="in") >= 5000
    assert value(samples, "steelyard_bytes_total", listener="web", direction="out") >= received
