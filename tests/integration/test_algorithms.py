"""Every balancing algorithm through the running proxy, with real test backends (issue 3,
"Tests and proof", the integration bullet).

- Shares follow the weights (servers a, b, c with weights 1, 2, 5): exactly per cycle for round
  robin; within binomial bounds for random, power of two and the hashes (a different
  `x-key` per request); for the load-aware algorithms under concurrent load. With one request
  at a time nothing is in flight, and the load-aware algorithms do what their definition
  says: least_connections breaks the tie in turn (even shares), least_response_time picks the
  lowest estimate per weight.
- least_connections, least_response_time and power_of_two send clearly less than 1/3 to a
  server made slow; round robin, the control, keeps sending it exactly 1/3.
- ip_hash: over HTTP every request comes from 127.0.0.1 (one key): the client stays pinned,
  and every server can be its server (disabling the owner moves it to the next one, enabling
  it brings it back). Shares over many client addresses are measured on a tcp listener with
  `accept_proxy_protocol`, where the PROXY header's source address is the client IP (the
  http listener does not read PROXY headers yet).
- consistent_hash and maglev send a key to the same server every time, and two real
  `steelyard run` processes with different PYTHONHASHSEED route 50 keys alike.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from tests.helpers.engine_setup import api_config
from tests.helpers.http_backends import (
    Behaviour,
    H11Client,
    HttpBackend,
    RawClient,
    http_backend,
    parse_responses,
    steelyard,
)
from tests.helpers.steelyard_process import SteelyardProcess

from steelyard.core.proxy_protocol import encode_v1

WEIGHTS = {"a": 1, "b": 2, "c": 5}
CYCLE = sum(WEIGHTS.values())
N = 400  # 50 full round-robin cycles


@pytest.fixture
async def trio() -> AsyncIterator[list[HttpBackend]]:
    async with http_backend("a") as a, http_backend("b") as b, http_backend("c") as c:
        yield [a, b, c]


def config(
    servers: list[HttpBackend],
    algorithm: str,
    weights: dict[str, int] | None = WEIGHTS,
    hash_on: str | None = None,
) -> str:
    extra = f"    algorithm: {algorithm}\n"
    if hash_on:
        extra += f"    hash_on: '{hash_on}'\n"
    return api_config(servers, extra, weights=weights)


async def sequential(
    port: int, n: int, key: Callable[[int], str] | None = None, target: str = "/"
) -> list[str]:
    """x-server of n requests sent one after the other on one keep-alive connection."""
    client = await H11Client.connect(port)
    seen: list[str] = []
    try:
        for i in range(n):
            headers = [("x-key", key(i))] if key else []
            reply = await client.request("GET", target, headers=headers)
            assert reply.status == 200, reply
            seen.append(str(reply.header("x-server")))
    finally:
        await client.close()
    return seen


async def concurrent(port: int, workers: int, each: int, target: str = "/") -> list[str]:
    """x-server of workers x each requests: `workers` keep-alive clients in parallel."""
    seen: list[str] = []

    async def worker() -> None:
        client = await H11Client.connect(port)
        try:
            for _ in range(each):
                reply = await client.request("GET", target)
                assert reply.status == 200, reply
                seen.append(str(reply.header("x-server")))
        finally:
            await client.close()

    await asyncio.gather(*(worker() for _ in range(workers)))
    return seen


def assert_binomial_shares(seen: list[str], z: float = 5.0) -> None:
    """Each server's count within z standard deviations of n x weight / total weight."""
    counts = Counter(seen)
    n = len(seen)
    assert set(counts) <= set(WEIGHTS), counts
    for name, weight in WEIGHTS.items():
        p = weight / CYCLE
        mean = n * p
        bound = z * math.sqrt(n * p * (1 - p))
        assert abs(counts[name] - mean) <= bound, (
            f"{name} (weight {weight}) got {counts[name]} of {n}, expected {mean:.0f} ± "
            f"{bound:.0f}; all: {dict(counts)}"
        )


def key_of(i: int) -> str:
    return f"user-{i}"


# -- distribution follows the weights ---------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["round_robin", "weighted_round_robin"])
async def test_round_robin_gives_every_server_its_weight_in_every_cycle(
    trio: list[HttpBackend], algorithm: str
) -> None:
    async with steelyard(config(trio, algorithm)) as sy:
        seen = await sequential(sy.port, N)
    assert Counter(seen) == {name: w * N // CYCLE for name, w in WEIGHTS.items()}
    for start in range(0, N, CYCLE):
        cycle = seen[start : start + CYCLE]
        assert Counter(cycle) == WEIGHTS, f"cycle at {start}: {''.join(cycle)}"
    # smooth: the heavy server never runs more than twice in a row (5 of 8 spread out)
    assert "ccc" not in "".join(seen)


@pytest.mark.parametrize("algorithm", ["random", "power_of_two"])
async def test_random_draws_follow_the_weights(trio: list[HttpBackend], algorithm: str) -> None:
    """power_of_two with one request at a time: both candidates are idle, the first drawn (in
    proportion to weight) wins, so the shares are weighted random ones too."""
    async with steelyard(config(trio, algorithm)) as sy:
        seen = await sequential(sy.port, N)
    assert_binomial_shares(seen)


@pytest.mark.parametrize("algorithm", ["consistent_hash", "maglev"])
async def test_hash_shares_follow_the_weights_and_a_key_keeps_its_server(
    trio: list[HttpBackend], algorithm: str
) -> None:
    async with steelyard(config(trio, algorithm, hash_on="header:x-key")) as sy:
        first = await sequential(sy.port, N, key_of)
        # the same keys again, in reverse order on a new connection
        again = await sequential(sy.port, N, lambda i: key_of(N - 1 - i))
    # the keys are fixed and the hashes stable, so these counts never change between runs
    assert_binomial_shares(first)
    assert again[::-1] == first


@pytest.mark.parametrize("algorithm", ["least_connections", "least_response_time", "power_of_two"])
async def test_load_aware_shares_follow_the_weights_under_concurrent_load(
    trio: list[HttpBackend], algorithm: str
) -> None:
    """16 clients in parallel on equally slow (20 ms) servers: in-flight per weight evens out at
    2:4:10, so the servers answer in proportion 1:2:5."""
    async with steelyard(config(trio, algorithm)) as sy:
        seen = await concurrent(sy.port, workers=16, each=25, target="/delay/0.02")
    counts = Counter(seen)
    n = len(seen)
    for name, weight in WEIGHTS.items():
        expected = n * weight / CYCLE
        assert abs(counts[name] - expected) <= n / 10, (name, dict(counts))
    assert counts["a"] < counts["b"] < counts["c"], dict(counts)


async def test_least_connections_shares_evenly_while_every_server_is_idle(
    trio: list[HttpBackend],
) -> None:
    """One request at a time: every server has 0 in flight, and the tie goes round in turn
    (SPEC §2: "ties broken round robin"; docs/which-algorithm.md, canary), weights or not."""
    async with steelyard(config(trio, "least_connections")) as sy:
        seen = await sequential(sy.port, N - 1)
    for start in range(0, N - 1, 3):
        assert sorted(seen[start : start + 3]) == ["a", "b", "c"], "".join(seen[start : start + 9])


async def test_least_response_time_while_idle_samples_every_server(
    trio: list[HttpBackend],
) -> None:
    """One request at a time. A server without a sample costs nothing while idle, so each
    server gets a first request (none is starved); from then on cost = estimate x (0 + 1) /
    weight. Which server takes the rest depends on those first samples (one slow answer from
    a loaded test machine weighs for a while: peak EWMA), so only the sampling is asserted;
    at this load weights act as cost divisors, not shares (Finagle's model)."""
    async with steelyard(config(trio, "least_response_time")) as sy:
        seen = await sequential(sy.port, N // 2)
    counts = Counter(seen)
    assert set(counts) == {"a", "b", "c"}, counts
    assert sum(counts.values()) == N // 2


# -- a slow server ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "load_aware"),
    [
        ("least_connections", True),
        ("least_response_time", True),
        ("power_of_two", True),
        ("round_robin", False),  # the control: blind to load, it keeps b at exactly 1/3
    ],
)
async def test_load_aware_algorithms_send_less_to_a_slow_server(
    trio: list[HttpBackend], algorithm: str, load_aware: bool
) -> None:
    trio[1].behaviour = Behaviour(delay=0.1)  # b answers 100 ms late; a and c at once
    async with steelyard(config(trio, algorithm, weights=None)) as sy:
        seen = await concurrent(sy.port, workers=20, each=15)
    counts = Counter(seen)
    n = len(seen)
    if load_aware:
        assert counts["b"] < n / 6, f"slow b got {counts['b']} of {n}: {dict(counts)}"
        # the fast two share the rest; under least_response_time not necessarily evenly: one
        # slow early answer (a loaded CI machine) raises a server's peak-EWMA estimate at once
        # and it decays over 10 s, longer than this test (seen: a 246, c 47, b 7 of 300)
        fair = n / 4 if algorithm != "least_response_time" else n / 20
        assert counts["a"] > fair and counts["c"] > fair, dict(counts)
    else:
        assert counts == {"a": n // 3, "b": n // 3, "c": n // 3}


# -- ip_hash --------------------------------------------------------------------------------------


async def test_ip_hash_pins_the_client_and_every_server_can_take_it(
    trio: list[HttpBackend],
) -> None:
    """All requests come from 127.0.0.1, so there is one key: no shares to measure. The client
    stays on one server across connections; disabling its server moves it to the next one on
    the ring (sticky again), so each server in turn becomes its server; enabling the first one
    brings it back there (only the removed server's clients move)."""
    async with steelyard(config(trio, "ip_hash")) as sy:
        backend = sy.engine.backends["api"]

        async def owner() -> str:
            seen: list[str] = []
            for _ in range(3):  # fresh connections: another client port, the same IP
                seen += await sequential(sy.port, 10)
            assert len(set(seen)) == 1, Counter(seen)
            return seen[0]

        owners = [await owner()]
        for _ in range(2):
            backend.disable(owners[-1])
            owners.append(await owner())
        assert sorted(owners) == ["a", "b", "c"], owners

        backend.enable(owners[0])
        backend.enable(owners[1])
        last: list[str] = []

        async def back_home() -> bool:
            last[:] = await sequential(sy.port, 1)
            return last[0] == owners[0]

        # the new ring is built off the event loop; until it is installed the old one serves
        for _ in range(100):
            if await back_home():
                break
            await asyncio.sleep(0.02)
        assert last == [owners[0]], (owners, last)
        assert await owner() == owners[0]


L4 = """  - name: l4
    protocol: tcp
    bind: 127.0.0.1:0
    backend: api
    accept_proxy_protocol: true
"""


async def via_proxy_header(port: int, client_ip: str) -> str:
    """x-server of one request on a tcp listener, sent as if from client_ip (PROXY v1)."""
    client = await RawClient.connect(port)
    try:
        await client.send(
            encode_v1(client_ip, 40000, "127.0.0.1", 80)
            + b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        (reply,) = parse_responses(await client.read_until_close())
    finally:
        await client.close()
    assert reply.status == 200, reply
    return str(reply.header("x-server"))


async def test_ip_hash_shares_over_many_client_addresses_follow_the_weights(
    trio: list[HttpBackend],
) -> None:
    clients = [f"10.{i % 7}.{i // 256}.{i % 256}" for i in range(N)]
    text = api_config(trio, "    algorithm: ip_hash\n", weights=WEIGHTS, more_listeners=L4)
    async with steelyard(text, listener="l4") as sy:
        seen = [await via_proxy_header(sy.port, ip) for ip in clients]
        again = [await via_proxy_header(sy.port, ip) for ip in clients[:50]]
    # fixed addresses and stable hashes: these counts never change between runs
    assert_binomial_shares(seen)
    assert again == seen[:50]


# -- the same keys in two processes -------------------------------------------------------------


def two_hash_backends(servers: list[HttpBackend]) -> str:
    lines = ["version: 1", "shutdown_timeout: 2s", "listeners:", "  - name: web"]
    lines += ["    bind: 127.0.0.1:0", "    routes:"]
    for path in ("ring", "maglev", "ip"):
        lines += [f"      - match: {{path_prefix: /{path}}}", f"        backend: {path}"]
    lines.append("backends:")
    for name, algorithm in (("ring", "consistent_hash"), ("maglev", "maglev"), ("ip", "ip_hash")):
        lines += [f"  {name}:", f"    algorithm: {algorithm}"]
        if algorithm != "ip_hash":
            lines.append("    hash_on: 'header:x-key'")
        lines.append("    servers:")
        lines += [
            f"      - {{address: '{s.address}', name: {s.name}, weight: {WEIGHTS[s.name]}}}"
            for s in servers
        ]
    return "\n".join(lines) + "\n"


async def test_two_processes_with_different_hash_seeds_route_keys_alike(
    trio: list[HttpBackend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "steelyard.yaml"
    path.write_text(two_hash_backends(trio))
    keys = 50
    routes: list[dict[str, list[str]]] = []
    for seed in ("1", "2"):
        monkeypatch.setenv("PYTHONHASHSEED", seed)  # read when the process is started
        with SteelyardProcess(path) as sy:
            port = await asyncio.to_thread(sy.port)
            routes.append(
                {
                    "ring": await sequential(port, keys, key_of, "/ring"),
                    "maglev": await sequential(port, keys, key_of, "/maglev"),
                    "ip": await sequential(port, 5, target="/ip"),
                }
            )
            assert sy.proc.poll() is None, sy.lines[-20:]
    one, two = routes
    # not trivially equal: the keys spread over every server
    assert set(one["ring"]) == set(one["maglev"]) == {"a", "b", "c"}, one
    assert len(set(one["ip"])) == 1
    assert one == two
