"""A/B: CPU per request of Steelyard builds side by side (for optimisation work).

How this works: like bench/http_bench.py (nginx backends on core 0, each balancer pinned to
core 1, wrk on core 0), but the targets are Steelyard source trees: `--variant NAME=DIR` runs
`python -m steelyard run` with DIR/src first on PYTHONPATH (`--variant new=.` is the working
tree; `git archive COMMIT src | tar -x -C /tmp/old` makes an old one). The bare relay runs too,
as a yardstick. Runs interleave the variants, and for each run the balancer's user and system
CPU seconds (from /proc/PID/stat) are divided by the requests wrk completed, so user time
(Python) and system time (syscalls) show separately. Medians over the runs are printed.

Usage: .venv/bin/python bench/ab_cpu.py --variant old=/tmp/old --variant new=. [--runs 5]
       [--duration 3] [--modes keep-alive,close] [--no-bare]
       [--callgrind [--requests N] [--keep DIR]]

`--variant NAME=@haproxy` runs HAProxy as http_bench does (one thread), for its user and
system time next to Steelyard's.

`--callgrind` measures instead the balancer's user-space machine instructions per request
(`--variant NAME=@bare` for bench/bare_relay.py, `NAME=@haproxy` for HAProxy; Steelyard here
writes its access log to /dev/null unless `--access-log off`, HAProxy logs nothing),
which the other sessions on this shared VM do not disturb: each variant runs under valgrind
(callgrind), gets 200 warm-up requests, its counters are zeroed (`callgrind_control -z`),
then a plain client sends N requests one at a time over one connection (or one connection
each, close mode) and the counters are dumped. It counts uvloop's and the parser's C code
too, but not the kernel (so not the system time). Repeat runs agreed within 0.5% (keep-alive)
and 1.5% (close). `AB_VALGRIND_ARGS` adds valgrind options (e.g. `--cache-sim=yes`, for the
simulated cache misses per function in the kept files).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    CLIENT_CPU,
    LB_CPU,
    REPO,
    VENV_BIN,
    Supervisor,
    free_port,
    install_signal_handlers,
    log,
    median,
    nginx_backends_conf,
    run_wrk,
    start_nginx,
    tree_src,
    wait_http,
    write_wrk_script,
)
from http_bench import MODES, haproxy_conf, steelyard_conf  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def user_sys(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--modes", default="keep-alive")
    ap.add_argument("--no-bare", action="store_true")
    ap.add_argument("--callgrind", action="store_true", help="instructions per request instead")
    ap.add_argument("--requests", type=int, default=2000, help="with --callgrind")
    ap.add_argument("--keep", metavar="DIR", help="with --callgrind: copy the profiles there")
    ap.add_argument(
        "--access-log",
        default="/dev/null",
        metavar="PATH",
        help="Steelyard's access log (default /dev/null; `off` as in http_bench.py)",
    )
    args = ap.parse_args(argv)
    install_signal_handlers()
    workdir = Path(tempfile.mkdtemp(prefix="steelyard-ab-"))
    sup = Supervisor(workdir)
    try:
        ports = [free_port() for _ in range(3)]
        backends = start_nginx(sup, "backends", nginx_backends_conf(workdir, ports), CLIENT_CPU)
        for p in ports:
            if wait_http(p, proc=backends):
                raise SystemExit("backends not serving")
        if args.callgrind:
            return callgrind_runs(args, workdir, ports)
        targets: list[tuple[str, int, int]] = []  # name, port, pid
        for spec in args.variant:
            name, _, src = spec.partition("=")
            port = free_port()
            if src == "@haproxy":  # http_bench's HAProxy, one thread: its user/system split
                conf = haproxy_conf(workdir, port, ports)
                proc = sup.start(name, ["haproxy", "-db", "-f", str(conf)], LB_CPU)
                targets.append((name, port, proc.pid))
                continue
            cfg = steelyard_conf(workdir, port, ports, args.access_log, name)
            env_src = str(tree_src(src))
            argv_ = [str(VENV_BIN / "python"), "-m", "steelyard", "run", "-c", str(cfg)]
            old = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = env_src
            try:
                proc = sup.start(name, argv_, LB_CPU)
            finally:
                if old is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = old
            targets.append((name, port, proc.pid))
        if not args.no_bare:
            port = free_port()
            argv_ = [str(VENV_BIN / "python"), str(REPO / "bench" / "bare_relay.py"), str(port)]
            proc = sup.start("bare-relay", [*argv_, *map(str, ports)], LB_CPU)
            targets.append(("bare-relay", port, proc.pid))
        for name, port, _pid in targets:
            if wait_http(port, timeout=15.0):
                raise SystemExit(f"{name} not serving")
        script = write_wrk_script(workdir)
        for mode in args.modes.split(","):
            res: dict[str, list[tuple[float, float, float]]] = {t[0]: [] for t in targets}
            for _name, port, _ in targets:  # warm-up
                run_wrk(
                    f"http://127.0.0.1:{port}/", script, 1, args.connections, headers=MODES[mode]
                )
            for i in range(args.runs):
                for name, port, pid in targets:
                    u0, s0 = user_sys(pid)
                    r = run_wrk(
                        f"http://127.0.0.1:{port}/",
                        script,
                        args.duration,
                        args.connections,
                        headers=MODES[mode],
                    )
                    u1, s1 = user_sys(pid)
                    n = max(r.requests, 1)
                    res[name].append(((u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6, r.rps))
                    log(
                        f"{mode} run {i + 1} {name:12s} user {res[name][-1][0]:6.1f} "
                        f"sys {res[name][-1][1]:6.1f} us/req, {r.rps:8.0f} req/s"
                    )
            print(f"\n{mode}: median over {args.runs} runs (µs of CPU per request)")
            print(f"{'target':14s} {'user':>7s} {'sys':>7s} {'total':>7s} {'req/s':>8s}")
            for name, rows in res.items():
                u = median([x[0] for x in rows])
                s = median([x[1] for x in rows])
                t = median([x[0] + x[1] for x in rows])
                print(f"{name:14s} {u:7.1f} {s:7.1f} {t:7.1f} {median([x[2] for x in rows]):8.0f}")
        return 0
    finally:
        sup.close()
        shutil.rmtree(workdir, ignore_errors=True)
        time.sleep(0.1)


def _client(port: int, n: int, close: bool) -> None:
    """n GET requests, one at a time: over one connection, or one connection each."""
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    request += b"Connection: close\r\n\r\n" if close else b"\r\n"
    sock: socket.socket | None = None
    for _ in range(n):
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("connection closed before the response head")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        while len(body) < length:
            body += sock.recv(65536)
        if close:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()


def callgrind_runs(args: argparse.Namespace, workdir: Path, ports: list[int]) -> int:
    """--callgrind: user-space instructions per request of each variant, in each mode."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--callgrind needs valgrind (callgrind_control)")
    n = args.requests
    rows: list[tuple[str, str, float]] = []
    for mode in args.modes.split(","):
        close = mode == "close"
        for spec in args.variant:
            name, _, src = spec.partition("=")
            port = free_port()
            out = workdir / f"callgrind.{name}"
            env = dict(os.environ, PYTHONHASHSEED="0")
            argv_ = [
                "taskset",
                "-c",
                LB_CPU,
                "valgrind",
                "--tool=callgrind",
                *os.environ.get("AB_VALGRIND_ARGS", "").split(),
            ]
            argv_ += [f"--callgrind-out-file={out}.%p"]
            if src == "@bare":  # the yardstick: bench/bare_relay.py
                argv_ += [str(VENV_BIN / "python"), str(REPO / "bench" / "bare_relay.py")]
                argv_ += [str(port), *map(str, ports)]
            elif src == "@haproxy":  # http_bench's HAProxy, one thread
                argv_ += ["haproxy", "-db", "-f", str(haproxy_conf(workdir, port, ports))]
            else:
                cfg = steelyard_conf(workdir, port, ports, args.access_log, name)
                env["PYTHONPATH"] = str(tree_src(src))
                argv_ += [str(VENV_BIN / "python"), "-m", "steelyard", "run", "-c", str(cfg)]
            proc = subprocess.Popen(
                argv_, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                if wait_http(port, timeout=180.0):
                    raise SystemExit(f"{name} not serving under valgrind")
                _client(port, 200, close)  # warm-up, then count only what follows
                zero = ["callgrind_control", "-z", str(proc.pid)]
                subprocess.run(zero, check=True, capture_output=True)
                _client(port, n, close)
                dump = ["callgrind_control", "-d", str(proc.pid)]
                subprocess.run(dump, check=True, capture_output=True)
                time.sleep(0.5)
                files = sorted(glob.glob(f"{out}.{proc.pid}.*"), key=os.path.getmtime)
                total = None
                for line in Path(files[-1]).read_text().splitlines():
                    if line.startswith(("summary:", "totals:")):
                        total = int(line.split()[1])
                if total is None:
                    raise SystemExit(f"{name}: no totals in {files[-1]}")
                rows.append((mode, name, total / n))
                if args.keep:
                    Path(args.keep).mkdir(parents=True, exist_ok=True)
                    shutil.copy(files[-1], Path(args.keep) / f"callgrind.{mode}.{name}")
                log(f"{mode} {name:12s} {total / n:10,.0f} instructions per request")
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(f"\nuser-space instructions per request (callgrind, {n} requests, one at a time)")
    for mode, name, per in rows:
        print(f"{mode:11s} {name:14s} {per:12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
