"""The admin API (SPEC §4) over real sockets: every endpoint, every error status, the token."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from test_admin_support import (
    admin_url,
    basic_config,
    close_servers,
    running,
    start_named_servers,
    wait_for,
)

import steelyard
from steelyard.config import ALGORITHM_NAMES
from steelyard.core.balancing.base import PickContext
from steelyard.core.load import Outcome

SERVER_KEYS = {
    "name",
    "address",
    "weight",
    "state",
    "active",
    "requests_total",
    "failures_total",
    "latency_ewma_ms",
    "last_check",
}
STATES = {"unknown", "healthy", "unhealthy", "ejected", "draining", "disabled"}


async def test_healthz_200_while_serving_503_while_shutting_down() -> None:
    async with (
        running(basic_config()) as engine,
        httpx.AsyncClient(base_url=admin_url(engine)) as client,
    ):
        r = await client.get("/healthz")
        assert r.status_code == 200
        engine.shutting_down = True  # what Engine.shutdown() sets first
        r = await client.get("/healthz")
        assert r.status_code == 503
        engine.shutting_down = False


async def test_healthz_503_during_a_real_shutdown() -> None:
    """Shutdown waits for in-flight requests; the admin listener stops last and says 503."""
    gate = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await gate.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow")
        await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    text = f"""\
version: 1
admin: {{bind: 127.0.0.1:0}}
listeners:
  - name: web
    protocol: http
    bind: 127.0.0.1:0
    routes:
      - match: {{path_prefix: /}}
        backend: slow
backends:
  slow:
    servers:
      - {{address: 127.0.0.1:{port}, name: s}}
"""
    try:
        async with running(text) as engine:
            host, web = engine.bound["web"]
            async with httpx.AsyncClient(timeout=10) as client:
                request = asyncio.create_task(client.get(f"http://{host}:{web}/"))
                await asyncio.wait_for(arrived.wait(), 5)
                r = await client.get(admin_url(engine) + "/healthz")
                assert r.status_code == 200
                shutdown = asyncio.create_task(engine.shutdown(10.0))
                await wait_for(lambda: engine.shutting_down)
                r = await client.get(admin_url(engine) + "/healthz")
                assert r.status_code == 503
                assert r.json() == {"status": "shutting down"}
                gate.set()
                assert (await request).text == "slow"
                await asyncio.wait_for(shutdown, 10)
    finally:
        gate.set()
        upstream.close()


async def test_status_shape() -> None:
    async with (
        running(basic_config(), filename="inline.yaml") as engine,
        httpx.AsyncClient(base_url=admin_url(engine)) as client,
    ):
        r = await client.get("/api/v1/status")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) >= {"version", "uptime_s", "config_file", "config_hash", "listeners"}
    assert body["version"] == engine.status()["version"]
    assert body["build"] == steelyard.BUILD  # "compiled" (mypyc) or "python"
    assert isinstance(body["uptime_s"], int | float) and body["uptime_s"] >= 0
    assert len(body["config_hash"]) == 64
    assert body["listeners"] == []


async def test_backends_list_every_backend_and_server_with_state() -> None:
    async with (
        running(basic_config("least_connections")) as engine,
        httpx.AsyncClient(base_url=admin_url(engine)) as client,
    ):
        r = await client.get("/api/v1/backends")
    assert r.status_code == 200
    backends = {b["name"]: b for b in r.json()["backends"]}
    assert set(backends) == {"api", "static"}
    api = backends["api"]
    assert api["algorithm"] == "least_connections"
    assert [s["name"] for s in api["servers"]] == ["a", "b"]
    for server in api["servers"]:
        assert set(server) >= SERVER_KEYS
        assert server["state"] in STATES
        assert server["last_check"] is None
    b = api["servers"][1]
    assert (b["address"], b["weight"], b["state"], b["active"]) == (
        "127.0.0.1:9002",
        3,
        "healthy",
        0,
    )
    # the default server name is its address
    assert backends["static"]["servers"][0]["name"] == "127.0.0.1:9003"


async def test_one_server_and_404s() -> None:
    async with (
        running(basic_config()) as engine,
        httpx.AsyncClient(base_url=admin_url(engine)) as client,
    ):
        r = await client.get("/api/v1/backends/api/servers/b")
        assert r.status_code == 200
        assert r.json()["name"] == "b"
        assert set(r.json()) >= SERVER_KEYS
        # a name with ':' (the default name is the address), percent-encoded or not
        r = await client.get("/api/v1/backends/static/servers/127.0.0.1%3A9003")
        assert r.status_code == 200
        r = await client.get("/api/v1/backends/static/servers/127.0.0.1:9003")
        assert r.status_code == 200
        for path in (
            "/api/v1/backends/nope/servers/a",
            "/api/v1/backends/api/servers/nope",
            "/api/v1/backends/nope",
            "/api/v1/nothing",
            "/nothing",
        ):
            r = await client.get(path)
            assert r.status_code == 404, path
            assert "error" in r.json(), path


async def test_last_check_after_a_health_check() -> None:
    servers = await start_named_servers(["h1"])
    port = servers[0][2]
    text = f"""\
version: 1
admin: {{bind: 127.0.0.1:0}}
backends:
  hc:
    servers:
      - {{address: 127.0.0.1:{port}, name: h1}}
    health_check: {{type: http, path: /health, interval: 200ms, timeout: 100ms,
                    healthy_threshold: 1}}
"""
    try:
        async with running(text) as engine, httpx.AsyncClient(base_url=admin_url(engine)) as client:

            async def state() -> dict:
                return (await client.get("/api/v1/backends/hc/servers/h1")).json()

            first = await state()
            assert first["state"] in ("unknown", "healthy")
            for _ in range(100):
                server = await state()
                if server["last_check"] is not None and server["state"] == "healthy":
                    break
                await asyncio.sleep(0.05)
            assert server["state"] == "healthy"
            check = server["last_check"]
            assert set(check) == {"time", "result", "reason"}
            assert check["result"] == "ok"
            assert check["time"].endswith("Z")
    finally:
        close_servers(servers)


async def test_drain_enable_disable() -> None:
    async with running(basic_config()) as engine:
        backend = engine.backends["api"]
        async with httpx.AsyncClient(base_url=admin_url(engine)) as client:
            r = await client.post("/api/v1/backends/api/servers/a/drain")
            assert r.status_code == 200
            assert r.json()["state"] == "draining"
            # no new requests go to a draining server
            picks = {backend.acquire(PickContext()).server.name for _ in range(20)}
            assert picks == {"b"}
            r = await client.post("/api/v1/backends/api/servers/a/disable")
            assert (r.status_code, r.json()["state"]) == (200, "disabled")
            r = await client.get("/api/v1/backends/api/servers/a")
            assert r.json()["state"] == "disabled"
            r = await client.post("/api/v1/backends/api/servers/a/enable")
            assert (r.status_code, r.json()["state"]) == (200, "healthy")
            picks = {backend.acquire(PickContext()).server.name for _ in range(20)}
            assert picks == {"a", "b"}
            for action in ("drain", "enable", "disable"):
                r = await client.post(f"/api/v1/backends/api/servers/zzz/{action}")
                assert r.status_code == 404
                r = await client.post(f"/api/v1/backends/zzz/servers/a/{action}")
                assert r.status_code == 404
            r = await client.get("/api/v1/backends/api/servers/a/drain")
            assert r.status_code == 405
            assert r.headers["allow"] == "POST"


async def test_weight() -> None:
    async with (
        running(basic_config()) as engine,
        httpx.AsyncClient(base_url=admin_url(engine)) as client,
    ):
        path = "/api/v1/backends/api/servers/a/weight"
        r = await client.put(path, json={"weight": 7})
        assert r.status_code == 200
        assert r.json()["weight"] == 7
        assert engine.backends["api"].servers["a"].weight == 7
        for weight in (0, 1000):
            r = await client.put(path, json={"weight": weight})
            assert (r.status_code, r.json()["weight"]) == (200, weight)
        for bad in (-1, 1001, "5", 2.5, None, True, [1]):
            r = await client.put(path, json={"weight": bad})
            assert r.status_code == 400, bad
            assert "weight" in r.json()["error"]
        for body in (b"", b"{not json", b"[1]", b'{"w": 1}'):
            r = await client.put(path, content=body)
            assert r.status_code == 400, body
            assert "error" in r.json()
        assert engine.backends["api"].servers["a"].weight == 1000
        r = await client.put("/api/v1/backends/api/servers/nope/weight", json={"weight": 1})
        assert r.status_code == 404
        r = await client.post(path, json={"weight": 1})
        assert r.status_code == 405


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
async def test_add_and_delete_server_for_every_algorithm(algorithm: str) -> None:
    async with running(basic_config(algorithm)) as engine:
        backend = engine.backends["api"]
        async with httpx.AsyncClient(base_url=admin_url(engine)) as client:
            r = await client.post(
                "/api/v1/backends/api/servers",
                json={"address": "127.0.0.1:9010", "weight": 2, "name": "c"},
            )
            assert r.status_code == 201, r.text
            added = r.json()
            assert (added["name"], added["address"], added["weight"]) == ("c", "127.0.0.1:9010", 2)
            listed = (await client.get("/api/v1/backends")).json()["backends"][0]["servers"]
            assert [s["name"] for s in listed] == ["a", "b", "c"]
            # the balancer (rebuilt off the loop for rings and Maglev) picks the new server
            await wait_for(lambda: backend.installed >= backend.version)

            # hold the leases, so that load-aware algorithms spread too
            leases = [
                backend.acquire(PickContext(hash_key=f"key-{i}".encode())) for i in range(300)
            ]
            assert all(lease is not None for lease in leases)
            assert "c" in {lease.server.name for lease in leases}
            for lease in leases:
                lease.release(Outcome.OK)
            r = await client.delete("/api/v1/backends/api/servers/c")
            assert r.status_code == 200
            assert r.json()["state"] == "draining"

            # idle, so the engine's tick removes it
            async def gone() -> bool:
                return (await client.get("/api/v1/backends/api/servers/c")).status_code == 404

            for _ in range(100):
                if await gone():
                    break
                await asyncio.sleep(0.05)
            assert await gone()
            await wait_for(lambda: backend.installed >= backend.version)
            for i in range(100):
                lease = backend.acquire(PickContext(hash_key=f"key-{i}".encode()))
                assert lease is not None and lease.server.name != "c"


async def test_add_server_errors() -> None:
    async with (
        running(basic_config()) as engine,
        httpx.AsyncClient(base_url=admin_url(engine)) as client,
    ):
        path = "/api/v1/backends/api/servers"
        r = await client.post(path, json={"address": "127.0.0.1:9001", "name": "a"})
        assert r.status_code == 409
        assert "exists" in r.json()["error"]
        # the default name is the address; adding the same address twice conflicts
        r = await client.post(path, json={"address": "127.0.0.1:9020"})
        assert r.status_code == 201 and r.json()["name"] == "127.0.0.1:9020"
        r = await client.post(path, json={"address": "127.0.0.1:9020"})
        assert r.status_code == 409
        bad_bodies = [
            {},
            {"name": "x"},
            {"address": "nohost"},
            {"address": "127.0.0.1:0"},
            {"address": "127.0.0.1:70000"},
            {"address": 5},
            {"address": "127.0.0.1:9030", "weight": 1001},
            {"address": "127.0.0.1:9030", "weight": "2"},
            {"address": "127.0.0.1:9030", "name": "has space"},
            {"address": "127.0.0.1:9030", "name": "a/b"},
            {"address": "127.0.0.1:9030", "colour": "red"},
            ["127.0.0.1:9030"],
        ]
        for body in bad_bodies:
            r = await client.post(path, json=body)
            assert r.status_code == 400, body
            assert isinstance(r.json()["error"], str)
        r = await client.post(path, content=b"{oops")
        assert r.status_code == 400
        r = await client.post("/api/v1/backends/nope/servers", json={"address": "1.2.3.4:5"})
        assert r.status_code == 404
        r = await client.delete("/api/v1/backends/api/servers/nope")
        assert r.status_code == 404
        r = await client.delete("/api/v1/backends/nope/servers/a")
        assert r.status_code == 404
        names = [s["name"] for s in (await client.get("/api/v1/backends/api/servers")).json()]
        assert names == ["a", "b", "127.0.0.1:9020"]


async def test_added_server_gets_health_checked() -> None:
    servers = await start_named_servers(["h1", "h2"])
    (_, _, p1), (_, _, p2) = servers
    text = f"""\
version: 1
admin: {{bind: 127.0.0.1:0}}
backends:
  hc:
    servers:
      - {{address: 127.0.0.1:{p1}, name: h1}}
    health_check: {{type: http, path: /health, interval: 200ms, timeout: 100ms}}
"""
    try:
        async with running(text) as engine, httpx.AsyncClient(base_url=admin_url(engine)) as client:
            r = await client.post(
                "/api/v1/backends/hc/servers", json={"address": f"127.0.0.1:{p2}", "name": "h2"}
            )
            assert r.status_code == 201
            assert r.json()["state"] == "unknown"  # no traffic until the first check answers
            state = engine.backends["hc"].servers["h2"]
            await wait_for(lambda: state.last_check is not None)
            r = await client.get("/api/v1/backends/hc/servers/h2")
            assert r.json()["state"] == "healthy"
            assert r.json()["last_check"]["result"] == "ok"
    finally:
        close_servers(servers)


RELOAD_BASE = """\
version: 1
admin: {{bind: 127.0.0.1:0}}
backends:
  api:
    servers:
{servers}
"""


async def test_reload_valid_and_invalid(tmp_path: Path) -> None:
    path = tmp_path / "steelyard.yaml"
    path.write_text(RELOAD_BASE.format(servers="      - {address: 127.0.0.1:9001, name: a}"))
    async with (
        running(path.read_text(), config_path=str(path), filename=str(path)) as engine,
        httpx.AsyncClient(base_url=admin_url(engine)) as client,
    ):
        before = (await client.get("/api/v1/status")).json()
        assert before["config_file"] == str(path)
        path.write_text(
            RELOAD_BASE.format(
                servers="      - {address: 127.0.0.1:9001, name: a}\n"
                "      - {address: 127.0.0.1:9002, name: b}"
            )
        )
        r = await client.post("/api/v1/reload")
        assert r.status_code == 200, r.text
        assert r.json()["reloaded"] is True
        after = (await client.get("/api/v1/status")).json()
        assert after["config_hash"] != before["config_hash"]
        assert r.json()["config_hash"] == after["config_hash"]
        names = [
            s["name"]
            for s in (await client.get("/api/v1/backends")).json()["backends"][0]["servers"]
        ]
        assert names == ["a", "b"]
        # invalid: 400 with every problem, old config stays
        path.write_text("version: 1\nbackends:\n  api:\n    algoritm: maglev\n    servers: []\n")
        r = await client.post("/api/v1/reload")
        assert r.status_code == 400
        body = r.json()
        assert "old config stays" in body["error"]
        assert any(f"{path}:4:" in p and "algorithm" in p for p in body["problems"])
        status = (await client.get("/api/v1/status")).json()
        assert status["config_hash"] == after["config_hash"]
        names = [
            s["name"]
            for s in (await client.get("/api/v1/backends")).json()["backends"][0]["servers"]
        ]
        assert names == ["a", "b"]
        # a file that cannot be read: 400 as well
        path.unlink()
        r = await client.post("/api/v1/reload")
        assert r.status_code == 400
        r = await client.get("/api/v1/reload")
        assert r.status_code == 405


async def test_reload_without_a_file_is_400() -> None:
    async with (
        running(basic_config()) as engine,
        httpx.AsyncClient(base_url=admin_url(engine)) as client,
    ):
        r = await client.post("/api/v1/reload")
    assert r.status_code == 400
    assert "error" in r.json()


async def _read_events(response: httpx.Response, count: int) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    kind = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            assert kind is not None
            events.append((kind, json.loads(line[len("data: ") :])))
            kind = None
            if len(events) >= count:
                break
    return events


async def test_events_stream() -> None:
    async with (
        running(basic_config()) as engine,
        httpx.AsyncClient(base_url=admin_url(engine), timeout=10) as client,
        client.stream("GET", "/api/v1/events") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        engine.backends["api"].drain("a")
        engine.backends["api"].enable("a")
        engine.backends["api"].set_weight("b", 5)
        events = await asyncio.wait_for(_read_events(response, 3), 5)
    assert [k for k, _ in events] == ["drain", "enable", "weight"]
    for kind, data in events:
        assert set(data) == {"type", "time", "backend", "server", "state", "reason"}
        assert data["type"] == kind
        assert data["backend"] == "api"
    assert events[0][1]["server"] == "a" and events[0][1]["state"] == "draining"
    assert events[2][1]["server"] == "b"


async def test_events_stream_history_and_recent() -> None:
    async with running(basic_config()) as engine:
        engine.backends["api"].disable("b")
        async with httpx.AsyncClient(base_url=admin_url(engine), timeout=10) as client:
            async with client.stream("GET", "/api/v1/events?history=5") as response:
                events = await asyncio.wait_for(_read_events(response, 1), 5)
            assert events[0][0] == "disable"
            r = await client.get("/api/v1/events/recent")
            assert r.status_code == 200
            assert r.json()["events"][0]["type"] == "disable"
            assert r.json()["events"][0]["server"] == "b"


async def test_events_stream_ends_on_stop() -> None:
    async with running(basic_config()) as engine:
        client = httpx.AsyncClient(base_url=admin_url(engine), timeout=10)
        async with client.stream("GET", "/api/v1/events") as response:
            assert response.status_code == 200
            await engine.admin.stop()
            # the stream ends instead of hanging
            lines = await asyncio.wait_for(_drain(response), 5)
            assert lines is not None
        await client.aclose()
        engine.admin = None


async def _drain(response: httpx.Response) -> list[str]:
    lines = []
    try:
        async for line in response.aiter_lines():
            lines.append(line)
    except httpx.RemoteProtocolError:
        pass
    return lines


async def test_token_required_on_api_and_metrics() -> None:
    async with running(basic_config(token="s3cret")) as engine:
        url = admin_url(engine)
        async with httpx.AsyncClient(base_url=url) as client:
            protected = [
                ("GET", "/api/v1/status"),
                ("GET", "/api/v1/backends"),
                ("GET", "/api/v1/backends/api/servers/a"),
                ("POST", "/api/v1/backends/api/servers/a/drain"),
                ("PUT", "/api/v1/backends/api/servers/a/weight"),
                ("POST", "/api/v1/backends/api/servers"),
                ("DELETE", "/api/v1/backends/api/servers/a"),
                ("POST", "/api/v1/reload"),
                ("GET", "/api/v1/events"),
                ("GET", "/api/v1/nonexistent"),
                ("GET", "/metrics"),
            ]
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": "s3cret"},
                {"Authorization": "Basic s3cret"},
            ):
                for method, path in protected:
                    r = await client.request(method, path, headers=headers)
                    assert r.status_code == 401, (method, path, headers)
                    assert "error" in r.json()
                    assert r.headers["www-authenticate"].startswith("Bearer")
            # nothing changed
            assert engine.backends["api"].servers["a"].admin.value == "enabled"
            assert "a" in engine.backends["api"].servers
            ok = {"Authorization": "Bearer s3cret"}
            assert (await client.get("/api/v1/status", headers=ok)).status_code == 200
            assert (await client.get("/metrics", headers=ok)).status_code == 200
            r = await client.post("/api/v1/backends/api/servers/a/drain", headers=ok)
            assert r.status_code == 200
            # no token needed for the dashboard and /healthz
            assert (await client.get("/")).status_code == 200
            assert (await client.get("/healthz")).status_code == 200


async def test_malformed_and_oversized_requests() -> None:
    async with running(basic_config()) as engine:
        admin = engine.admin
        reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
        writer.write(b"GARBAGE\x00 / HTTP/1.1\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert data.startswith(b"HTTP/1.1 400 ")
        assert b'"error"' in data

        reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
        writer.write(
            b"POST /api/v1/backends/api/servers HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 2000000\r\n\r\n" + b"x" * 1_100_000
        )
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert data.startswith(b"HTTP/1.1 413 ")

        reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert data.startswith(b"HTTP/1.1 431 ")


async def test_keep_alive_and_pipelining() -> None:
    async with running(basic_config()) as engine:
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.admin.port)
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /api/v1/backends/api/servers/a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert b'"name":"a"' in data


async def test_cross_origin_writes_refused_without_token() -> None:
    async with (
        running(basic_config()) as engine,
        httpx.AsyncClient(base_url=admin_url(engine)) as client,
    ):
        host = admin_url(engine).removeprefix("http://")
        r = await client.post(
            "/api/v1/backends/api/servers/a/drain", headers={"Origin": "http://evil.example"}
        )
        assert r.status_code == 403
        assert engine.backends["api"].servers["a"].admin.value == "enabled"
        r = await client.post(
            "/api/v1/backends/api/servers/a/drain", headers={"Origin": f"http://{host}"}
        )
        assert r.status_code == 200


async def test_head_and_static_files() -> None:
    async with (
        running(basic_config()) as engine,
        httpx.AsyncClient(base_url=admin_url(engine)) as client,
    ):
        r = await client.get("/")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert b"/static/app.js" in r.content
        for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
            r = await client.get(f"/static/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
        for bad in ("/static/nope.js", "/static/..%2fserver.py", "/static/server.py"):
            assert (await client.get(bad)).status_code == 404, bad
        r = await client.head("/healthz")
        assert r.status_code == 200 and r.content == b""
        length = len((await client.get("/healthz")).content)
        assert r.headers["content-length"] == str(length)


async def test_reload_rotates_the_token(tmp_path: Path) -> None:
    path = tmp_path / "steelyard.yaml"
    path.write_text(basic_config(token="old-token"))
    async with (
        running(path.read_text(), config_path=str(path), filename=str(path)) as engine,
        httpx.AsyncClient(base_url=admin_url(engine)) as client,
    ):
        old = {"Authorization": "Bearer old-token"}
        new = {"Authorization": "Bearer new-token"}
        assert (await client.get("/api/v1/status", headers=new)).status_code == 401
        path.write_text(basic_config(token="new-token"))
        r = await client.post("/api/v1/reload", headers=old)
        assert r.status_code == 200, r.text
        assert (await client.get("/api/v1/status", headers=old)).status_code == 401
        assert (await client.get("/api/v1/status", headers=new)).status_code == 200
        assert (await client.get("/metrics", headers=new)).status_code == 200


async def test_expect_100_continue_and_head_on_the_event_stream() -> None:
    async with running(basic_config()) as engine:
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.admin.port)
        body = json.dumps({"weight": 9}).encode()
        writer.write(
            b"PUT /api/v1/backends/api/servers/a/weight HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert engine.backends["api"].servers["a"].weight == 9
        # HEAD on the event stream answers the head and does not hang
        writer.write(b"HEAD /api/v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert b"HTTP/1.1 200 " in rest and b"text/event-stream" in rest


def test_admin_bind_failure_exits_3(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cfg = tmp_path / "steelyard.yaml"
    cfg.write_text(basic_config().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "steelyard", "run", "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        taken.close()
    assert result.returncode == 3
    assert f"127.0.0.1:{port}" in result.stderr and "admin" in result.stderr


async def test_admin_on_ipv6_loopback() -> None:
    import socket

    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    text = basic_config().replace("bind: 127.0.0.1:0", "bind: '[::1]:0'")
    async with running(text) as engine:
        url = admin_url(engine)
        assert url.startswith("http://[::1]:")
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/api/v1/backends")).status_code == 200
