"""L4 (TCP) load benchmark: Steelyard `protocol: tcp` against HAProxy `mode tcp` and nginx
`stream` (issue 5, run by `make bench` once Steelyard has tcp listeners).

How this works: the same three nginx backends as the HTTP benchmark (core 0) sit behind an L4
listener of each balancer (core 1); wrk (core 0) drives HTTP through it with keep-alive clients
(one upstream connection per client connection, so this measures relaying) and with
`Connection: close` clients (a new downstream and upstream connection per request, so this
measures accept/connect/close). A second listener per balancer forwards to one iperf3 server
(core 0; control and data connections must reach the same server): iperf3 pushes bulk data
through it in each direction, and we report Gbit/s and GB/s and the balancer's CPU seconds per
GB moved (utime+stime of its process tree from /proc). Balancer buffers are left at their
defaults (HAProxy 16 KB, nginx `proxy_buffer_size` 16k, no splice), as a user would run them.

Usage: .venv/bin/python bench/tcp_bench.py [--quick] [--if-supported] [--runs N] ...
`--if-supported` exits 0 without measuring anything when Steelyard cannot yet serve the tcp
listener (so `make bench` works before issue 5 lands).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    CLIENT_CPU,
    LB_CPU,
    REPO,
    CoreMeter,
    CpuMeter,
    Proc,
    Supervisor,
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
    steelyard_cmd,
    versions,
    wait_http,
    wait_quiet,
    wait_tcp,
    write_wrk_script,
    wrk_table,
)
from http_bench import (  # noqa: E402
    LEGEND,
    MODES,
    Sample,
    Summary,
    Target,
    measure_quiet,
    profile_markdown,
    profile_steelyard,
    summarise,
)

ALL_TARGETS = ("direct", "haproxy", "nginx", "steelyard")
NOSPLICE = "steelyard-nosplice"  # Steelyard with STEELYARD_SPLICE=0 (Protocol buffers only)
# issue 5's targets, Steelyard / HAProxy in the same run
GOALS = {"keep-alive": 0.95, "close": 0.8, "bulk": 1.0}
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


# ----------------------------------------------------------------------------- configs


def haproxy_tcp_conf(workdir: Path, port: int, bulk_port: int, http_ports: list[int],
                     iperf_port: int) -> Path:  # fmt: skip
    servers = "\n".join(f"    server s{i + 1} 127.0.0.1:{p}" for i, p in enumerate(http_ports))
    conf = f"""global
    nbthread 1
    maxconn 8000
    pidfile {workdir}/haproxy-tcp.pid

defaults
    mode tcp
    timeout connect 5s
    timeout client 75s
    timeout server 75s

frontend l4
    bind 127.0.0.1:{port}
    default_backend web

backend web
    balance roundrobin
{servers}

frontend bulk
    bind 127.0.0.1:{bulk_port}
    default_backend iperf

backend iperf
    server iperf 127.0.0.1:{iperf_port}
"""
    path = workdir / "haproxy-tcp.cfg"
    path.write_text(conf)
    return path


def nginx_stream_conf(workdir: Path, port: int, bulk_port: int, http_ports: list[int],
                      iperf_port: int) -> Path:  # fmt: skip
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in http_ports)
    conf = f"""load_module {NGINX_STREAM_MODULE};
worker_processes 1;
daemon off;
master_process on;
pid {workdir}/nginx-stream.pid;
error_log {workdir}/nginx-stream.error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 8192; multi_accept on; }}
stream {{
    upstream web {{
{servers}
    }}
    upstream iperf {{
        server 127.0.0.1:{iperf_port};
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        proxy_pass web;
    }}
    server {{
        listen 127.0.0.1:{bulk_port};
        proxy_pass iperf;
    }}
}}
"""
    path = workdir / "nginx-stream.conf"
    path.write_text(conf)
    return path


def steelyard_tcp_conf(workdir: Path, port: int, bulk_port: int, http_ports: list[int],
                       iperf_port: int, variant: str = "") -> Path:  # fmt: skip
    # no access log: HAProxy and nginx log nothing here either (`log: {access: off}` works
    # since 79bb9a5; before, the log went to /dev/null and Steelyard alone paid for it, ~16 us
    # per new connection in l4_ab.py's "-log" targets)
    servers = "\n".join(f"      - {{address: 127.0.0.1:{p}}}" for p in http_ports)
    conf = f"""version: 1
shutdown_timeout: 2s
log: {{access: off}}
listeners:
  - name: l4
    protocol: tcp
    bind: 127.0.0.1:{port}
    backend: web
  - name: bulk
    protocol: tcp
    bind: 127.0.0.1:{bulk_port}
    backend: iperf
backends:
  web:
    algorithm: round_robin
    servers:
{servers}
  iperf:
    servers:
      - {{address: 127.0.0.1:{iperf_port}}}
"""
    path = workdir / f"steelyard-tcp{variant}.yaml"
    path.write_text(conf)
    return path


# ----------------------------------------------------------------------------- bulk


@dataclass
class Bulk:
    direction: str  # "upload" (client -> server) or "download" (-R)
    gbit_s: float
    bytes: int
    cpu_s_per_gb: float  # balancer CPU seconds per GB (1e9 bytes) moved; NaN for direct
    lb_core_busy: float
    others: float  # CPU used by programs outside the benchmark, in cores


@dataclass
class BulkSummary:
    target: str
    direction: str
    runs: int
    gbit_s_median: float
    gbit_s_min: float
    gbit_s_max: float
    cpu_s_per_gb: float
    lb_core_busy: float
    others: float
    pending: str | None = None
    samples: list[Bulk] = field(default_factory=list)


def run_iperf(
    target: Target, bulk_port: int, direction: str, seconds: float, helpers: Sequence[int]
) -> Bulk:
    meter = CpuMeter(target.proc.pid) if target.proc else None
    ours = [CpuMeter(pid) for pid in helpers]
    for m in [meter, *ours]:
        if m is not None:
            m.start()
    cores = CoreMeter()
    client_before = children_cpu_seconds()
    t0 = time.monotonic()
    cores.start()
    argv = ["taskset", "-c", CLIENT_CPU, "iperf3", "-c", "127.0.0.1", "-p", str(bulk_port),
            "-t", str(max(1, round(seconds))), "-J"]  # fmt: skip
    if direction == "download":
        argv.append("-R")
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 20, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"iperf3 through {target.name} hung for {seconds + 20:.0f}s") from exc
    busy = cores.stop()
    wall = max(time.monotonic() - t0, 1e-9)
    cpu = meter.stop() if meter else 0.0
    ours_cpu = cpu + sum(m.stop() for m in ours) + children_cpu_seconds() - client_before
    others = max(0.0, sum(b for b, _ in busy.values()) - ours_cpu / wall)
    if meter is None:
        cpu = float("nan")
    try:
        d = json.loads(p.stdout)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"iperf3 gave no JSON (exit {p.returncode}): {p.stderr}") from exc
    if "error" in d:
        raise RuntimeError(f"iperf3: {d['error']}")
    recv = d["end"]["sum_received"]
    nbytes = int(recv["bytes"])
    return Bulk(
        direction=direction,
        gbit_s=recv["bits_per_second"] / 1e9,
        bytes=nbytes,
        cpu_s_per_gb=cpu / (nbytes / 1e9) if nbytes else float("nan"),
        lb_core_busy=cpu / float(recv["seconds"]) if recv.get("seconds") else float("nan"),
        others=others,
    )


def summarise_bulk(
    target: Target, direction: str, samples: list[Bulk], failed: str | None = None
) -> BulkSummary:
    g = [s.gbit_s for s in samples]
    return BulkSummary(
        target=target.name,
        direction=direction,
        runs=len(samples),
        gbit_s_median=median(g),
        gbit_s_min=min(g) if g else float("nan"),
        gbit_s_max=max(g) if g else float("nan"),
        cpu_s_per_gb=median([s.cpu_s_per_gb for s in samples]),
        lb_core_busy=median([s.lb_core_busy for s in samples]),
        others=median([s.others for s in samples]),
        pending=target.pending or failed or (None if samples else "no successful run"),
        samples=samples,
    )


# ----------------------------------------------------------------------------- report


def markdown(
    summaries: list[Summary],
    bulks: list[BulkSummary],
    vers: dict[str, str],
    args: argparse.Namespace,
) -> str:
    out: list[str] = []
    out.append(f"L4 run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    out.append("")
    out.append(
        f"wrk -t1 -c{args.connections} -d{args.duration}s through each L4 listener and iperf3 "
        f"-t {args.duration:.0f} through a second one, {args.runs} runs each (median, min–max); "
        f"balancers on core {LB_CPU}, clients and servers on core {CLIENT_CPU}."
    )
    out.append("")
    out.append("Versions: " + ", ".join(f"{k} `{v}`" for k, v in vers.items()))
    out.append("")
    out.append(LEGEND)
    out.append("")
    out.extend(wrk_table(summaries, per_core=False))
    out.append("")
    out.append(
        "| target | bulk | Gbit/s (median) | min–max | GB/s | LB CPU s per GB | LB core busy "
        "| others |"
    )
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for b in bulks:
        if b.pending:
            out.append(f"| {b.target} | {b.direction} | pending: {b.pending} | | | | | |")
            continue
        busy = "—" if b.lb_core_busy != b.lb_core_busy else f"{b.lb_core_busy * 100:.0f}%"
        out.append(
            f"| {b.target} | {b.direction} | {fmt_num(b.gbit_s_median, 2)} | "
            f"{fmt_num(b.gbit_s_min, 2)}–{fmt_num(b.gbit_s_max, 2)} | "
            f"{fmt_num(b.gbit_s_median / 8, 2)} | {fmt_num(b.cpu_s_per_gb, 3)} | {busy} | "
            f"{b.others * 100:.0f}% |"
        )
    by = {(s.target, s.mode): s for s in summaries}
    bb = {(b.target, b.direction): b for b in bulks}
    out.append("")
    out.append("| metric | Steelyard / HAProxy | Steelyard / nginx | target | verdict |")
    out.append("|---|---:|---:|---:|---|")

    def row(name: str, sy: float, ha: float, ng: float, goal: float | None) -> None:
        r = ratio(sy, ha)
        if goal is None:
            verdict, goal_s = "(lower is better)", "—"
        elif r != r:
            verdict, goal_s = "pending", f"≥ {goal}"
        else:
            verdict, goal_s = ("meets" if r >= goal else "misses"), f"≥ {goal}"
        out.append(
            f"| {name} | {fmt_num(r, 2)} | {fmt_num(ratio(sy, ng), 2)} | {goal_s} | {verdict} |"
        )

    nan = float("nan")

    def inv(x: float) -> float:
        return 1 / x if x else nan

    def val(obj: Summary | BulkSummary | None, attr: str) -> float:
        if obj is None or obj.pending:
            return nan
        return float(getattr(obj, attr))

    for mode in MODES:
        sy, ha, ng = by.get(("steelyard", mode)), by.get(("haproxy", mode)), by.get(("nginx", mode))
        row(f"req/s {mode}", val(sy, "rps_median"), val(ha, "rps_median"),
            val(ng, "rps_median"), GOALS[mode])  # fmt: skip
        row(f"CPU/request {mode}", val(sy, "cpu_us_per_req"), val(ha, "cpu_us_per_req"),
            val(ng, "cpu_us_per_req"), None)  # fmt: skip
        row(f"req/s per LB core {mode}", inv(val(sy, "cpu_us_per_req")),
            inv(val(ha, "cpu_us_per_req")), inv(val(ng, "cpu_us_per_req")), GOALS[mode])  # fmt: skip
    for d in ("upload", "download"):
        sy, ha, ng = bb.get(("steelyard", d)), bb.get(("haproxy", d)), bb.get(("nginx", d))
        row(f"bulk {d}", val(sy, "gbit_s_median"), val(ha, "gbit_s_median"),
            val(ng, "gbit_s_median"), GOALS["bulk"])  # fmt: skip
        row(f"CPU/GB {d}", val(sy, "cpu_s_per_gb"), val(ha, "cpu_s_per_gb"),
            val(ng, "cpu_s_per_gb"), None)  # fmt: skip
        ns = bb.get((NOSPLICE, d))
        if ns is not None:
            row(f"bulk {d}, no splice", val(ns, "gbit_s_median"), val(ha, "gbit_s_median"),
                val(ng, "gbit_s_median"), GOALS["bulk"])  # fmt: skip
            row(f"CPU/GB {d}, no splice", val(ns, "cpu_s_per_gb"), val(ha, "cpu_s_per_gb"),
                val(ng, "cpu_s_per_gb"), None)  # fmt: skip
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short smoke run")
    ap.add_argument("--if-supported", action="store_true",
                    help="exit 0 quietly if Steelyard cannot serve a tcp listener yet")  # fmt: skip
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--targets", default=",".join(ALL_TARGETS))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--max-others", type=float, default=0.25)
    ap.add_argument("--max-steal", type=float, default=0.02)  # (http_bench.measure_quiet)
    ap.add_argument("--retry-budget", type=int, default=4)
    # accepted so that run.sh can pass the HTTP benchmark's flags through
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--profile-seconds", type=float, default=6.0)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--profile-mode", default="close", choices=tuple(MODES),
                    help="the wrk client kind Steelyard is profiled under")  # fmt: skip
    ap.add_argument("--no-bulk", action="store_true", help="skip the iperf3 runs")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.profile_seconds = 2, 2.0, 3.0
    return args


def start_target(
    sup: Supervisor,
    name: str,
    port: int,
    bulk_port: int,
    argv: list[str],
    env: dict[str, str] | None = None,
) -> Target:
    proc: Proc = sup.start(name, argv, LB_CPU, env=env)
    t = Target(name.removesuffix("-tcp"), port, proc)
    err = wait_http(port, timeout=15.0, proc=proc)
    if err is None and not wait_tcp(bulk_port, timeout=5.0, proc=proc):
        err = "bulk listener not accepting"
    if err is not None:
        log(f"{t.name} is not serving L4 on {port}: {err}\n{proc.log_tail(8)}")
        t.pending = f"not serving ({err})"
        sup.stop(proc)
        t.proc = None
    else:
        log(f"{t.name} serving L4 on 127.0.0.1:{port} (bulk {bulk_port})")
    return t


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    wanted = [t for t in args.targets.split(",") if t in ALL_TARGETS]
    if args.if_supported and "steelyard" not in wanted:
        log("Steelyard not among the targets; L4 benchmark skipped")
        return 0
    modes = [m for m in args.modes.split(",") if m in MODES]
    for binary in ("wrk", "nginx", "iperf3", "taskset"):
        if not have(binary):
            raise SystemExit(f"{binary} is not installed (bench/run.sh installs it)")
    if args.wait_quiet > 0:
        log(f"others use {wait_quiet(args.wait_quiet, args.max_others):.0%} of a core; starting")
    workdir = Path(tempfile.mkdtemp(prefix="steelyard-tcp-bench-"))
    sup = Supervisor(workdir)
    t0 = time.monotonic()
    try:
        http_ports = [free_port() for _ in range(3)]
        backends = start_nginx(
            sup, "backends", nginx_backends_conf(workdir, http_ports), CLIENT_CPU
        )
        for p in http_ports:
            err = wait_http(p, proc=backends)
            if err:
                raise SystemExit(f"backend on {p} not serving: {err}")
        # one iperf3 server per target: a server serves one test at a time, so a connection
        # that one balancer left hanging must not stall the others
        iperf_pids: list[int] = []

        def iperf_server(name: str) -> int:
            port = free_port()
            argv_ = ["iperf3", "-s", "-p", str(port), "--idle-timeout", "20"]
            proc = sup.start(f"iperf3-{name}", argv_, CLIENT_CPU)
            if not wait_tcp(port, proc=proc):
                raise SystemExit(f"iperf3 server not listening: {proc.log_tail()}")
            iperf_pids.append(proc.pid)
            return port

        started: dict[str, Target] = {}
        bulk_ports: dict[str, int] = {}
        # Steelyard first: with --if-supported, nothing else is started when it has no L4 yet
        if "steelyard" in wanted:
            port, bulk, iperf_port = free_port(), free_port(), iperf_server("steelyard")
            cfg = steelyard_tcp_conf(workdir, port, bulk, http_ports, iperf_port)
            t = start_target(
                sup, "steelyard-tcp", port, bulk, [*steelyard_cmd(), "run", "-c", str(cfg)]
            )
            if t.pending and args.if_supported:
                log("Steelyard cannot serve a tcp listener yet; L4 benchmark skipped")
                return 0
            started[t.name], bulk_ports[t.name] = t, bulk
            # the same without the splice(2) fast path: bulk only (short connections never
            # reach the splice threshold, so wrk would measure the same thing twice)
            port, bulk, iperf_port = free_port(), free_port(), iperf_server("nosplice")
            cfg = steelyard_tcp_conf(workdir, port, bulk, http_ports, iperf_port, "nosplice")
            argv_ = [*steelyard_cmd(), "run", "-c", str(cfg)]
            t = start_target(sup, NOSPLICE, port, bulk, argv_, env={"STEELYARD_SPLICE": "0"})
            started[t.name], bulk_ports[t.name] = t, bulk
        if "direct" in wanted:
            t = Target("direct", http_ports[0])
            started["direct"], bulk_ports["direct"] = t, iperf_server("direct")
        if "haproxy" in wanted and have("haproxy"):
            port, bulk, iperf_port = free_port(), free_port(), iperf_server("haproxy")
            cfg = haproxy_tcp_conf(workdir, port, bulk, http_ports, iperf_port)
            t = start_target(sup, "haproxy-tcp", port, bulk, ["haproxy", "-db", "-f", str(cfg)])
            started[t.name], bulk_ports[t.name] = t, bulk
        if "nginx" in wanted:
            port, bulk, iperf_port = free_port(), free_port(), iperf_server("nginx")
            if not NGINX_STREAM_MODULE.exists():
                t = Target("nginx", port, pending=f"{NGINX_STREAM_MODULE} missing")
            else:
                cfg = nginx_stream_conf(workdir, port, bulk, http_ports, iperf_port)
                argv_ = ["nginx", "-p", str(workdir), "-e",
                         str(workdir / "nginx-stream.error.log"), "-c", str(cfg)]  # fmt: skip
                t = start_target(sup, "nginx-tcp", port, bulk, argv_)
            started[t.name], bulk_ports[t.name] = t, bulk

        all_targets = [started[n] for n in (*ALL_TARGETS, NOSPLICE) if n in started]
        targets = [t for t in all_targets if t.name != NOSPLICE]
        script = write_wrk_script(workdir)
        live = [t for t in targets if not t.pending]
        live_bulk = [t for t in all_targets if not t.pending]
        samples: dict[tuple[str, str], list[Sample]] = {
            (t.name, m): [] for t in targets for m in modes
        }
        helpers = [backends.pid, *iperf_pids]
        retry_budget = [args.retry_budget]
        for mode in modes:
            for t in live:
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
                        f"L4 {mode:10s} run {i + 1}/{args.runs} {t.name:9s} {s.rps:10,.0f} req/s "
                        f"p99 {s.p99_ms:6.2f} ms cpu {s.cpu_us_per_req:6.1f} us/req "
                        f"errors {s.errors}"
                    )
        profiles: list[dict[str, object]] = []
        sy = next((t for t in live if t.name == "steelyard"), None)
        if sy is not None and not args.no_profile and args.profile_mode in modes:
            log(f"profiling Steelyard's L4 listener under {args.profile_mode} load")
            prof = profile_steelyard(
                sy,
                args.profile_mode,
                script,
                args.out,
                args.profile_seconds,
                args.connections,
                f"pyspy-l4-{args.profile_mode}",
            )
            if prof:
                profiles.append(prof)
        bulk_samples: dict[tuple[str, str], list[Bulk]] = {
            (t.name, d): [] for t in all_targets for d in ("upload", "download")
        }
        bulk_failed: dict[str, str] = {}
        if args.no_bulk:
            live_bulk = []
        for t in list(live_bulk):  # warm-up, and proof that the bulk listener works
            try:
                run_iperf(t, bulk_ports[t.name], "upload", 1, helpers)
            except RuntimeError as exc:
                log(f"bulk through {t.name} failed: {exc}")
                bulk_failed[t.name] = f"bulk failed: {exc}"
                live_bulk.remove(t)
        for i in range(args.runs):
            for d in ("upload", "download"):
                for t in live_bulk:
                    try:
                        b = run_iperf(t, bulk_ports[t.name], d, args.duration, helpers)
                    except RuntimeError as exc:
                        log(f"bulk {d} through {t.name} failed: {exc}")
                        continue
                    bulk_samples[(t.name, d)].append(b)
                    log(
                        f"L4 bulk {d:8s} run {i + 1}/{args.runs} {t.name:9s} "
                        f"{b.gbit_s:6.2f} Gbit/s cpu {b.cpu_s_per_gb:6.3f} s/GB "
                        f"others {b.others:4.0%}"
                    )
                    time.sleep(0.3)  # iperf3's server takes a moment between tests
        summaries = [summarise(t, m, samples[(t.name, m)]) for m in modes for t in targets]
        bulks = [
            summarise_bulk(t, d, bulk_samples[(t.name, d)], bulk_failed.get(t.name))
            for d in ("upload", "download")
            for t in all_targets
        ]
        vers = versions()
        report = markdown(summaries, bulks, vers, args)
        for prof in profiles:
            report += "\n".join(profile_markdown(prof, "Steelyard's L4 listener")) + "\n"
        print(report)
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        data = {
            "versions": vers,
            "args": {k: str(v) for k, v in vars(args).items()},
            "summaries": [asdict(s) for s in summaries],
            "bulk": [asdict(b) for b in bulks],
            "profiles": profiles,
        }
        for name in (f"tcp-{stamp}", "tcp-latest"):
            (args.out / f"{name}.md").write_text(report)
            (args.out / f"{name}.json").write_text(json.dumps(data, indent=2))
        log(f"L4 done in {time.monotonic() - t0:.0f}s; report in {args.out}/tcp-latest.md")
        return 0
    finally:
        sup.close()
        if args.keep:
            log(f"configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
