"""Micro benchmark of the whole HTTP data path in one process, without sockets.

How this works: a real Engine and HttpListener on a uvloop loop that never runs; the downstream
connection and pooled upstream connections get fake transports that just count bytes. One
cycle feeds wrk's keep-alive request to the downstream connection (parse, route, pick, pool,
rebuild the head, "send" it) and nginx's response to the upstream connection that received it
(parse, rebuild, "send" downstream, release, return to the pool, record + access log line to
/dev/null). What remains is the Python cost of one proxied request: the syscalls and the event
loop are left out, so this shows what code changes save, on a noisy machine too (best of
several repeats).

Usage: .venv/bin/python bench/micro_proxy.py [--number N] [--repeat R] [--profile] [--close]
       [--count] [--callgrind]
(run it with PYTHONPATH=OTHER_TREE/src to measure another source tree)

`--callgrind` counts machine instructions per request under valgrind (only the measured loop:
the requests run inside itertools.starmap and callgrind collects inside `starmap_next` only;
PYTHONHASHSEED=0). Slow (~1 min) but nearly deterministic: repeated runs agree within ~0.5%,
where the clock on this shared VM swings by 10% or more.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import os
import pstats
import re
import subprocess
import sys
import timeit
from typing import Any

import uvloop

from steelyard.config import load_config_text
from steelyard.engine import Engine
from steelyard.logs import AccessLog
from steelyard.net.http_proxy import HttpListener
from steelyard.net.pool import UpstreamPools

CONFIG = """\
version: 1
listeners:
  - name: web
    protocol: http
    bind: 127.0.0.1:0
    routes:
      - match: {path_prefix: /}
        backend: app
backends:
  app:
    algorithm: round_robin
    servers:
      - {address: 127.0.0.1:9001}
      - {address: 127.0.0.1:9002}
      - {address: 127.0.0.1:9003}
"""

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 14:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 14\r\nConnection: keep-alive\r\n"
    b"x-server: s1\r\n\r\nhello from s1\n"
)


class FakeTransport:
    """Counts what is written; `last` is the last write (the proxy's output, for checks)."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written = 0
        self.last = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.last = data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name in ("peername", "sockname") else default

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def setup() -> tuple[Any, Any, AccessLog]:
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    cfg = load_config_text(CONFIG)
    engine = Engine(cfg, loop=loop)
    engine.pools = pools = UpstreamPools(loop)
    log = AccessLog("/dev/null")
    engine.recorders.append(log)
    listener = HttpListener(engine, cfg.listeners[0])
    for port in (9001, 9002, 9003):
        for _ in range(2):
            conn = pools.new_connection(("127.0.0.1", port))
            conn.connection_made(FakeTransport(("127.0.0.1", port)))  # type: ignore[arg-type]
            pools.put(conn)
    return listener, pools, log


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--number", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--profile", action="store_true", help="cProfile: calls per request")
    ap.add_argument("--close", action="store_true", help="Connection: close clients")
    ap.add_argument(
        "--count",
        action="store_true",
        help="count Python calls and bytecodes per request (deterministic, unlike time)",
    )
    ap.add_argument(
        "--callgrind",
        action="store_true",
        help="machine instructions per request, under valgrind (needs valgrind; ~1 min)",
    )
    ap.add_argument("--starmap", type=int, default=0, help=argparse.SUPPRESS)  # (callgrind run)
    args = ap.parse_args(argv)
    if args.callgrind:
        n = 1000
        cmd = ["valgrind", "--tool=callgrind", "--toggle-collect=starmap_next"]
        cmd += ["--callgrind-out-file=/dev/null", sys.executable, __file__, "--starmap", str(n)]
        cmd += ["--close"] if args.close else []
        env = dict(os.environ, PYTHONHASHSEED="0")
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stderr
        found = re.search(r"Collected : (\d+)", out)
        if found is None:
            raise SystemExit(f"no instruction count in valgrind's output:\n{out}")
        print(f"{int(found.group(1)) / n:,.0f} instructions per proxied request (callgrind)")
        return 0
    listener, _pools, log = setup()
    down_t = FakeTransport(("127.0.0.1", 40000))
    down = listener.protocol_factory()
    down.connection_made(down_t)  # type: ignore[arg-type]

    def one() -> None:
        down.data_received(REQUEST)
        ex = down.exchange
        ex.upstream.data_received(RESPONSE)

    def one_close() -> None:
        d = listener.protocol_factory()
        d.connection_made(FakeTransport(("127.0.0.1", 40001)))  # type: ignore[arg-type]
        d.data_received(REQUEST_CLOSE)
        d.exchange.upstream.data_received(RESPONSE)
        d.connection_lost(None)

    fn = one_close if args.close else one
    fn()
    if args.starmap:  # under callgrind (see --callgrind): warm up, then the counted loop
        for _ in range(50):
            fn()
        for _ in itertools.starmap(fn, itertools.repeat((), args.starmap)):
            pass
        log.close()
        return 0
    if not args.close:
        assert down.exchange is None and down_t.last.startswith(b"HTTP/1.1 200 OK"), down_t.last
    if args.count:
        n = 200
        counts = [0, 0]  # calls, opcodes
        per_code: dict[str, int] = {}

        def tracer(frame: Any, event: str, arg: Any) -> Any:
            code = frame.f_code
            if event == "call":
                counts[0] += 1
                frame.f_trace_opcodes = True
            elif event == "opcode":
                counts[1] += 1
                key = f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_qualname}"
                per_code[key] = per_code.get(key, 0) + 1
            return tracer

        sys.settrace(tracer)
        for _ in range(n):
            fn()
        sys.settrace(None)
        print(f"{counts[0] / n:.1f} Python calls, {counts[1] / n:.0f} bytecodes per request")
        by_file: dict[str, int] = {}
        for key, k in per_code.items():
            by_file[key.split(":")[0]] = by_file.get(key.split(":")[0], 0) + k
        print(
            "by file: "
            + ", ".join(
                f"{f} {k / n:.0f}" for f, k in sorted(by_file.items(), key=lambda kv: -kv[1])
            )
        )
        for key, k in sorted(per_code.items(), key=lambda kv: -kv[1])[:30]:
            print(f"{k / n:8.1f}  {key}")
    elif args.profile:
        prof = cProfile.Profile()
        n = args.number
        prof.enable()
        for _ in range(n):
            fn()
        prof.disable()
        stats = pstats.Stats(prof)
        calls = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
        print(f"{calls / n:.1f} function calls per request")
        stats.sort_stats("tottime").print_stats(25)
    else:
        best = min(timeit.repeat(fn, number=args.number, repeat=args.repeat)) / args.number
        print(f"{best * 1e6:8.2f} µs per proxied request (Python only: no syscalls, no loop)")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
