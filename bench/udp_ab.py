"""CPU per datagram through Steelyard's `protocol: udp` listener: builds side by side.

    .venv/bin/python bench/udp_ab.py [--variant NAME=DIR|NAME=@python ...] [--rounds 5]
        [--duration 3] [--flows 8] [--window 16] [--size 64]

How this works: a UDP echo server (uvloop, in Python) on core 0; on core 1 one Steelyard per
variant, each a `udp` listener in front of the echo server; a client on core 0 keeps `--window`
datagrams in flight on each of `--flows` sockets (one UDP session each) for `--duration`
seconds, round after round, the variants interleaved. For each run the balancer's CPU
(utime+stime from /proc) is divided by the round trips completed; each round trip is two
datagrams through the balancer (the request and the echo). Medians are printed.
The echo server and the client are Python too and share a core, so the round trips per second
say little; the CPU per round trip is the figure to compare.

`NAME=DIR` puts DIR/src first on PYTHONPATH (a `git archive COMMIT src` of another tree);
`NAME=@python` runs this tree with STEELYARD_PURE_PYTHON=1; the default is
`--variant compiled=. --variant python=@python`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    CLIENT_CPU,
    LB_CPU,
    VENV_BIN,
    CpuMeter,
    Supervisor,
    install_signal_handlers,
    log,
    median,
)

ECHO = """
import asyncio, sys, uvloop
class Echo(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, data, addr): self.t.sendto(data, addr)
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", int(sys.argv[1])))
    await asyncio.Event().wait()
uvloop.run(main())
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(workdir: Path, name: str, port: int, echo: int) -> Path:
    path = workdir / f"{name}.yaml"
    path.write_text(
        f"""version: 1
shutdown_timeout: 1s
log: {{access: off}}
listeners:
  - name: dns
    protocol: udp
    bind: 127.0.0.1:{port}
    backend: echo
backends:
  echo:
    servers: [{{address: 127.0.0.1:{echo}}}]
"""
    )
    return path


class Flow(asyncio.DatagramProtocol):
    def __init__(self, payload: bytes, window: int) -> None:
        self.payload = payload
        self.window = window
        self.done = 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        for _ in range(self.window):
            transport.sendto(self.payload)

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.done += 1
        self.transport.sendto(self.payload)


async def drive(port: int, flows: int, window: int, size: int, duration: float) -> int:
    """Round trips completed in `duration` seconds (replies to the first window not counted)."""
    loop = asyncio.get_running_loop()
    payload = b"x" * size
    made = [
        await loop.create_datagram_endpoint(
            lambda: Flow(payload, window), remote_addr=("127.0.0.1", port)
        )
        for _ in range(flows)
    ]
    await asyncio.sleep(0.3)  # sessions set up
    start = sum(p.done for _, p in made)
    await asyncio.sleep(duration)
    total = sum(p.done for _, p in made) - start
    for t, _ in made:
        t.close()
    return total


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=DIR|NAME=@python")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--flows", type=int, default=8)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args(argv)
    variants = args.variant or ["compiled=.", "python=@python"]
    install_signal_handlers()
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    workdir = Path(tempfile.mkdtemp(prefix="steelyard-udp-"))
    sup = Supervisor(workdir)
    try:
        echo = free_udp_port()
        sup.start("echo", [str(VENV_BIN / "python"), "-c", ECHO, str(echo)], CLIENT_CPU)
        targets: list[tuple[str, int, int]] = []
        for spec in variants:
            name, _, src = spec.partition("=")
            port = free_udp_port()
            env: dict[str, str] = {}
            if src == "@python":
                env["STEELYARD_PURE_PYTHON"] = "1"
            elif src != ".":
                env["PYTHONPATH"] = str(Path(src).resolve() / "src")
            argv_ = [str(VENV_BIN / "python"), "-m", "steelyard", "run", "-c"]
            proc = sup.start(name, [*argv_, str(config(workdir, name, port, echo))], LB_CPU, env)
            targets.append((name, port, proc.pid))
        time.sleep(2.0)
        rows: dict[str, list[tuple[float, float]]] = {t[0]: [] for t in targets}
        for i in range(args.rounds + 1):  # round 0 warms up
            for name, port, pid in targets:
                meter = CpuMeter(pid)
                meter.start()
                trips = asyncio.run(drive(port, args.flows, args.window, args.size, args.duration))
                cpu = meter.stop()
                if trips == 0:
                    raise SystemExit(f"{name}: no datagram came back")
                if i:
                    rows[name].append((cpu / trips * 1e6, trips / args.duration))
                    log(f"round {i} {name:10s} {cpu / trips * 1e6:7.1f} us/round trip, "
                        f"{trips / args.duration:8.0f} round trips/s")  # fmt: skip
        print(f"\nmedian of {args.rounds} rounds: balancer CPU per round trip (2 datagrams)")
        for name, vals in rows.items():
            us = median([v[0] for v in vals])
            rate = median([v[1] for v in vals])
            print(f"{name:12s} {us:8.1f} µs   {rate:9.0f} round trips/s")
    finally:
        sup.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
