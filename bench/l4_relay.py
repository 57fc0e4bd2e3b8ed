"""Splice fast path vs Protocol relay: bulk throughput and proxy CPU per GiB.

    python bench/l4_relay.py [--gib 1] [--rounds 3]

A TCP echo server process and a client process (tests/helpers/servers.py) stream N GiB
each way through a Steelyard TCP listener running in this process on uvloop; we report
wall time, throughput (both directions counted) and this process's CPU seconds per GiB
relayed. Not collected by pytest; numbers go to docs/l4.md, never into assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import uvloop  # noqa: E402
from tests.helpers.servers import run_bulk_client, start_echo  # noqa: E402

from steelyard.config import load_config_text  # noqa: E402
from steelyard.engine import Engine  # noqa: E402
from steelyard.net import tcp_proxy  # noqa: E402


async def one(mode: str, address: str, total: int) -> tuple[float, float, int]:
    tcp_proxy.SPLICE_DEFAULT = mode == "splice"
    cfg = load_config_text(
        f"""
listeners:
  - {{name: bulk, protocol: tcp, bind: "127.0.0.1:0", backend: echo}}
backends:
  echo:
    servers: [{{address: "{address}"}}]
"""
    )
    engine = Engine(cfg)
    await engine.start()
    host, port = engine.bound["bulk"]
    cpu0, t0 = time.process_time(), time.perf_counter()
    _, _, count = await asyncio.to_thread(run_bulk_client, host, port, total, 600, hashing=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    spliced = engine.listeners["bulk"].runtime.spliced_total
    await engine.shutdown(1)
    assert count == total
    return wall, cpu, spliced


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    total = int(args.gib * (1 << 30))
    echo = start_echo()
    try:
        t0 = time.perf_counter()
        await asyncio.to_thread(run_bulk_client, echo.host, echo.port, total, 600, hashing=False)
        direct = time.perf_counter() - t0
        print(f"direct (no proxy): {direct:.2f}s  {2 * args.gib / direct:.2f} GiB/s")
        for mode in ("protocol", "splice") * args.rounds:
            wall, cpu, spliced = await one(mode, echo.address, total)
            gib = 2 * args.gib  # both directions
            print(
                f"{mode:9s} wall {wall:6.2f}s  {gib / wall:5.2f} GiB/s  "
                f"proxy CPU {cpu / gib:5.2f} s/GiB  spliced={spliced}"
            )
    finally:
        echo.stop()


if __name__ == "__main__":
    uvloop.run(main())
