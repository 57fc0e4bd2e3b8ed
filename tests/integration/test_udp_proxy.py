"""L4 UDP listener: sessions per client, replies to the right client, hashing, LRU, idle."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop
from tests.helpers.servers import ServerProcess, free_port, start_udp_echo

from steelyard.config import load_config_text
from steelyard.core.records import RequestRecord
from steelyard.engine import Engine

# production runs on uvloop; the stdlib loop must work too (see tests/integration/conftest.py)
LOOP_FACTORIES = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture(scope="module")
def echoes() -> Iterator[list[ServerProcess]]:
    servers = [start_udp_echo(tag=f"s{i}:") for i in range(3)]
    yield servers
    for server in servers:
        server.stop()


def udp_config(ports: list[int], algorithm: str = "round_robin", extra: str = "") -> Any:
    servers = "\n".join(
        f"      - {{address: 127.0.0.1:{p}, name: s{i}}}" for i, p in enumerate(ports)
    )
    return load_config_text(
        f"""
shutdown_timeout: 2s
listeners:
  - name: dns
    protocol: udp
    bind: 127.0.0.1:0
    backend: b
{extra}
backends:
  b:
    algorithm: {algorithm}
    servers:
{servers}
"""
    )


class Client:
    """A blocking-free UDP client socket driven from the loop."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.target = target

    async def ask(self, data: bytes, timeout: float = 5.0) -> bytes:
        loop = asyncio.get_running_loop()
        self.sock.sendto(data, self.target)
        return await asyncio.wait_for(loop.sock_recv(self.sock, 65535), timeout)

    def close(self) -> None:
        self.sock.close()


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_each_loop_is_the_one_named(request: pytest.FixtureRequest) -> None:
    """LOOP_FACTORIES (through the conftest hook) really runs these tests on both loops."""
    loop_id = request.node.callspec.id.split("-")[0]
    assert loop_id in LOOP_FACTORIES
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop) == (loop_id == "uvloop")


async def test_echo_through_one_session(echoes: list[ServerProcess]) -> None:
    cfg = udp_config([echoes[0].port], extra="    session_idle_timeout: 300ms")
    engine = Engine(cfg)
    await engine.start()
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        client = Client(engine.bound["dns"])
        for i in range(20):
            payload = f"datagram {i}".encode()
            assert await client.ask(payload) == b"s0:" + payload
        runtime = engine.listeners["dns"].runtime
        assert len(runtime.sessions) == 1
        assert engine.backends["b"].servers["s0"].active == 1  # a lease per session
        # idle: the session ends, the lease is released, one record is written
        await wait_for(lambda: records)
        assert engine.backends["b"].servers["s0"].active == 0
        rec = records[0]
        assert rec.server == "s0" and rec.backend == "b" and rec.method is None
        assert rec.bytes_in == sum(len(f"datagram {i}") for i in range(20))
        assert rec.bytes_out == rec.bytes_in + 20 * 3
        assert rec.client == f"127.0.0.1:{client.sock.getsockname()[1]}"
        client.close()
    finally:
        await engine.shutdown(1)


async def test_replies_are_dropped_while_the_listening_socket_is_full(
    echoes: list[ServerProcess], caplog: pytest.LogCaptureFixture
) -> None:
    """While the listening transport has paused writing (its socket's send buffer is full and
    it holds more than its high-water mark), datagrams from servers are dropped and counted,
    not queued without bound; once it resumes they flow again. Loopback never fills a UDP
    send buffer, so the test makes the transport's calls itself."""
    engine = Engine(udp_config([echoes[0].port]))
    await engine.start()
    try:
        client = Client(engine.bound["dns"])
        assert await client.ask(b"before") == b"s0:before"
        runtime = engine.listeners["dns"].runtime
        with caplog.at_level("INFO", logger="steelyard"):
            runtime.pause_writing()
            for i in range(3):
                with pytest.raises(TimeoutError):
                    await client.ask(b"lost %d" % i, timeout=0.3)
            assert runtime.replies_dropped == 3
            runtime.resume_writing()
        assert "dropping datagrams to clients until it drains" in caplog.text
        assert "3 datagrams to clients were dropped" in caplog.text
        assert await client.ask(b"after") == b"s0:after"
        assert runtime.replies_dropped == 3
        client.close()
    finally:
        await engine.shutdown(1)


def test_durations_have_sub_millisecond_precision(echoes: list[ServerProcess]) -> None:
    """uvloop's loop.time() moves in whole milliseconds: a session's logged duration is
    measured with time.perf_counter() instead (timers stay on the loop's clock)."""

    async def main() -> list[float]:
        cfg = udp_config([echoes[0].port], extra="    session_idle_timeout: 100ms")
        engine = Engine(cfg)
        await engine.start()
        records: list[RequestRecord] = []
        engine.recorders.append(records.append)
        clients = [Client(engine.bound["dns"]) for _ in range(20)]
        try:
            for i, client in enumerate(clients):
                assert await client.ask(b"q%d" % i) == b"s0:q%d" % i
            await wait_for(lambda: len(records) == 20)
            return [r.duration * 1000 for r in records]
        finally:
            for client in clients:
                client.close()
            await engine.shutdown(1)

    durations = uvloop.run(main())  # the loop `steelyard run` uses
    assert len(durations) == 20
    assert any(abs(d - round(d)) > 1e-6 for d in durations), durations


async def test_replies_go_to_the_right_client(echoes: list[ServerProcess]) -> None:
    engine = Engine(udp_config([e.port for e in echoes]))
    await engine.start()
    try:
        clients = [Client(engine.bound["dns"]) for _ in range(8)]
        for round_ in range(3):
            answers = await asyncio.gather(
                *(c.ask(f"client {i} round {round_}".encode()) for i, c in enumerate(clients))
            )
            for i, answer in enumerate(answers):
                assert answer.endswith(f"client {i} round {round_}".encode())
        runtime = engine.listeners["dns"].runtime
        assert len(runtime.sessions) == 8
        # round robin spread the sessions over the three servers, and each client stayed put
        tags = {(await c.ask(b"x"))[:3] for c in clients}
        assert tags == {b"s0:", b"s1:", b"s2:"}
        for c in clients:
            c.close()
    finally:
        await engine.shutdown(1)


@pytest.mark.parametrize("algorithm", ["ip_hash", "maglev", "consistent_hash"])
async def test_hash_keeps_a_client_ip_on_one_server(
    echoes: list[ServerProcess], algorithm: str
) -> None:
    engine = Engine(udp_config([e.port for e in echoes], algorithm))
    await engine.start()
    try:
        tags = set()
        for _ in range(6):  # new source ports, new sessions, same IP
            client = Client(engine.bound["dns"])
            tags.add((await client.ask(b"q"))[:3])
            client.close()
        assert len(tags) == 1
    finally:
        await engine.shutdown(1)


async def test_dns_like_exchange() -> None:
    """A DNS-shaped request/response: ids and answers must match per client."""

    class Resolver(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            ident, _flags, qd, _, _, _ = struct.unpack("!6H", data[:12])
            question = data[12:]
            name_end = question.index(b"\x00") + 1 + 4
            labels = []
            pos = 0
            while question[pos]:
                n = question[pos]
                labels.append(question[pos + 1 : pos + 1 + n].decode())
                pos += 1 + n
            octet = sum(map(len, labels)) % 250
            answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([10, 0, 0, octet])
            header = struct.pack("!6H", ident, 0x8180, qd, 1, 0, 0)
            self.t.sendto(header + question[:name_end] + answer, addr)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Resolver, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    engine = Engine(udp_config([port]))
    await engine.start()
    try:

        def query(ident: int, name: str) -> bytes:
            qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
            return struct.pack("!6H", ident, 0x0100, 1, 0, 0, 0) + qname + b"\x00\x01\x00\x01"

        clients = [Client(engine.bound["dns"]) for _ in range(5)]
        names = ["a.example", "bb.example", "ccc.example", "dddd.example", "eeeee.example"]
        replies = await asyncio.gather(
            *(
                c.ask(query(1000 + i, n))
                for i, (c, n) in enumerate(zip(clients, names, strict=True))
            )
        )
        for i, reply in enumerate(replies):
            ident, flags, _, ancount, _, _ = struct.unpack("!6H", reply[:12])
            assert ident == 1000 + i and flags & 0x8000 and ancount == 1
            octet = sum(len(p) for p in names[i].split(".")) % 250
            assert reply[-4:] == bytes([10, 0, 0, octet])
        for c in clients:
            c.close()
    finally:
        await engine.shutdown(1)
        transport.close()


async def test_session_table_is_bounded_lru(echoes: list[ServerProcess]) -> None:
    engine = Engine(udp_config([echoes[0].port], extra="    max_sessions: 2"))
    await engine.start()
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        runtime = engine.listeners["dns"].runtime
        a, b, c = (Client(engine.bound["dns"]) for _ in range(3))
        await a.ask(b"1")
        await b.ask(b"2")
        await a.ask(b"3")  # a is now the most recently used
        await c.ask(b"4")  # evicts b
        assert len(runtime.sessions) == 2
        assert [r.client.rsplit(":", 1)[1] for r in records] == [str(b.sock.getsockname()[1])]
        assert await b.ask(b"5") == b"s0:5"  # b comes back with a new session, evicting a
        assert len(records) == 2
        for cl in (a, b, c):
            cl.close()
    finally:
        await engine.shutdown(1)


async def test_refused_server_counts_as_connect_failure() -> None:
    dead = free_port(socket.SOCK_DGRAM)
    engine = Engine(udp_config([dead]))
    await engine.start()
    try:
        client = Client(engine.bound["dns"])
        for _ in range(3):
            client.sock.sendto(b"anyone?", client.target)
            await asyncio.sleep(0.05)
        await wait_for(lambda: engine.backends["b"].servers["s0"].failures_total >= 1)
        assert engine.backends["b"].servers["s0"].active == 0
        client.close()
    finally:
        await engine.shutdown(1)


async def test_shutdown_closes_sessions(echoes: list[ServerProcess]) -> None:
    engine = Engine(udp_config([echoes[0].port]))
    await engine.start()
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    client = Client(engine.bound["dns"])
    await client.ask(b"hi")
    await asyncio.wait_for(engine.shutdown(3), 5)
    assert len(records) == 1
    assert engine.backends["b"].servers["s0"].active == 0
    client.close()
