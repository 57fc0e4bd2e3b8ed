"""CPU per keep-alive request and per new connection through Steelyard's L4 listener, A/B.

    .venv/bin/python bench/l4_ab.py [--base-src DIR] [--tree NAME=DIR ...] [--rounds 8]
        [--duration 2] [--modes keep-alive,close] [--targets steelyard,base,haproxy,bare,bare-raw,bare-epoll]
        [--strace]

How this works: the nginx backends of the load benchmark (bench/benchlib.py) on core 0, and on
core 1 a Steelyard `protocol: tcp` listener from this tree ("steelyard"), optionally the same
from another source tree ("base": `--base-src` is put first on its PYTHONPATH, e.g. a
`git archive <commit> src | tar -x -C DIR` of an older commit; `--tree NAME=DIR` adds more
such targets, each named NAME; like tcp_bench.py they run without an access log, and a NAME
ending in "-log" writes one to /dev/null, to show what it costs),
HAProxy `mode tcp`, and "bare": the floor of the approach,
a ~40-line uvloop Protocol relay (accept, create_connection, write what each side sends to
the other, close when either side closes; no balancing, no timers, no records or access
log; see `serve_bare`). Two more floors without uvloop's transports: "bare-raw" (plain
descriptors, each watched with loop.add_reader/add_writer) and "bare-epoll" (the sockets in
one epoll set of our own, whose descriptor alone the loop watches). wrk
(core 0) drives each one in turn, round after round, so that all of them see the same noise;
we report each run's balancer CPU (utime+stime from /proc) per request and the median and
minimum per target. On a shared machine CPU per request is the figure to compare; req/s is
printed but set by whoever else is using the cores. `--strace` also counts system calls per
request (strace -c -f on the balancer during the run; it slows the run down, so CPU figures
from such rounds are not comparable).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    CLIENT_CPU,
    LB_CPU,
    CpuMeter,
    Supervisor,
    free_port,
    median,
    nginx_backends_conf,
    run_wrk,
    start_nginx,
    steelyard_cmd,
    wait_http,
    write_wrk_script,
)
from tcp_bench import haproxy_tcp_conf, steelyard_tcp_conf  # noqa: E402

MODES = {"keep-alive": (), "close": ("Connection: close",)}


def strace_counts(path: Path, requests: int) -> list[tuple[str, float]]:
    out = []
    for line in path.read_text().splitlines()[2:]:
        parts = line.split()
        if len(parts) >= 5 and parts[3].isdigit():
            out.append((parts[-1], int(parts[3]) / max(requests, 1)))
    return out


def serve_bare(port: int, backends: list[int]) -> None:
    """The bare relay target (run as `l4_ab.py --serve-bare PORT BACKEND...`)."""
    import asyncio
    import itertools

    import uvloop

    servers = itertools.cycle(backends)

    class Up(asyncio.Protocol):
        def __init__(self, down: Down) -> None:
            self.down = down

        def data_received(self, data: bytes) -> None:
            self.down.transport.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.down.transport.is_closing():
                self.down.transport.close()

    class Down(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.up: Any = None
            self.early: list[bytes] = []
            asyncio.get_running_loop().create_task(self.connect())

        async def connect(self) -> None:
            loop = asyncio.get_running_loop()
            try:
                up, _ = await loop.create_connection(lambda: Up(self), "127.0.0.1", next(servers))
            except OSError:
                self.transport.close()
                return
            if self.transport.is_closing():
                up.close()
                return
            self.up = up
            for data in self.early:
                up.write(data)

        def data_received(self, data: bytes) -> None:
            if self.up is None:
                self.early.append(data)
            else:
                self.up.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.up is not None and not self.up.is_closing():
                self.up.close()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(Down, "127.0.0.1", port, backlog=1024)
        await asyncio.Event().wait()

    uvloop.run(serve())


def _raw_listener(port: int) -> Any:
    """The raw floors' listening socket (non-blocking, on 127.0.0.1:port)."""
    import socket

    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(1024)
    lsock.setblocking(False)
    return lsock


def _raw_pair(fd: int, port: int) -> tuple[Any, Any]:
    """An accepted descriptor as a non-blocking socket, and a socket connecting to the
    backend on `port` (both with TCP_NODELAY): the raw floors' two legs."""
    import _socket
    import socket

    nodelay = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    down = _socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
    down.setblocking(False)
    down.setsockopt(*nodelay)
    up = _socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    up.setsockopt(*nodelay)
    up.connect_ex(("127.0.0.1", port))
    return down, up


def serve_bare_raw(port: int, backends: list[int]) -> None:
    """The raw-socket floor (`l4_ab.py --serve-bare-raw PORT BACKEND...`): the bare relay
    without uvloop transports. Sockets are plain descriptors watched with loop.add_reader /
    add_writer, accepted and connected by hand; each readable side is read once and what came
    is written to the other side (a short write is finished before reading again). No
    balancing, no timers, no records."""
    import asyncio
    import itertools
    import os
    import socket

    import uvloop

    servers = itertools.cycle(backends)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        lsock = _raw_listener(port)
        accept = lsock._accept

        def close(down: int, up: int) -> None:
            for fd in (down, up):
                loop.remove_reader(fd)
                loop.remove_writer(fd)
                os.close(fd)

        def pump(src: int, dst: int, down: int, up: int) -> None:
            try:
                data = os.read(src, 262144)
            except BlockingIOError:
                return
            except OSError:
                close(down, up)
                return
            if not data:
                close(down, up)
                return
            try:
                n = os.write(dst, data)
            except BlockingIOError:
                n = 0
            except OSError:
                close(down, up)
                return
            if n < len(data):  # finish it before reading more from src
                rest = [memoryview(data)[n:]]
                loop.remove_reader(src)

                def flush() -> None:
                    try:
                        m = os.write(dst, rest[0])
                    except BlockingIOError:
                        return
                    except OSError:
                        close(down, up)
                        return
                    rest[0] = rest[0][m:]
                    if not rest[0]:
                        loop.remove_writer(dst)
                        loop.add_reader(src, pump, src, dst, down, up)

                loop.add_writer(dst, flush)

        def connected(down: int, usock: Any) -> None:
            up = usock.fileno()
            loop.remove_writer(up)
            if usock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                os.close(down)
                usock.close()
                return
            usock.detach()
            loop.add_reader(down, pump, down, up, down, up)
            loop.add_reader(up, pump, up, down, down, up)

        def on_accept() -> None:
            for _ in range(64):
                try:
                    fd, _addr = accept()
                except BlockingIOError:
                    return
                down, usock = _raw_pair(fd, next(servers))
                down.detach()  # (the relay works on the descriptor)
                loop.add_writer(usock.fileno(), connected, fd, usock)

        loop.add_reader(lsock.fileno(), on_accept)
        await asyncio.Event().wait()

    uvloop.run(serve())


def serve_bare_epoll(port: int, backends: list[int]) -> None:
    """A raw-socket floor with a private epoll (`l4_ab.py --serve-bare-epoll PORT BACKEND...`):
    like bare-raw, but the sockets sit in one epoll set of our own (each registered once;
    close() takes it out), and only that set's descriptor is watched by the loop
    (add_reader once), so uvloop never adds or removes a watcher per connection."""
    import asyncio
    import itertools
    import select

    import uvloop

    servers = itertools.cycle(backends)
    IN, OUT, HUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLRDHUP

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        ep = select.epoll()
        lsock = _raw_listener(port)
        lfd = lsock.fileno()
        accept = lsock._accept
        conns: dict[int, Any] = {}

        class Pair:
            __slots__ = ("down", "up", "dfd", "ufd", "early", "connected", "closed")

            def __init__(self, down: Any, up: Any) -> None:
                self.down, self.up = down, up
                self.dfd, self.ufd = down.fileno(), up.fileno()
                self.early = b""
                self.connected = False
                self.closed = False

            def event(self, fd: int, ev: int) -> None:
                if self.closed:
                    return
                if fd == self.ufd and not self.connected:
                    if ev & OUT:
                        self.connected = True
                        ep.modify(fd, IN | HUP)
                        if self.early:
                            self.up.send(self.early)
                            self.early = b""
                    if not ev & IN:
                        return
                src, dst = (self.down, self.up) if fd == self.dfd else (self.up, self.down)
                try:
                    data = src.recv(262144)
                except BlockingIOError:
                    return
                except OSError:
                    self.close()
                    return
                if not data:
                    self.close()
                    return
                if dst is self.up and not self.connected:
                    self.early += data
                    return
                try:
                    dst.send(data)  # (a floor: a short write is not handled)
                except OSError:
                    self.close()

            def close(self) -> None:
                self.closed = True
                del conns[self.dfd], conns[self.ufd]
                self.down.close()  # (closing a descriptor takes it out of the epoll set)
                self.up.close()

        def on_events() -> None:
            for fd, ev in ep.poll(0, 256):
                if fd == lfd:
                    for _ in range(64):
                        try:
                            dfd, _addr = accept()
                        except BlockingIOError:
                            break
                        pair = Pair(*_raw_pair(dfd, next(servers)))
                        conns[dfd] = conns[pair.ufd] = pair
                        ep.register(dfd, IN | HUP)
                        ep.register(pair.ufd, IN | OUT | HUP)
                    continue
                pair = conns.get(fd)
                if pair is not None:
                    pair.event(fd, ev)

        ep.register(lfd, IN)
        loop.add_reader(ep.fileno(), on_events)
        await asyncio.Event().wait()

    uvloop.run(serve())


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-bare":
        serve_bare(int(sys.argv[2]), [int(p) for p in sys.argv[3:]])
        return 0
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-bare-epoll":
        serve_bare_epoll(int(sys.argv[2]), [int(p) for p in sys.argv[3:]])
        return 0
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-bare-raw":
        serve_bare_raw(int(sys.argv[2]), [int(p) for p in sys.argv[3:]])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-src", type=Path, help="another tree's src/ for the 'base' target")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                    help="one more target: Steelyard from DIR (a src/ directory)")  # fmt: skip
    ap.add_argument("--targets", default="steelyard,base,haproxy")
    ap.add_argument("--modes", default="keep-alive,close")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--duration", type=int, default=2)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--strace", action="store_true")
    args = ap.parse_args()
    names = [t for t in args.targets.split(",") if t != "base" or args.base_src]
    trees = {"base": args.base_src} if args.base_src else {}
    for spec in args.tree:
        name, _, src = spec.partition("=")
        trees[name] = Path(src)
        if name not in names:
            names.append(name)
    workdir = Path(tempfile.mkdtemp(prefix="steelyard-l4-ab-"))
    sup = Supervisor(workdir)
    try:
        ports = [free_port() for _ in range(3)]
        backends = start_nginx(sup, "backends", nginx_backends_conf(workdir, ports), CLIENT_CPU)
        for p in ports:
            if wait_http(p, proc=backends) is not None:
                raise SystemExit(f"backend on {p} not serving")
        script = write_wrk_script(workdir)
        targets = {}
        for name in names:
            port = free_port()
            if name in ("bare", "bare-raw", "bare-epoll"):
                argv = [sys.executable, __file__, f"--serve-{name}", str(port), *map(str, ports)]
                proc = sup.start(name, argv, LB_CPU)
            elif name == "haproxy":
                cfg = haproxy_tcp_conf(workdir, port, free_port(), ports, ports[0])
                proc = sup.start(name, ["haproxy", "-db", "-f", str(cfg)], LB_CPU)
            else:
                cfg = steelyard_tcp_conf(workdir, port, free_port(), ports, ports[0], name)
                if name.endswith("-log"):  # what the access log costs (HAProxy logs nothing)
                    text = cfg.read_text().replace("access: off", "access: /dev/null")
                    cfg.write_text(text)
                env = {}
                if name in trees:
                    env["PYTHONPATH"] = str(trees[name].resolve())
                proc = sup.start(name, [*steelyard_cmd(), "run", "-c", str(cfg)], LB_CPU, env)
            if wait_http(port, timeout=15, proc=proc) is not None:
                raise SystemExit(f"{name} not serving:\n{proc.log_tail()}")
            targets[name] = (port, proc)
        for mode in args.modes.split(","):
            for port, _ in targets.values():  # warm-up
                run_wrk(f"http://127.0.0.1:{port}/", script, 1, args.connections,
                        headers=MODES[mode])  # fmt: skip
            cpu_per_req: dict[str, list[float]] = {n: [] for n in targets}
            for _ in range(args.rounds):
                for name, (port, proc) in targets.items():
                    meter = CpuMeter(proc.pid)
                    meter.start()
                    trace = workdir / f"strace-{name}.txt"
                    st = None
                    if args.strace:
                        argv = ["strace", "-c", "-f", "-p", str(proc.pid), "-o", str(trace)]
                        st = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
                        time.sleep(0.5)
                    try:
                        res = run_wrk(f"http://127.0.0.1:{port}/", script, args.duration,
                                      args.connections, headers=MODES[mode])  # fmt: skip
                    except RuntimeError as exc:
                        print(f"{mode} {name}: wrk failed: {exc}", flush=True)
                        continue
                    finally:
                        if st is not None:
                            st.send_signal(2)
                            st.wait()
                    cpu = meter.stop()
                    if not res.requests:
                        continue
                    us = cpu / res.requests * 1e6
                    cpu_per_req[name].append(us)
                    print(f"{mode:10s} {name:10s} {res.rps:9,.0f} req/s {us:7.1f} us/req "
                          f"errors {res.errors}", flush=True)  # fmt: skip
                    if st is not None:
                        calls = strace_counts(trace, res.requests)
                        print("   syscalls/request: " + ", ".join(
                            f"{c} {n:.2f}" for c, n in calls), flush=True)  # fmt: skip
            for name, xs in cpu_per_req.items():
                if xs:
                    print(f"== {mode} {name}: median {median(xs):.1f} us/req, min {min(xs):.1f}"
                          f" ({len(xs)} runs)", flush=True)  # fmt: skip
        return 0
    finally:
        sup.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
