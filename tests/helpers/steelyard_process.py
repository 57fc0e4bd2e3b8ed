"""`python -m steelyard run -c FILE` as a real subprocess, for signal tests (SIGHUP reload,
SIGTERM shutdown). Its stderr (the `steelyard` logger) is read by a thread so the pipe never
fills; bound ports are read back from the "listener NAME on HOST:PORT" lines (configs bind
port 0). Stopped by PID only."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_LISTENER = re.compile(r"listener (\S+) on (\S+):(\d+)")


class SteelyardProcess:
    def __init__(self, config_path: Path, cwd: Path | None = None) -> None:
        self.config_path = config_path
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "steelyard", "run", "-c", str(config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=str(cwd or config_path.parent),
            env=env,
        )
        self.lines: list[str] = []
        self.ports: dict[str, int] = {}
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                m = _LISTENER.search(line)
                if m:
                    self.ports[m.group(1)] = int(m.group(3))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 15.0, start: int = 0) -> str:
        """The first stderr line (from index `start`) matching the regex `pattern`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no stderr line matching {pattern!r} in {timeout}s; got:\n"
                        + "\n".join(self.lines[-40:])
                    )
                self._cond.wait(min(left, 0.2))

    def port(self, listener: str = "web", timeout: float = 15.0) -> int:
        self.wait_for(rf"listener {re.escape(listener)} on ", timeout)
        return self.ports[listener]

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)

    def __enter__(self) -> SteelyardProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SteelyardProcess(pid={self.proc.pid}, rc={self.proc.poll()}, ports={self.ports})"
