"""Shared machinery for the load benchmarks (bench/http_bench.py, bench/tcp_bench.py).

How this works: every program under test (backends, HAProxy, nginx, Steelyard, wrk, iperf3) is
started by a `Supervisor` pinned to one core with `taskset`; each PID is also appended to the
file named by $BENCH_PIDFILE so that bench/run.sh can stop stragglers if this process dies.
A balancer's CPU cost is read from /proc/PID/stat (utime + stime, every process of its tree,
all threads included) before and after a run. wrk reports through a Lua `done` hook that prints
one JSON line, so nothing depends on wrk's human-readable output format.

Only 127.0.0.1 is ever used. Ports are taken by binding port 0 and reading it back.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# the cores: load balancers on LB_CPU, wrk / iperf3 / backends on CLIENT_CPU
LB_CPU = "1"
CLIENT_CPU = "0"

WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, ' ..
    '"err_connect": %.0f, "err_read": %.0f, "err_write": %.0f, "err_status": %.0f, ' ..
    '"err_timeout": %.0f, "p50_us": %.1f, "p90_us": %.1f, "p99_us": %.1f, ' ..
    '"max_us": %.1f, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tree_src(path: str) -> Path:
    """What goes first on PYTHONPATH to run Steelyard from another source tree: DIR/src for a
    checkout (or a `git archive` of one), DIR itself when it is such a src/ directory. Anything
    else is refused: a wrong path would silently run the installed tree instead."""
    root = Path(path).resolve()
    for src in (root / "src", root):
        if (src / "steelyard" / "__init__.py").is_file():
            return src
    raise SystemExit(f"{path}: not a Steelyard tree (no src/steelyard/ or steelyard/ in it)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


# ----------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited({self.popen.returncode})"
        return f"Proc({self.name!r}, pid={self.pid}, {state})"


@dataclass
class Supervisor:
    """Starts processes pinned to a core and stops every one of them, by PID, on close()."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        cpu: str,
        env: dict[str, str] | None = None,
        stdout_to_log: bool = True,
    ) -> Proc:
        log_path = self.workdir / f"{name}.log"
        out = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            popen = subprocess.Popen(
                ["taskset", "-c", cpu, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out if stdout_to_log else subprocess.DEVNULL,
                stderr=out,
                cwd=self.workdir,
                env={**os.environ, **(env or {})},
            )
        finally:
            out.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        pidfile = os.environ.get("BENCH_PIDFILE")
        if pidfile:
            with open(pidfile, "a") as f:
                f.write(f"{popen.pid}\n")
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{proc.name} (pid {proc.pid}) ignored SIGTERM; killing it")
                for pid in reversed(proc_tree(proc.pid)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.popen.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                log(f"could not stop {proc!r}: {exc}")


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP become SystemExit so that `finally:` blocks stop every child."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


# ----------------------------------------------------------------------------- /proc


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may contain spaces and parentheses: split after the last ')'
        rest = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(rest[1]), []).append(int(entry))
    return children


def proc_tree(root: int) -> list[int]:
    """root and all its descendants (nginx workers, Steelyard worker processes, ...)."""
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of the given processes (each process's stat covers all its threads)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(b")") + 2 :].split()
        # fields 14 and 15 of stat(5); rest[0] is field 3 (state)
        ticks += int(rest[11]) + int(rest[12])
    return ticks / CLK_TCK


class CpuMeter:
    """CPU seconds used by a process tree between start() and stop()."""

    __slots__ = ("root", "_pids", "_before")

    def __init__(self, root: int) -> None:
        self.root = root
        self._pids: list[int] = []
        self._before = 0.0

    def start(self) -> None:
        self._pids = proc_tree(self.root)
        self._before = cpu_seconds(self._pids)

    def stop(self) -> float:
        # processes that appeared during the run are counted from zero; the originals are re-read
        pids = sorted(set(self._pids) | set(proc_tree(self.root)))
        return cpu_seconds(pids) - self._before

    def __repr__(self) -> str:
        return f"CpuMeter(root={self.root}, pids={self._pids})"


def core_busy_seconds() -> dict[str, tuple[float, float]]:
    """Per core ("cpu0", ...): (busy seconds, stolen seconds) since boot, from /proc/stat."""
    out: dict[str, tuple[float, float]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            v = [int(x) for x in vals]
            # user nice system idle iowait irq softirq steal ...; irq/softirq time is not
            # charged to any process, so it is left out to compare with per-process times
            busy = v[0] + v[1] + v[2]
            steal = v[7] if len(v) > 7 else 0
            out[name] = (busy / CLK_TCK, steal / CLK_TCK)
    return out


class CoreMeter:
    """How busy each core was between start() and stop(), as a fraction of the wall time."""

    __slots__ = ("_before", "_t0")

    def __init__(self) -> None:
        self._before: dict[str, tuple[float, float]] = {}
        self._t0 = 0.0

    def start(self) -> None:
        self._before = core_busy_seconds()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, tuple[float, float]]:
        """core -> (busy fraction, steal fraction)."""
        after = core_busy_seconds()
        wall = max(time.monotonic() - self._t0, 1e-9)
        return {
            k: ((after[k][0] - b[0]) / wall, (after[k][1] - b[1]) / wall)
            for k, b in self._before.items()
            if k in after
        }

    def __repr__(self) -> str:
        return f"CoreMeter(cores={sorted(self._before)})"


def wait_quiet(max_wait: float, threshold: float = 0.25, window: float = 2.0) -> float:
    """Wait (up to max_wait seconds) until the whole machine is busier than `threshold` cores
    for no `window`-long stretch; return the last measured load in cores."""
    deadline = time.monotonic() + max_wait
    while True:
        m = CoreMeter()
        m.start()
        time.sleep(window)
        load = sum(b for b, _ in m.stop().values())
        if load <= threshold or time.monotonic() >= deadline:
            return load
        log(f"machine busy ({load:.0%} of a core used by others); waiting for quiet")
        time.sleep(3.0)


def children_cpu_seconds() -> float:
    """CPU time of this process's waited-for children (wrk, iperf3 clients)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# ----------------------------------------------------------------------------- readiness


def wait_tcp(port: int, timeout: float = 10.0, proc: Proc | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def http_get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "bench.local"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def wait_http(port: int, timeout: float = 10.0, proc: Proc | None = None) -> str | None:
    """None once GET / answers 200, else a description of the last failure."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            return f"{proc.name} exited with {proc.popen.returncode}"
        try:
            status, _, body = http_get(port, timeout=1.0)
            if status == 200:
                return None
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        except http.client.HTTPException as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    return last


# ----------------------------------------------------------------------------- wrk


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: int  # socket errors + non-2xx/3xx answers
    non2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def write_wrk_script(workdir: Path) -> Path:
    path = workdir / "report.lua"
    path.write_text(WRK_LUA)
    return path


def run_wrk(
    url: str,
    script: Path,
    duration: float,
    connections: int,
    threads: int = 1,
    headers: Sequence[str] = (),
) -> WrkResult:
    argv = [
        "taskset",
        "-c",
        CLIENT_CPU,
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
    ]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("WRKJSON "):
            d = json.loads(line[len("WRKJSON ") :])
            socket_errors = d["err_connect"] + d["err_read"] + d["err_write"] + d["err_timeout"]
            return WrkResult(
                requests=int(d["requests"]),
                duration_s=d["duration_us"] / 1e6,
                errors=int(socket_errors + d["err_status"]),
                non2xx=int(d["err_status"]),
                p50_ms=d["p50_us"] / 1000,
                p90_ms=d["p90_us"] / 1000,
                p99_ms=d["p99_us"] / 1000,
                max_ms=d["max_us"] / 1000,
            )
    raise RuntimeError(f"wrk gave no report (exit {proc.returncode}): {proc.stdout}{proc.stderr}")


# ----------------------------------------------------------------------------- statistics


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_num(x: float, digits: int = 0) -> str:
    if x != x:  # NaN
        return "—"
    return f"{x:,.{digits}f}"


def wrk_table(summaries: Iterable[object], per_core: bool) -> list[str]:
    """The markdown table of wrk results both benchmarks print (per_core: a column of req/s
    per LB core, 1 / CPU per request)."""
    extra_head = " req/s per LB core |" if per_core else ""
    extra_rule = "---:|" if per_core else ""
    out = [
        "| target | clients | req/s (median) | min–max | p50 ms | p99 ms | LB CPU µs/req |"
        + extra_head
        + " LB core busy | others | client core busy | errors |",
        "|---|---|---:|---:|---:|---:|---:|" + extra_rule + "---:|---:|---:|---:|",
    ]
    blanks = "| | | | | | | | |" + (" |" if per_core else "")
    for s in summaries:
        x: Any = s
        if x.pending:
            out.append(f"| {x.target} | {x.mode} | pending: {x.pending} {blanks}")
            continue
        lb = "—" if x.lb_core_busy != x.lb_core_busy else f"{x.lb_core_busy * 100:.0f}%"
        core = ""
        if per_core:
            per = 1e6 / x.cpu_us_per_req if x.cpu_us_per_req else float("nan")
            core = f" {fmt_num(per)} |"
        out.append(
            f"| {x.target} | {x.mode} | {fmt_num(x.rps_median)} | "
            f"{fmt_num(x.rps_min)}–{fmt_num(x.rps_max)} | {fmt_num(x.p50_ms, 2)} | "
            f"{fmt_num(x.p99_ms, 2)} | {fmt_num(x.cpu_us_per_req, 1)} |{core} {lb} | "
            f"{x.others * 100:.0f}% | {x.client_core_busy * 100:.0f}% | {x.errors} |"
        )
    return out


def ratio(a: float, b: float) -> float:
    if not b or a != a or b != b:
        return float("nan")
    return a / b


# ----------------------------------------------------------------------------- versions


def _first_line(argv: Sequence[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (p.stdout + p.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def steelyard_build(src: Path | None = None) -> str:
    """ "compiled" or "python": what Steelyard runs (from `src` first on PYTHONPATH, if given).
    "python" where compiled modules exist means they are older than a source file: the whole
    data path then runs interpreted (src/steelyard/_native.py), about a third slower."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    argv = [str(VENV_BIN / "python"), "-c", "import steelyard; print(steelyard.BUILD)"]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = p.stdout.strip().splitlines()
    return lines[-1] if lines else "unknown"


def versions() -> dict[str, str]:
    py = str(VENV_BIN / "python")
    out = {
        "python": _first_line([py, "-c", "import sys; print(sys.version.split()[0])"]),
        "uvloop": _first_line([py, "-c", "import uvloop; print(uvloop.__version__)"]),
        "httptools": _first_line([py, "-c", "import httptools; print(httptools.__version__)"]),
        "steelyard": _first_line([py, "-c", "import steelyard; print(steelyard.__version__)"]),
        # "compiled" (mypyc) or "python" (docs/build.md): the two differ by about a third
        "steelyard_build": steelyard_build(),
        "haproxy": _first_line(["haproxy", "-v"]),
        "nginx": _first_line(["nginx", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
        "iperf3": _first_line(["iperf3", "-v"]),
        "kernel": _first_line(["uname", "-sr"]),
    }
    git = _first_line(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"])
    out["steelyard_commit"] = git
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                out["cpu"] = line.split(":", 1)[1].strip()
                break
    out["cores"] = str(os.cpu_count())
    with contextlib.suppress(OSError):
        out["loadavg"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return out


# ----------------------------------------------------------------------------- backends


def nginx_backends_conf(workdir: Path, ports: Sequence[int], cpu_note: str = "") -> Path:
    """One nginx, one worker, a server block per backend port answering a small fixed body."""
    servers = "\n".join(
        f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            add_header x-server s{i + 1};
            return 200 "hello from s{i + 1}\\n";
        }}
    }}"""
        for i, port in enumerate(ports)
    )
    conf = f"""# backends for the benchmark {cpu_note}
worker_processes 1;
daemon off;
master_process on;
pid {workdir}/backends.pid;
error_log {workdir}/backends.error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {workdir}/nginx-tmp/body-b;
    {servers}
}}
"""
    (workdir / "nginx-tmp").mkdir(exist_ok=True)
    path = workdir / "backends.nginx.conf"
    path.write_text(conf)
    return path


def start_nginx(sup: Supervisor, name: str, conf: Path, cpu: str) -> Proc:
    return sup.start(
        name, ["nginx", "-p", str(sup.workdir), "-e", str(sup.workdir / f"{name}.error.log"),
               "-c", str(conf)], cpu
    )  # fmt: skip


def steelyard_cmd() -> list[str]:
    return [str(VENV_BIN / "steelyard")]
