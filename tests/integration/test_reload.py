"""Reload without dropping anything: invalid configs keep the old one, kept listeners keep
their socket and their kept-alive connections, servers keep their state, removed servers
drain, admin changes survive unless the file changed that server (docs/health.md)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import h11
import pytest
from tests.helpers.engine_setup import api_config, start_engine, until
from tests.helpers.flaky_backend import flaky_backend
from tests.helpers.http_backends import H11Client, request
from tests.helpers.steelyard_process import SteelyardProcess

from steelyard.config import ConfigError, load_config_text
from steelyard.core.balancing.base import AdminState

NEW_ROUTE = """      - match: {path_prefix: /new}
        respond: {status: 200, body: "new config"}
"""


async def test_invalid_config_keeps_the_old_one(tmp_path: Path) -> None:
    async with flaky_backend("s1") as s1:
        path = tmp_path / "steelyard.yaml"
        path.write_text(api_config([s1]))
        engine, port = await start_engine(path.read_text(), path)
        try:
            path.write_text(api_config([s1]) + "\nbogus_key: 1\n")
            with pytest.raises(ConfigError):
                await engine.reload()
            assert engine.reloads == 0
            reply = await request(port, "GET", "/")
            assert (reply.status, reply.header("x-server")) == (200, "s1")
        finally:
            await engine.shutdown(1.0)


async def test_kept_listener_keeps_socket_and_kept_alive_connections(tmp_path: Path) -> None:
    async with flaky_backend("s1") as s1:
        engine, port = await start_engine(api_config([s1]))
        try:
            client = await H11Client.connect(port)
            assert (await client.request("GET", "/new")).header("x-server") == "s1"
            server_before = engine.listeners["web"].server
            await engine.reload(load_config_text(api_config([s1], routes=NEW_ROUTE)))
            assert engine.listeners["web"].server is server_before
            assert engine.bound["web"][1] == port
            # the same connection carries on, under the new configuration
            reply = await client.request("GET", "/new")
            assert (reply.status, reply.body) == (200, b"new config")
            assert client.reusable
            await client.close()
            assert (await request(port, "GET", "/")).status == 200
        finally:
            await engine.shutdown(1.0)


async def test_changed_bind_moves_the_listener_and_removed_listener_closes() -> None:
    async with flaky_backend("s1") as s1:
        extra_listener = """  - name: other
    protocol: http
    bind: 127.0.0.1:0
    backend: api
"""
        engine, port = await start_engine(api_config([s1], more_listeners=extra_listener))
        try:
            other_port = engine.bound["other"][1]
            assert (await request(other_port, "GET", "/")).status == 200
            await engine.reload(load_config_text(api_config([s1], bind="127.0.0.2:0")))
            new_port = engine.bound["web"][1]
            assert "other" not in engine.bound
            assert engine.bound["web"][0] == "127.0.0.2"
            client = await H11Client.connect(new_port, "127.0.0.2")
            assert (await client.request("GET", "/")).status == 200
            await client.close()
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", other_port)
        finally:
            await engine.shutdown(1.0)


async def test_servers_keep_health_ejection_and_counters_across_reload() -> None:
    async with flaky_backend("s1") as s1, flaky_backend("s2") as s2:
        from tests.helpers.http_backends import Behaviour

        extra = (
            "    health_check: {type: http, path: /health, interval: 5s, timeout: 1s}\n"
            "    outlier_detection: {consecutive_failures: 2, base_ejection_time: 60s}\n"
        )
        engine, port = await start_engine(api_config([s1, s2], extra))
        try:
            backend = engine.backends["api"]
            await until(lambda: all(s.health.value == "healthy" for s in backend.servers.values()))
            s1.behaviour = Behaviour(status=500)
            for _ in range(8):
                await request(port, "GET", "/")
            s1_state = backend.servers["s1"]
            assert s1_state.state(engine.clock()) == "ejected"
            requests_before = backend.servers["s2"].requests_total
            await engine.reload(load_config_text(api_config([s1, s2], extra)))
            new = engine.backends["api"]
            assert new is not backend
            assert new.servers["s1"] is s1_state
            assert new.servers["s1"].state(engine.clock()) == "ejected"
            assert new.servers["s2"].state(engine.clock()) == "healthy"  # no unknown gap
            assert new.servers["s2"].requests_total == requests_before
            for _ in range(4):
                reply = await request(port, "GET", "/")
                assert (reply.status, reply.header("x-server")) == (200, "s2")
        finally:
            await engine.shutdown(1.0)


async def test_removed_server_drains_in_flight_work() -> None:
    async with flaky_backend("s1") as s1, flaky_backend("s2") as s2:
        engine, port = await start_engine(api_config([s1, s2]))
        try:
            backend = engine.backends["api"]
            pinned = asyncio.create_task(request(port, "GET", "/delay/0.5"))
            await until(lambda: any(s.active for s in backend.servers.values()))
            busy = next(s.name for s in backend.servers.values() if s.active)
            keep = [b for b in (s1, s2) if b.name != busy]
            await engine.reload(load_config_text(api_config(keep)))
            new = engine.backends["api"]
            assert new.servers[busy].state(engine.clock()) == "draining"
            for _ in range(4):
                reply = await request(port, "GET", "/")
                assert reply.header("x-server") == keep[0].name
            reply = await pinned
            assert (reply.status, reply.header("x-server")) == (200, busy)
            await until(lambda: busy not in new.servers, what="gone once idle")
        finally:
            await engine.shutdown(1.0)


async def test_admin_changes_survive_unless_the_file_changed_the_server() -> None:
    async with flaky_backend("s1") as s1, flaky_backend("s2") as s2:
        engine, port = await start_engine(api_config([s1, s2]))
        try:
            engine.backends["api"].drain("s1")
            engine.backends["api"].set_weight("s2", 9)
            await engine.reload(load_config_text(api_config([s1, s2])))
            b = engine.backends["api"]
            assert b.servers["s1"].admin is AdminState.DRAINING
            assert b.servers["s2"].weight == 9
            await engine.reload(load_config_text(api_config([s1, s2], weights={"s1": 2})))
            b = engine.backends["api"]
            assert (b.servers["s1"].admin, b.servers["s1"].weight) == (AdminState.ENABLED, 2)
            assert b.servers["s2"].weight == 9  # the file did not change s2
            seen = {(await request(port, "GET", "/")).header("x-server") for _ in range(12)}
            assert seen == {"s1", "s2"}
        finally:
            await engine.shutdown(1.0)


async def test_sighup_reloads_and_an_invalid_file_keeps_the_old_config(tmp_path: Path) -> None:
    async with flaky_backend("s1") as s1:
        path = tmp_path / "steelyard.yaml"
        access = f"log: {{access: {tmp_path / 'access.log'}}}\n"
        path.write_text(access + api_config([s1]))
        with SteelyardProcess(path) as sy:
            port = await asyncio.to_thread(sy.port, "web")
            assert (await request(port, "GET", "/new")).header("x-server") == "s1"
            mark = len(sy.lines)
            path.write_text(access + api_config([s1], routes=NEW_ROUTE))
            sy.send(signal.SIGHUP)
            await asyncio.to_thread(sy.wait_for, r"reloaded", 15.0, mark)
            assert (await request(port, "GET", "/new")).body == b"new config"
            mark = len(sy.lines)
            path.write_text(access + api_config([s1]) + "\nlisteners: [oops\n")
            sy.send(signal.SIGHUP)
            await asyncio.to_thread(sy.wait_for, r"reload refused, old config kept", 15.0, mark)
            assert (await request(port, "GET", "/new")).body == b"new config"
            sy.send(signal.SIGTERM)
            assert await asyncio.to_thread(sy.wait, 20) == 0


async def test_reload_that_cannot_bind_keeps_the_old_config_whole() -> None:
    import socket

    from steelyard.engine import StartError

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    busy = blocker.getsockname()[1]
    try:
        async with flaky_backend("s1") as s1, flaky_backend("s2") as s2:
            engine, port = await start_engine(api_config([s1]))
            try:
                config_before = engine.config
                backends_before = engine.backends
                taken = f"""  - name: two
    protocol: http
    bind: 127.0.0.1:{busy}
    backend: api
"""
                with pytest.raises(StartError):
                    await engine.reload(
                        load_config_text(api_config([s1, s2], more_listeners=taken))
                    )
                assert engine.config is config_before
                assert engine.backends is backends_before
                assert list(engine.listeners) == ["web"]
                assert engine.reloads == 0
                assert "s2" not in engine.backends["api"].servers
                assert (await request(port, "GET", "/")).status == 200
                await engine.reload(load_config_text(api_config([s1, s2])))
                assert "s2" in engine.backends["api"].servers
            finally:
                await engine.shutdown(1.0)
    finally:
        blocker.close()


async def test_renamed_listener_on_the_same_address_moves_over() -> None:
    async with flaky_backend("s1") as s1:
        engine, port = await start_engine(api_config([s1]))
        try:
            renamed = api_config([s1], bind=f"127.0.0.1:{port}").replace("name: web", "name: www")
            await engine.reload(load_config_text(renamed))
            assert list(engine.listeners) == ["www"]
            assert engine.bound["www"] == ("127.0.0.1", port)
            assert (await request(port, "GET", "/")).status == 200
        finally:
            await engine.shutdown(1.0)


async def test_admin_reload_that_cannot_bind_is_400_and_keeps_the_old_config(
    tmp_path: Path,
) -> None:
    import json
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    busy = blocker.getsockname()[1]
    try:
        async with flaky_backend("s1") as s1:
            path = tmp_path / "steelyard.yaml"
            admin = "admin: {bind: '127.0.0.1:0'}\n"
            path.write_text(admin + api_config([s1]))
            engine, port = await start_engine(path.read_text(), path)
            try:
                admin_port = engine.admin.port
                taken = f"""  - name: two
    protocol: http
    bind: 127.0.0.1:{busy}
    backend: api
"""
                path.write_text(admin + api_config([s1], more_listeners=taken))
                reply = await request(admin_port, "POST", "/api/v1/reload")
                assert reply.status == 400
                assert "cannot bind" in json.loads(reply.body)["error"]
                assert list(engine.listeners) == ["web"]
                assert engine.reloads == 0
                assert (await request(port, "GET", "/")).status == 200
            finally:
                await engine.shutdown(1.0)
    finally:
        blocker.close()


async def test_a_retired_backend_still_cuts_its_leaving_servers_after_drain_timeout() -> None:
    async with flaky_backend("s1") as s1, flaky_backend("s2") as s2:
        two = (
            "backends:\n  other:\n    servers:\n"
            f"      - {{address: '{s2.address}', name: s2}}\n  api:\n"
        )
        text = api_config([s1], "    drain_timeout: 300ms\n").replace("backends:\n  api:\n", two)
        engine, port = await start_engine(text)
        try:
            client = await H11Client.connect(port)
            stuck = asyncio.create_task(client.request("GET", "/delay/30", timeout=20))
            await until(lambda: engine.backends["api"].servers["s1"].active == 1)
            old_state = engine.backends["api"].servers["s1"]
            # reload 1: s1 moves to s2's address (a new server); the old s1 is leaving
            moved = text.replace(
                f"address: '{s1.address}', name: s1", f"address: '{s2.address}', name: s1"
            )
            await engine.reload(load_config_text(moved))
            assert old_state in engine.backends["api"].leaving
            # reload 2: the api backend is gone (its route now goes to `other`)
            gone = f"""
version: 1
listeners:
  - name: web
    protocol: http
    bind: 127.0.0.1:0
    backend: other
backends:
  other:
    servers:
      - {{address: '{s2.address}', name: s2}}
"""
            await engine.reload(load_config_text(gone))
            try:
                reply = await stuck
            except (ConnectionError, asyncio.IncompleteReadError, h11.RemoteProtocolError):
                pass  # cut
            else:
                assert reply.status == 502  # cut before the response head
            await until(lambda: old_state.active == 0, what="leaving server released")
            await client.close()
        finally:
            await engine.shutdown(1.0)
