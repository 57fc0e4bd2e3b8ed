"""Real servers nobody here wrote, behind the L4 listener: Redis (redis-py and
redis-benchmark), PostgreSQL (pgbench), MariaDB and Mosquitto (their own clients)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import uvloop
from tests.helpers.servers import ServerProcess, start_mosquitto, start_redis

from steelyard.config import load_config_text
from steelyard.core.records import RequestRecord
from steelyard.engine import Engine

# production's loop (see tests/integration/conftest.py)
LOOP_FACTORIES = {"uvloop": uvloop.new_event_loop}


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def l4_config(addresses: list[str], algorithm: str = "round_robin") -> Any:
    servers = "\n".join(f"      - {{address: '{a}', name: s{i}}}" for i, a in enumerate(addresses))
    return load_config_text(
        f"""
shutdown_timeout: 2s
listeners:
  - {{name: l4, protocol: tcp, bind: "127.0.0.1:0", backend: b}}
backends:
  b:
    algorithm: {algorithm}
    servers:
{servers}
"""
    )


async def run(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run a client process without blocking the loop the proxy runs on."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.fixture(scope="module")
def redis_servers() -> Iterator[list[ServerProcess]]:
    need("redis-server")
    servers = [start_redis(f"redis{i}") for i in range(3)]
    yield servers
    for server in servers:
        server.stop()


async def test_redis_py_through_listener_ip_hash(redis_servers: list[ServerProcess]) -> None:
    for server in redis_servers:
        redis.Redis(host=server.host, port=server.port).flushall()
    engine = Engine(l4_config([s.address for s in redis_servers], "ip_hash"))
    await engine.start()
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        host, port = engine.bound["l4"]

        def work() -> None:
            for round_ in range(5):  # a new connection (new source port) every round
                client = redis.Redis(host=host, port=port, socket_timeout=5)
                pipe = client.pipeline()
                for i in range(200):
                    pipe.set(f"k{round_}:{i}", f"v{i}")
                assert all(pipe.execute())
                for i in range(0, 200, 20):
                    assert client.get(f"k{round_}:{i}") == f"v{i}".encode()
                assert client.incr("counter") == round_ + 1
                client.close()

        await asyncio.to_thread(work)
        # ip_hash: every connection from 127.0.0.1 reached the same instance
        sizes = [redis.Redis(host=s.host, port=s.port).dbsize() for s in redis_servers]
        assert sorted(sizes) == [0, 0, 5 * 200 + 1]
        for _ in range(100):
            if len(records) == 5:
                break
            await asyncio.sleep(0.02)
        assert len({r.server for r in records}) == 1
    finally:
        await engine.shutdown(1)


async def test_redis_round_robin_spreads_connections(redis_servers: list[ServerProcess]) -> None:
    for server in redis_servers:
        redis.Redis(host=server.host, port=server.port).flushall()
    engine = Engine(l4_config([s.address for s in redis_servers]))
    await engine.start()
    try:
        host, port = engine.bound["l4"]

        def work() -> None:
            for i in range(6):
                client = redis.Redis(host=host, port=port, socket_timeout=5)
                client.set(f"conn{i}", i)
                client.close()

        await asyncio.to_thread(work)
        sizes = [redis.Redis(host=s.host, port=s.port).dbsize() for s in redis_servers]
        assert sizes == [2, 2, 2]
    finally:
        await engine.shutdown(1)


async def test_redis_benchmark_through_listener(redis_servers: list[ServerProcess]) -> None:
    need("redis-benchmark")
    engine = Engine(l4_config([s.address for s in redis_servers], "least_connections"))
    await engine.start()
    try:
        host, port = engine.bound["l4"]
        code, out = await run(
            "redis-benchmark", "-h", host, "-p", str(port),
            "-n", "3000", "-c", "8", "-P", "4", "-t", "ping,set,get,incr,lpush", "--csv",
        )  # fmt: skip
        assert code == 0, out
        assert "error" not in out.lower(), out
        tests = [line.split(",")[0].strip('"') for line in out.splitlines()[1:] if line]
        assert {"SET", "GET", "INCR", "LPUSH"} <= set(tests), out
        servers = engine.backends["b"].servers
        assert all(s.requests_total > 0 for s in servers.values())
        assert sum(s.failures_total for s in servers.values()) == 0
    finally:
        await engine.shutdown(1)


async def test_pgbench_through_listener() -> None:
    need("pgbench", "psql")
    if not reachable("127.0.0.1", 5432):
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    db = f"steelyard_l4_{os.getpid()}"
    env = {"PGUSER": "postgres", "PGCONNECT_TIMEOUT": "5"}
    code, out = await run(
        "psql", "-h", "127.0.0.1", "-d", "test", "-c", f"CREATE DATABASE {db}", env=env
    )
    if code != 0:
        pytest.skip(f"cannot create a scratch database: {out}")
    engine = Engine(l4_config(["127.0.0.1:5432"]))
    await engine.start()
    try:
        host, port = engine.bound["l4"]
        args = ["-h", host, "-p", str(port)]
        code, out = await run("pgbench", *args, "-i", "-s", "1", "-q", db, env=env)
        assert code == 0, out
        code, out = await run("pgbench", *args, "-c", "2", "-t", "50", "-n", db, env=env)
        assert code == 0, out
        assert "number of transactions actually processed: 100/100" in out, out
        assert "number of failed transactions: 0" in out or "failed" not in out, out
    finally:
        await engine.shutdown(1)
        await run(
            "psql", "-h", "127.0.0.1", "-d", "test", "-c", f"DROP DATABASE IF EXISTS {db}", env=env
        )


async def test_mariadb_client_through_listener() -> None:
    need("mariadb")
    if not reachable("127.0.0.1", 3306):
        pytest.skip("no MariaDB on 127.0.0.1:3306")
    engine = Engine(l4_config(["127.0.0.1:3306"]))
    await engine.start()
    try:
        host, port = engine.bound["l4"]
        code, out = await run(
            "mariadb", "-h", host, "-P", str(port), "-u", "root", "--protocol=TCP",
            "-N", "-e", "select 1 + 41; select repeat('x', 100000) is not null",
        )  # fmt: skip
        assert code == 0, out
        assert out.split() == ["42", "1"], out
    finally:
        await engine.shutdown(1)


async def test_mosquitto_pub_sub_through_listener() -> None:
    need("mosquitto_pub", "mosquitto_sub")
    try:
        broker = start_mosquitto()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    engine = Engine(l4_config([broker.address]))
    await engine.start()
    try:
        host, port = engine.bound["l4"]
        sub = await asyncio.create_subprocess_exec(
            "mosquitto_sub", "-h", host, "-p", str(port), "-t", "steelyard/test",
            "-C", "3", "-W", "20", "-q", "1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        got = b""
        try:
            # publish until the subscriber (which connects asynchronously) has seen 3
            for i in range(100):
                code, out = await run(
                    "mosquitto_pub", "-h", host, "-p", str(port), "-t", "steelyard/test",
                    "-m", f"hello {i}", "-q", "1",
                )  # fmt: skip
                assert code == 0, out
                if sub.returncode is not None:
                    break
                try:
                    await asyncio.wait_for(asyncio.shield(sub.wait()), 0.1)
                    break
                except TimeoutError:
                    pass
            got, _ = await asyncio.wait_for(sub.communicate(), 20)
        finally:
            if sub.returncode is None:
                sub.kill()
                await sub.wait()
        lines = got.decode().split()
        assert sub.returncode == 0, got
        assert len([x for x in got.decode().splitlines() if x.startswith("hello ")]) == 3, lines
    finally:
        await engine.shutdown(1)
        broker.stop()
