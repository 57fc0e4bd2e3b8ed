"""Graceful shutdown, reload on kept-alive connections, route actions, the real program."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.helpers.http_backends import (
    H11Client,
    RawClient,
    http_backend,
    proxy_config,
    request,
    steelyard,
)

from steelyard.config import load_config_text


async def test_graceful_shutdown() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        idle = await H11Client.connect(sy.port)
        assert (await idle.request("GET", "/")).status == 200
        busy = await H11Client.connect(sy.port)
        pending = asyncio.create_task(busy.request("GET", "/delay/0.5"))
        await asyncio.sleep(0.1)
        shutdown = asyncio.create_task(sy.engine.shutdown(5.0))
        # the idle keep-alive connection is closed at once
        assert await asyncio.wait_for(idle.reader.read(), 2) == b""
        r = await pending  # the in-flight request finishes
        assert r.status == 200 and r.header("connection") == "close"
        assert await asyncio.wait_for(busy.reader.read(), 2) == b""
        await asyncio.wait_for(shutdown, 5)
        assert sy.listener().connections_active == 0
        await idle.close()
        await busy.close()


async def test_shutdown_timeout_aborts_what_remains() -> None:
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]})) as sy:
        busy = await H11Client.connect(sy.port)
        pending = asyncio.create_task(busy.request("GET", "/delay/5"))
        await asyncio.sleep(0.1)
        await asyncio.wait_for(sy.engine.shutdown(0.3), 3)
        assert sy.listener().connections_active == 0
        try:
            await asyncio.wait_for(pending, 3)
            raise AssertionError("the request should have been cut")
        except (ConnectionError, Exception) as exc:  # h11 or socket error: cut, not completed
            assert not isinstance(exc, AssertionError)
        await busy.close()


async def test_reload_applies_to_kept_alive_connections() -> None:
    async with http_backend("a1") as a1, http_backend("b1") as b1:
        cfg_a = proxy_config({"a": [a1], "b": [b1]})
        routes_b = "      - match: {path_prefix: /}\n        backend: b\n"
        cfg_b = proxy_config({"a": [a1], "b": [b1]}, routes_b)
        async with steelyard(cfg_a) as sy:
            client = await H11Client.connect(sy.port)
            assert (await client.request("GET", "/")).header("x-server") == "a1"
            await sy.engine.reload(load_config_text(cfg_b))
            r = await client.request("GET", "/")
            assert r.header("x-server") == "b1"
            assert sy.listener().accepted == 1  # the same connection carried on
            await client.close()


async def test_route_actions_end_to_end() -> None:
    routes = (
        "      - match: {path_prefix: /api}\n"
        "        strip_prefix: /api\n"
        "        backend: api\n"
        "        request_headers:\n"
        "          set: {x-who: '{client_ip} {request_id} {server}'}\n"
        "          add: {x-multi: two}\n"
        "          remove: [x-secret]\n"
        "        response_headers:\n"
        "          set: {x-server: hidden}\n"
        "          add: {x-served-by: '{server}'}\n"
    )
    async with http_backend("s1") as s1, steelyard(proxy_config({"api": [s1]}, routes)) as sy:
        r = await request(
            sy.port,
            "GET",
            "/api/items?x=1",
            headers=[("x-secret", "s"), ("x-multi", "one"), ("x-request-id", "r7")],
        )
        seen = s1.requests[0]
        assert seen.target == "/items?x=1"
        assert seen.header("x-who") == "127.0.0.1 r7 s1"
        assert seen.header_all("x-multi") == ["one", "two"]
        assert seen.header("x-secret") is None
        assert r.header_all("x-server") == ["hidden"]
        assert r.header("x-served-by") == "s1"


async def test_hash_on_header_is_sticky() -> None:
    async with http_backend("s1") as s1, http_backend("s2") as s2, http_backend("s3") as s3:
        cfg = proxy_config(
            {"api": [s1, s2, s3]}, algorithm="consistent_hash", hash_on="header:x-user"
        )
        async with steelyard(cfg) as sy:
            for user in ("alice", "bob", "carol", "dave"):
                seen: Counter[str | None] = Counter()
                for _ in range(5):
                    r = await request(sy.port, headers=[("x-user", user)])
                    seen[r.header("x-server")] += 1
                assert len(seen) == 1, (user, seen)


async def test_weighted_split_end_to_end() -> None:
    routes = (
        "      - match: {path_prefix: /}\n        split:\n"
        "          - {backend: a, weight: 1}\n          - {backend: b, weight: 1}\n"
    )
    async with (
        http_backend("a1") as a1,
        http_backend("b1") as b1,
        steelyard(proxy_config({"a": [a1], "b": [b1]}, routes)) as sy,
    ):
        names: Counter[str | None] = Counter()
        for _ in range(40):
            names[(await request(sy.port)).header("x-server")] += 1
        assert names["a1"] > 5 and names["b1"] > 5


def _free_port() -> int:
    # subprocess tests only: the child binds it right after
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def test_real_program(tmp_path: Path) -> None:
    async with http_backend("s1") as s1:
        port = _free_port()
        cfg = proxy_config({"api": [s1]}).replace("127.0.0.1:0", f"127.0.0.1:{port}")
        path = tmp_path / "steelyard.yaml"
        path.write_text(cfg)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "steelyard", "run", "-c", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            r = None
            for _ in range(100):
                try:
                    r = await request(port, "GET", "/echo")
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            assert r is not None and r.status == 200
            assert r.json()["server"] == "s1"
            raw = await RawClient.connect(port)
            await raw.send(
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
            )
            assert (await raw.read_until_close()).startswith(b"HTTP/1.1 400 ")
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 20)
            assert code == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert '"status": 200' in out or '"status":200' in out, out[-2000:]


async def test_tls_listener_sets_forwarded_proto_https(tmp_path: Path) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    listener = (
        f"    tls:\n      certificates:\n        - {{cert: '{cert_path}', key: '{key_path}'}}"
    )
    async with (
        http_backend("s1") as s1,
        steelyard(proxy_config({"api": [s1]}, listener=listener)) as sy,
    ):
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", sy.port, ssl=ctx, server_hostname="localhost"
        )
        client = H11Client(reader, writer)
        r = await client.request("GET", "/echo")
        assert r.status == 200
        assert s1.requests[0].header("x-forwarded-proto") == "https"
        r = await client.request("GET", "/")  # keep-alive over TLS
        assert r.body == b"s1"
        writer.close()
