"""HTTP/1.1 load benchmark: Steelyard against HAProxy and nginx (issue 2, `make bench`).

How this works: one nginx (one worker, core 0) serves three small fixed-body backends on
127.0.0.1. HAProxy (`mode http`, `nbthread 1`, `http-reuse always`), nginx (`worker_processes 1`,
upstream keepalive) and Steelyard (an http listener, a round_robin backend of the same three
servers) each run pinned to core 1 and keep connections to the backends alive. wrk runs on core 0,
once per target per round, and the rounds interleave the targets so that drift on the machine
hits all of them alike. For each run we record req/s, p50/p99 latency (wrk's own histogram) and
the balancer's CPU seconds (utime+stime of its whole process tree from /proc) / requests.
`bare-relay` (bench/bare_relay.py) is the least an HTTP relay in uvloop + httptools can do: the
yardstick for what Python costs here, not a competitor. Then
the whole thing again with `Connection: close` clients. At the end py-spy samples Steelyard under
each kind of load and the top functions are printed (for bench/RESULTS.md).

Every header a balancer adds is the same for all three: X-Forwarded-For, X-Forwarded-Proto,
X-Forwarded-Host and an X-Request-Id (Steelyard adds these by SPEC §3, so HAProxy and nginx are
told to as well; otherwise the comparison would not be like for like). No balancer writes an
access log (Steelyard: `log: {access: off}`); the extra target `steelyard-accesslog` shows what
Steelyard's JSON access log to a file costs.

Usage: .venv/bin/python bench/http_bench.py [--quick] [--runs N] [--duration S] [--targets ...]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    CLIENT_CPU,
    LB_CPU,
    REPO,
    VENV_BIN,
    CoreMeter,
    CpuMeter,
    Proc,
    Supervisor,
    WrkResult,
    children_cpu_seconds,
    fmt_num,
    free_port,
    have,
    install_signal_handlers,
    log,
    median,
    nginx_backends_conf,
    ratio,
    run_wrk,
    start_nginx,
    steelyard_build,
    steelyard_cmd,
    tree_src,
    versions,
    wait_http,
    wait_quiet,
    write_wrk_script,
    wrk_table,
)

ALL_TARGETS = ("direct", "haproxy", "nginx", "bare-relay", "steelyard")
# not run by default: Steelyard writing its JSON access log to a file (its default is stdout)
EXTRA_TARGETS = ("steelyard-accesslog",)
MODES: dict[str, tuple[str, ...]] = {
    "keep-alive": (),
    "close": ("Connection: close",),
}
# issue 2's targets, Steelyard / HAProxy in the same run
TARGETS_RPS = 0.75
TARGET_P99 = 1.5
# a mode's verdict is void when the median run of HAProxy or Steelyard lost more than this much
# of a core to the hypervisor (steal): the ratios then measure the neighbours, not the code
VOID_STEAL = 0.10


# ----------------------------------------------------------------------------- configs


def haproxy_conf(workdir: Path, port: int, backend_ports: list[int]) -> Path:
    servers = "\n".join(f"    server s{i + 1} 127.0.0.1:{p}" for i, p in enumerate(backend_ports))
    conf = f"""global
    nbthread 1
    maxconn 8000
    pidfile {workdir}/haproxy.pid

defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 60s
    timeout http-keep-alive 75s
    timeout http-request 10s
    option http-keep-alive
    http-reuse always

frontend web
    bind 127.0.0.1:{port}
    option forwardfor
    unique-id-format %{{+X}}o%ci%cp%fi%fp%Ts%rt%pid
    unique-id-header X-Request-Id
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-response set-header X-Request-Id %[unique-id]
    default_backend app

backend app
    balance roundrobin
{servers}
"""
    path = workdir / "haproxy.cfg"
    path.write_text(conf)
    return path


def nginx_lb_conf(workdir: Path, port: int, backend_ports: list[int]) -> Path:
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in backend_ports)
    conf = f"""worker_processes 1;
daemon off;
master_process on;
pid {workdir}/nginx-lb.pid;
error_log {workdir}/nginx-lb.error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_body_temp_path {workdir}/nginx-tmp/body;
    proxy_temp_path {workdir}/nginx-tmp/proxy;
    upstream app {{
{servers}
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-Id $request_id;
            add_header X-Request-Id $request_id;
        }}
    }}
}}
"""
    (workdir / "nginx-tmp").mkdir(exist_ok=True)
    path = workdir / "nginx-lb.conf"
    path.write_text(conf)
    return path


def steelyard_conf(
    workdir: Path,
    port: int,
    backend_ports: list[int],
    access_log: str = "off",
    name: str = "steelyard",
) -> Path:
    servers = "\n".join(f"      - {{address: 127.0.0.1:{p}}}" for p in backend_ports)
    conf = f"""version: 1
shutdown_timeout: 2s
log: {{access: {access_log}}}
listeners:
  - name: web
    protocol: http
    bind: 127.0.0.1:{port}
    routes:
      - match: {{path_prefix: /}}
        backend: app
backends:
  app:
    algorithm: round_robin
    servers:
{servers}
"""
    path = workdir / f"{name}.yaml"
    path.write_text(conf)
    return path


# ----------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    port: int
    proc: Proc | None = None  # None: the backend itself (no balancer to meter)
    pending: str | None = None  # why it is not measured

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    non2xx: int
    cpu_us_per_req: float  # NaN for "direct"
    lb_core_busy: float  # fraction of one core; NaN for "direct"
    others: float  # CPU used by programs not ours during the run, in cores (noise)
    client_core_busy: float  # how busy the wrk/backends core was (1.0 = it was the limit)
    steal: float = 0.0  # time the hypervisor gave our cores to other guests, in cores (noise)


@dataclass
class Summary:
    target: str
    mode: str
    runs: int
    rps_median: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    lb_core_busy: float
    others: float
    client_core_busy: float
    errors: int
    pending: str | None = None
    steal: float = 0.0  # median over the runs, in cores
    samples: list[Sample] = field(default_factory=list)


def measure(
    target: Target,
    mode: str,
    script: Path,
    duration: float,
    conns: int,
    helpers: Sequence[int] = (),
) -> Sample:
    """One wrk run; `helpers` are the PIDs of our other processes (backends) for the noise count."""
    meter = CpuMeter(target.proc.pid) if target.proc else None
    ours = [CpuMeter(pid) for pid in helpers]
    cores = CoreMeter()
    for m in [meter, *ours]:
        if m is not None:
            m.start()
    wrk_before = children_cpu_seconds()
    cores.start()
    res: WrkResult = run_wrk(target.url, script, duration, conns, headers=MODES[mode])
    busy = cores.stop()
    wrk_cpu = children_cpu_seconds() - wrk_before
    cpu = meter.stop() if meter else 0.0
    ours_cpu = sum(m.stop() for m in ours) + wrk_cpu + cpu
    wall = res.duration_s or duration
    all_busy = sum(b for b, _steal in busy.values())
    steal = sum(st for _b, st in busy.values())
    client_busy = busy.get(f"cpu{CLIENT_CPU}", (float("nan"), 0.0))[0]
    if not meter:
        cpu = float("nan")
    return Sample(
        rps=res.rps,
        p50_ms=res.p50_ms,
        p90_ms=res.p90_ms,
        p99_ms=res.p99_ms,
        max_ms=res.max_ms,
        errors=res.errors,
        non2xx=res.non2xx,
        cpu_us_per_req=cpu / res.requests * 1e6 if res.requests else float("nan"),
        lb_core_busy=cpu / wall,
        others=max(0.0, all_busy - ours_cpu / wall),
        client_core_busy=client_busy,
        steal=steal,
    )


def disturbed(s: Sample, args: argparse.Namespace) -> bool:
    return s.others > args.max_others or s.steal > args.max_steal


def measure_quiet(
    target: Target,
    mode: str,
    script: Path,
    args: argparse.Namespace,
    helpers: Sequence[int],
    budget: list[int],
) -> Sample:
    """measure(), repeated (while budget[0] > 0) when other programs loaded the machine by more
    than --max-others of a core or the hypervisor stole more than --max-steal of one; the
    sample with the least such noise is kept. Balancers only: the budget is not spent on the
    direct baseline."""
    best = measure(target, mode, script, args.duration, args.connections, helpers)
    tries = 0
    while target.proc is not None and disturbed(best, args) and budget[0] > 0:
        if tries == 2:  # spread the budget over the runs instead of spending it on one
            break
        tries += 1
        budget[0] -= 1
        log(
            f"  {target.name}: others used {best.others:.0%} of a core, steal "
            f"{best.steal:.1%}; measuring again"
        )
        time.sleep(1.0)
        s = measure(target, mode, script, args.duration, args.connections, helpers)
        if s.others + s.steal < best.others + best.steal:
            best = s
    return best


def summarise(target: Target, mode: str, samples: list[Sample]) -> Summary:
    rps = [s.rps for s in samples]
    pending = target.pending or (None if samples else "every run failed (see the log)")
    return Summary(
        target=target.name,
        mode=mode,
        runs=len(samples),
        rps_median=median(rps),
        rps_min=min(rps) if rps else float("nan"),
        rps_max=max(rps) if rps else float("nan"),
        p50_ms=median([s.p50_ms for s in samples]),
        p99_ms=median([s.p99_ms for s in samples]),
        cpu_us_per_req=median([s.cpu_us_per_req for s in samples]),
        lb_core_busy=median([s.lb_core_busy for s in samples]),
        others=median([s.others for s in samples]),
        client_core_busy=median([s.client_core_busy for s in samples]),
        errors=sum(s.errors for s in samples),
        pending=pending,
        steal=median([s.steal for s in samples]),
        samples=samples,
    )


# ----------------------------------------------------------------------------- py-spy


FRAME_LINE = re.compile(r":\d+\)$")
UNRESOLVED = re.compile(r"^0x[0-9a-f]+ \(")
# a thread whose innermost named frame is one of these is waiting, not working (py-spy --native
# cannot tell idle threads apart, so we do it here)
WAITING = (
    "uv__io_poll",  # epoll_wait in uvloop's loop: the event loop is idle
    "pthread_cond_timedwait",
    "pthread_cond_wait",
    "PyThread_acquire_lock_timed",
    "sem_wait",
    "sem_timedwait",
    "epoll_wait",
    "select",
    "poll",
)


# each busy sample goes to the first category one of whose patterns occurs in its stack
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("access log (format, logging, hand-off, writer thread)",
     ("Engine.record", "steelyard/logs.py", "logging/", "QueueListener")),
    ("socket syscalls (read, write, accept, connect, close)",
     ("write (libc", "read (libc", "writev (libc", "recv", "send", "accept4 (libc",
      "connect (libc", "close (libc", "shutdown (libc", "setsockopt (libc", "getsockopt (libc",
      "epoll_ctl (libc", "splice (libc", "uv__close_nocancel", "io_uring_enter")),
    ("garbage collector", ("gc_collect",)),
    ("HTTP parsing (httptools and our callbacks)", ("core/http1/parser.py", "llhttp")),
    ("building and rewriting heads", ("core/http1/headers.py",)),
    ("routing, balancing, backend, pool, timers",
     ("core/routing", "core/backend.py", "core/balancing", "core/load.py", "pool.py",
      "call_at", "call_later")),
    ("proxy code (http_proxy.py, tcp_proxy.py)", ("http_proxy.py", "tcp_proxy.py")),
)  # fmt: skip
OTHER = "event loop and the rest"


def categorise(frames: list[str], thread: str) -> str:
    """The access log, syscalls and the GC claim a sample if they occur anywhere in it (they
    are reached from many places); otherwise the innermost frame that belongs to a category
    decides (so a head built inside a parser callback counts as building heads)."""
    if "_monitor" in thread:  # logging's QueueListener thread
        return CATEGORIES[0][0]
    joined = ";".join(frames)
    for name, patterns in CATEGORIES[:3]:
        if any(p in joined for p in patterns):
            return name
    for frame in reversed(frames):
        for name, patterns in CATEGORIES[3:]:
            if any(p in frame for p in patterns):
                return name
    return OTHER


def summarise_profile(raw: Path, top: int = 15) -> dict[str, object]:
    """Where a busy Steelyard spends its time, from py-spy's raw (collapsed) output.

    Samples in which a thread waits (see WAITING) are dropped. `self` ranks innermost frames;
    `inclusive` ranks every frame below the shared trunk (frames on > 90% of the samples, such
    as `Runner.run` or `uv_run`, say nothing and are left out). `threads` is each thread's share.
    """
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    thread_c: Counter[str] = Counter()
    cat_c: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        thread = "(one thread)"
        frames: list[str] = []
        for f in stack.split(";"):
            if not f or f.startswith("process "):  # --subprocesses: "process PID:cmdline"
                continue
            if f.startswith("thread ("):  # --threads: "thread (TID): NAME"
                thread = f.split(": ", 1)[-1]
                continue
            frames.append(FRAME_LINE.sub(")", f))
        named = [f for f in frames if not UNRESOLVED.match(f)]
        if named and named[-1].split(" (")[0] in WAITING:
            idle += count
            continue
        if not frames:
            frames = ["(no Python frame)"]
        total += count
        thread_c[thread] += count
        cat_c[categorise(frames, thread)] += count
        self_c[frames[-1]] += count
        for f in set(frames):
            incl_c[f] += count

    def pct(n: int) -> float:
        return n / total * 100 if total else 0.0

    trunk = {f for f, n in incl_c.items() if n > 0.9 * total}
    inclusive = Counter({f: n for f, n in incl_c.items() if f not in trunk})
    return {
        "samples": total,
        "idle_samples": idle,
        "threads": [(t, pct(n)) for t, n in thread_c.most_common()],
        "categories": [(c, pct(n)) for c, n in cat_c.most_common()],
        "self": [(f, pct(n)) for f, n in self_c.most_common(top)],
        "inclusive": [(f, pct(n)) for f, n in inclusive.most_common(top)],
    }


def profile_steelyard(
    target: Target,
    mode: str,
    script: Path,
    out_dir: Path,
    seconds: float,
    conns: int,
    prefix: str = "pyspy",
) -> dict[str, object] | None:
    spy = VENV_BIN / "py-spy"
    if not spy.exists() or target.proc is None:
        log("py-spy not available; no profile")
        return None
    raw = out_dir / f"{prefix}-{mode}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.txt"
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{conns}", f"-d{round(seconds) + 2}s"]
    for h in MODES[mode]:
        argv += ["-H", h]
    argv += ["-s", str(script), target.url]
    wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.0)
        # --native shows the C side too (uvloop, httptools, libc write/read); it has to stop the
        # process for each sample, so the rate is modest. Without it, time in C code counts as
        # self time of the nearest Python frame (often `Runner.run`: uvloop's own loop).
        base = [str(spy), "record", "--pid", str(target.proc.pid), "--subprocesses", "--threads",
                "--duration", str(round(seconds)), "--format", "raw", "--output", str(raw)]  # fmt: skip
        p = None
        for extra in (["--native", "--rate", "100"], ["--nonblocking", "--rate", "250"]):
            p = subprocess.run(
                ["taskset", "-c", CLIENT_CPU, *base, *extra],
                capture_output=True,
                text=True,
                timeout=seconds + 30,
                check=False,
            )
            if p.returncode == 0 and raw.exists():
                native = "--native" in extra
                break
            log(f"py-spy {' '.join(extra)} failed ({p.returncode}): {p.stderr.strip()[-300:]}")
        else:
            return None
    finally:
        wrk.wait(timeout=seconds + 30)
    prof = summarise_profile(raw)
    prof["mode"] = mode
    prof["native"] = native
    prof["raw"] = str(raw)
    return prof


# ----------------------------------------------------------------------------- report

LEGEND = (
    "Columns: *LB CPU µs/req* = the balancer's utime+stime (all its processes) / requests; "
    "*req/s per LB core* = 1 / that: what one saturated core would serve, the number that "
    "does not depend on how busy the client core was; *LB core busy* = that CPU time / wall time; *others* = CPU used during the run by "
    "programs outside the benchmark (this machine is shared), in % of one core; *client core "
    "busy* = core 0 (wrk + backends): near 100% means the client side, not the balancer, "
    "set the req/s. A verdict reads *void* when the median run of HAProxy or Steelyard lost "
    f"more than {VOID_STEAL:.0%} of a core to the hypervisor (steal, shown in the log)."
)


def inv(x: float) -> float:
    return 1 / x if x else float("nan")


def profile_markdown(prof: dict[str, object], what: str = "Steelyard") -> list[str]:
    out: list[str] = [""]
    out.append(
        f"py-spy{' --native' if prof.get('native') else ''}, {what} under {prof['mode']} "
        f"load ({prof['samples']} busy samples, {prof['idle_samples']} idle ones left out; "
        "% of busy samples):"
    )
    out.append("")
    threads = prof["threads"]
    assert isinstance(threads, list)
    out.append("Threads: " + ", ".join(f"{t} {p:.0f}%" for t, p in threads))
    out.append("")
    cats = prof["categories"]
    assert isinstance(cats, list)
    out.append("| % of busy samples | spent in (each sample counted once) |")
    out.append("|---:|---|")
    for c, p in cats:
        out.append(f"| {p:.1f} | {c} |")
    out.append("")
    out.append("| self % | function | | inclusive % | function |")
    out.append("|---:|---|---|---:|---|")
    selfs = prof["self"]
    incls = prof["inclusive"]
    assert isinstance(selfs, list) and isinstance(incls, list)
    for i in range(max(len(selfs), len(incls))):
        a = selfs[i] if i < len(selfs) else ("", 0.0)
        b = incls[i] if i < len(incls) else ("", 0.0)
        out.append(f"| {a[1]:.1f} | `{a[0]}` | | {b[1]:.1f} | `{b[0]}` |")
    return out


def markdown(
    summaries: list[Summary],
    vers: dict[str, str],
    args: argparse.Namespace,
    profiles: list[dict[str, object]],
) -> str:
    out: list[str] = []
    out.append(f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    out.append("")
    out.append(
        f"wrk -t1 -c{args.connections} -d{args.duration}s, {args.runs} runs per target and "
        f"client kind (median, min–max); balancers on core {LB_CPU}, wrk and backends on "
        f"core {CLIENT_CPU}."
    )
    out.append("")
    out.append("Versions: " + ", ".join(f"{k} `{v}`" for k, v in vers.items()))
    out.append("")
    out.append(LEGEND)
    out.append("")
    out.extend(wrk_table(summaries, per_core=True))
    by = {(s.target, s.mode): s for s in summaries}
    out.append("")
    out.append("Steelyard / HAProxy (same run):")
    out.append("")
    out.append("| metric | clients | Steelyard / HAProxy | Steelyard / nginx | target | verdict |")
    out.append("|---|---|---:|---:|---:|---|")
    for mode in MODES:
        sy, ha, ng = by.get(("steelyard", mode)), by.get(("haproxy", mode)), by.get(("nginx", mode))
        if not sy or not ha or sy.pending or ha.pending:
            out.append(f"| req/s | {mode} | pending | | ≥ {TARGETS_RPS} | — |")
            continue
        ngx_ok = ng is not None and not ng.pending
        rows = [
            ("req/s", sy.rps_median, ha.rps_median, ng.rps_median if ngx_ok else 0, "≥", TARGETS_RPS),
            ("p99 latency", sy.p99_ms, ha.p99_ms, ng.p99_ms if ngx_ok else 0, "≤", TARGET_P99),
            ("CPU per request", sy.cpu_us_per_req, ha.cpu_us_per_req,
             ng.cpu_us_per_req if ngx_ok else 0, "", None),
            ("req/s per LB core", inv(sy.cpu_us_per_req), inv(ha.cpu_us_per_req),
             inv(ng.cpu_us_per_req) if ngx_ok else 0, "≥", TARGETS_RPS),
        ]  # fmt: skip
        steal = max(sy.steal, ha.steal)
        for name, a, b, c, op, goal in rows:
            r = ratio(a, b)
            if goal is None:
                verdict, goal_s = "(lower is better)", "—"
            else:
                ok = r >= goal if op == "≥" else r <= goal
                verdict, goal_s = ("meets" if ok else "misses"), f"{op} {goal}"
                if steal > VOID_STEAL:
                    verdict = f"void: steal {steal:.0%} of a core (would be: {verdict})"
            out.append(
                f"| {name} | {mode} | {fmt_num(r, 2)} | {fmt_num(ratio(a, c), 2)} | "
                f"{goal_s} | {verdict} |"
            )
    for prof in profiles:
        out.extend(profile_markdown(prof))
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- main


def start_balancers(
    sup: Supervisor,
    workdir: Path,
    wanted: list[str],
    backend_ports: list[int],
    trees: dict[str, Path] | None = None,
) -> list[Target]:
    targets: list[Target] = []
    if "direct" in wanted:
        targets.append(Target("direct", backend_ports[0]))
    if "haproxy" in wanted:
        port = free_port()
        if not have("haproxy"):
            targets.append(Target("haproxy", port, pending="haproxy is not installed"))
        else:
            cfg = haproxy_conf(workdir, port, backend_ports)
            proc = sup.start("haproxy", ["haproxy", "-db", "-f", str(cfg)], LB_CPU)
            targets.append(Target("haproxy", port, proc))
    if "nginx" in wanted:
        port = free_port()
        cfg = nginx_lb_conf(workdir, port, backend_ports)
        targets.append(Target("nginx", port, start_nginx(sup, "nginx-lb", cfg, LB_CPU)))
    if "bare-relay" in wanted:
        port = free_port()
        argv = [str(VENV_BIN / "python"), str(REPO / "bench" / "bare_relay.py"), str(port)]
        proc = sup.start("bare-relay", [*argv, *map(str, backend_ports)], LB_CPU)
        targets.append(Target("bare-relay", port, proc))
    for name in ("steelyard", "steelyard-accesslog"):
        if name not in wanted:
            continue
        port = free_port()
        log_to = str(workdir / "access.log") if name == "steelyard-accesslog" else "off"
        cfg = steelyard_conf(workdir, port, backend_ports, log_to, name)
        exe = steelyard_cmd()
        if not Path(exe[0]).exists():
            targets.append(Target(name, port, pending=f"{exe[0]} not found (make bench)"))
        else:
            proc = sup.start(name, [*exe, "run", "-c", str(cfg)], LB_CPU)
            targets.append(Target(name, port, proc))
    for tree, src in (trees or {}).items():  # the same Steelyard from other source trees
        name = f"steelyard@{tree}"
        port = free_port()
        cfg = steelyard_conf(workdir, port, backend_ports, "off", name)
        env = {"PYTHONPATH": str(src)}
        proc = sup.start(name, [*steelyard_cmd(), "run", "-c", str(cfg)], LB_CPU, env=env)
        targets.append(Target(name, port, proc))
    for t in targets:
        if t.pending:
            continue
        err = wait_http(t.port, timeout=15.0, proc=t.proc)
        if err is not None:
            tail = t.proc.log_tail(8) if t.proc else ""
            t.pending = f"not serving ({err})"
            log(f"{t.name} is not serving on {t.port}: {err}\n{tail}")
            if t.proc is not None:
                sup.stop(t.proc)
                t.proc = None
        else:
            log(f"{t.name} serving on 127.0.0.1:{t.port}")
    return targets


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short smoke run (2 runs of 2 s)")
    ap.add_argument("--runs", type=int, default=5, help="runs per target and client kind")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections")
    ap.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help=f"comma-separated, from {', '.join(ALL_TARGETS + EXTRA_TARGETS)}",
    )
    ap.add_argument("--modes", default=",".join(MODES), help="keep-alive,close")
    ap.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also measure Steelyard from another source tree (DIR or DIR/src first on "
        "PYTHONPATH; e.g. a `git archive` of another commit, built in place) as target "
        "steelyard@NAME",
    )
    ap.add_argument(
        "--max-others",
        type=float,
        default=0.25,
        help="re-measure a run when other programs used more than this many cores",
    )
    ap.add_argument(
        "--max-steal",
        type=float,
        default=0.02,
        help="re-measure a run when the hypervisor stole more than this many cores",
    )
    ap.add_argument("--retry-budget", type=int, default=6, help="re-measurements in total")
    ap.add_argument("--profile-seconds", type=float, default=6.0)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S seconds for other programs to leave the CPUs alone",
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="report directory")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.profile_seconds = 2, 2.0, 3.0
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    wanted = [t for t in args.targets.split(",") if t]
    for t in wanted:
        if t not in ALL_TARGETS + EXTRA_TARGETS:
            raise SystemExit(f"unknown target {t!r}; choose from {ALL_TARGETS + EXTRA_TARGETS}")
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    for binary in ("wrk", "nginx", "taskset"):
        if not have(binary):
            raise SystemExit(f"{binary} is not installed (bench/run.sh installs it)")
    if args.wait_quiet > 0:
        load = wait_quiet(args.wait_quiet, args.max_others)
        log(f"others use {load:.0%} of a core; starting")
    workdir = Path(tempfile.mkdtemp(prefix="steelyard-http-bench-"))
    sup = Supervisor(workdir)
    t0 = time.monotonic()
    try:
        backend_ports = [free_port() for _ in range(3)]
        bconf = nginx_backends_conf(workdir, backend_ports)
        backends = start_nginx(sup, "backends", bconf, CLIENT_CPU)
        for p in backend_ports:
            err = wait_http(p, proc=backends)
            if err:
                raise SystemExit(f"backend on {p} not serving: {err}\n{backends.log_tail()}")
        trees: dict[str, Path] = {}
        for spec in args.tree:
            name, sep, src = spec.partition("=")
            if not sep or not name:
                raise SystemExit(f"--tree wants NAME=DIR, not {spec!r}")
            trees[name] = tree_src(src)
        checks: dict[str, Path | None] = {f"steelyard@{n}": src for n, src in trees.items()}
        if "steelyard" in wanted:
            checks["steelyard"] = None
        for name, src in checks.items():
            build = steelyard_build(src)
            if build != "compiled":
                log(
                    f"WARNING: {name} runs its Python sources ({build}), not the compiled "
                    "data path: compiled modules missing or older than a source file "
                    "(`make build`)"
                )
        targets = start_balancers(sup, workdir, wanted, backend_ports, trees)
        script = write_wrk_script(workdir)
        live = [t for t in targets if not t.pending]
        samples: dict[tuple[str, str], list[Sample]] = {
            (t.name, m): [] for t in targets for m in modes
        }
        helpers = [backends.pid]
        retry_budget = [args.retry_budget]
        for mode in modes:
            for t in live:  # warm-up: connection pools, caches
                try:
                    run_wrk(t.url, script, 1, args.connections, headers=MODES[mode])
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    log(f"warm-up of {t.name} failed: {exc}")
            for i in range(args.runs):
                for t in live:
                    try:
                        s = measure_quiet(t, mode, script, args, helpers, retry_budget)
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        log(f"{mode} run {i + 1} {t.name} failed: {exc}")
                        continue
                    samples[(t.name, mode)].append(s)
                    log(
                        f"{mode:10s} run {i + 1}/{args.runs} {t.name:15s} {s.rps:10,.0f} req/s "
                        f"p50 {s.p50_ms:6.2f} ms p99 {s.p99_ms:6.2f} ms "
                        f"max {s.max_ms:6.2f} ms cpu {s.cpu_us_per_req:6.1f} us/req "
                        f"others {s.others:4.0%} steal {s.steal:5.1%} errors {s.errors}"
                    )
        profiles: list[dict[str, object]] = []
        sy = next((t for t in live if t.name == "steelyard"), None)
        if sy is not None and not args.no_profile:
            for mode in modes:
                log(f"profiling Steelyard under {mode} load for {args.profile_seconds:.0f}s")
                prof = profile_steelyard(
                    sy, mode, script, args.out, args.profile_seconds, args.connections
                )
                if prof:
                    profiles.append(prof)
        summaries = [summarise(t, m, samples[(t.name, m)]) for m in modes for t in targets]
        vers = versions()
        report = markdown(summaries, vers, args, profiles)
        print(report)
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        (args.out / f"http-{stamp}.md").write_text(report)
        (args.out / "http-latest.md").write_text(report)
        data = {
            "versions": vers,
            "args": {k: str(v) for k, v in vars(args).items()},
            "summaries": [asdict(s) for s in summaries],
            "profiles": profiles,
        }
        (args.out / f"http-{stamp}.json").write_text(json.dumps(data, indent=2))
        (args.out / "http-latest.json").write_text(json.dumps(data, indent=2))
        log(f"done in {time.monotonic() - t0:.0f}s; report in {args.out}/http-latest.md")
        return 0
    finally:
        sup.close()
        if args.keep:
            log(f"configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
