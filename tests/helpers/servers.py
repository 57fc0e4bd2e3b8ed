"""Start real servers for tests on free 127.0.0.1 ports, and stop them by PID.

- `start_echo()`: a TCP echo server in its own Python process (uvloop, large reads,
  back-pressure, half-close aware: after the client's EOF it sends what is left, then EOF).
  It binds port 0 itself and reports the port on stdout, so no port is guessed.
- `start_udp_echo()`: the same for UDP (datagrams echoed to their sender, prefixed or not).
- `start_redis()` / `start_mosquitto()`: real redis-server / mosquitto processes. They cannot
  bind port 0 and tell us, so we find a free port (bind port 0 in Python, close it) and retry
  with another one if the server fails to start (the port may have been taken meanwhile).
- `run_bulk_client()`: a client process that streams N bytes through a TCP address, reads
  the echo back concurrently and prints the SHA-256 of what it sent and received.

Every process is a `ServerProcess`; `stop()` signals exactly its PID (never by name).
Run as a script (`python tests/helpers/servers.py echo|udp-echo|bulk ...`) for the
process side of the helpers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
THIS = str(Path(__file__).resolve())


@dataclass
class ServerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    host: str = HOST
    workdir: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM this PID, wait, SIGKILL if it lingers; remove its work directory."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerProcess({self.name} pid={self.pid} {self.address})"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that was free a moment ago (the caller must cope with losing a race)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_port(
    host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> bool:
    """Poll until a TCP connect succeeds (False on timeout or if `proc` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def _read_port_line(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """The child prints `PORT <n>` once it is listening."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.1):
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(b"PORT "):
                return int(line.split()[1])
    finally:
        sel.close()
    err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    raise RuntimeError(f"helper server did not start: {err}")


def _start_this(name: str, args: list[str]) -> ServerProcess:
    """Run this file as a server process; it prints the port it bound to."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return ServerProcess(name, proc, _read_port_line(proc))


def start_echo(*, name: str = "echo", reply_prefix: str = "") -> ServerProcess:
    """A TCP echo server process. With `reply_prefix`, every connection first receives
    that text plus a newline (tests use it to see which server they reached)."""
    args = [sys.executable, THIS, "echo"]
    if reply_prefix:
        args += ["--hello", reply_prefix]
    return _start_this(name, args)


def start_udp_echo(*, name: str = "udp-echo", tag: str = "") -> ServerProcess:
    """A UDP server process answering each datagram with `tag` + the datagram."""
    args = [sys.executable, THIS, "udp-echo"]
    if tag:
        args += ["--tag", tag]
    return _start_this(name, args)


def _start_with_free_port(
    name: str, build: Callable[[int, str], list[str]], attempts: int = 5, timeout: float = 10.0
) -> ServerProcess:
    last = ""
    for _ in range(attempts):
        port = free_port()
        workdir = tempfile.mkdtemp(prefix=f"steelyard-{name}-")
        args = build(port, workdir)
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir)
        if wait_port(HOST, port, timeout, proc):
            return ServerProcess(name, proc, port, workdir=workdir)
        server = ServerProcess(name, proc, port, workdir=workdir)
        server.stop()
        last = f"exit code {proc.returncode}"
    raise RuntimeError(f"{name} did not start after {attempts} attempts ({last})")


def start_redis(name: str = "redis") -> ServerProcess:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed")

    def build(port: int, workdir: str) -> list[str]:
        return [
            exe,
            "--port", str(port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", workdir,
            "--protected-mode", "no",
            "--loglevel", "warning",
        ]  # fmt: skip

    return _start_with_free_port(name, build)


def start_mosquitto(name: str = "mosquitto") -> ServerProcess:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(exe):
        raise RuntimeError("mosquitto is not installed")

    def build(port: int, workdir: str) -> list[str]:
        conf = Path(workdir) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} {HOST}\nallow_anonymous true\npersistence false\nlog_dest none\n"
        )
        return [exe, "-c", str(conf)]

    return _start_with_free_port(name, build)


def run_bulk_client(
    host: str, port: int, total: int, timeout: float = 120.0, *, hashing: bool = True
) -> tuple[str, str, int]:
    """Stream `total` bytes through (host, port) to an echo server and read them back.

    Returns (sha256 sent, sha256 received, bytes received)."""
    out = subprocess.run(
        [sys.executable, THIS, "bulk", host, str(port), str(total)]
        + ([] if hashing else ["--no-hash"]),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bulk client failed: {out.stderr.decode()[-2000:]}")
    sent, received, count = out.stdout.decode().split()
    return sent, received, int(count)


# ------------------------------------------------------------------------ process side


def _serve_echo(hello: str) -> None:
    import asyncio

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        uvloop = None

    greeting = (hello + "\n").encode() if hello else b""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            transport.set_write_buffer_limits(high=4 * 1024 * 1024)
            if greeting:
                transport.write(greeting)

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

        def eof_received(self) -> bool:
            # close once the echo is out (a FIN follows): not write_eof(), which would leave a
            # transport that no longer reads to the cyclic GC with its shutdown(2) request
            # pending, and uvloop 0.23 crashes when it frees one (see docs/l4.md)
            return False

        def pause_writing(self) -> None:
            self.transport.pause_reading()

        def resume_writing(self) -> None:
            self.transport.resume_reading()

        def connection_lost(self, exc: Exception | None) -> None:
            pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, HOST, 0)
        print("PORT", server.sockets[0].getsockname()[1], flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    if uvloop is not None:
        uvloop.run(main())
    else:  # pragma: no cover
        asyncio.run(main())


def _serve_udp_echo(tag: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    print("PORT", sock.getsockname()[1], flush=True)
    prefix = tag.encode()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(prefix + data, peer)


def _bulk(host: str, port: int, total: int, hashing: bool = True) -> None:
    import hashlib
    import random
    import threading

    block = random.Random(12345).randbytes(1 << 20)
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sent_hash = hashlib.sha256()
    recv_hash = hashlib.sha256()
    received = 0
    error: list[BaseException] = []

    def sender() -> None:
        # block i is the random block rotated by i * 7919 bytes: cheap to make, and a
        # reordered, repeated or dropped chunk changes the digest
        try:
            view = memoryview(block)
            left = total
            i = 0
            while left > 0:
                shift = (i * 7919) % len(block)
                for part in (view[shift:], view[:shift]):
                    part = part[: min(left, len(part))]
                    if not part:
                        continue
                    if hashing:
                        sent_hash.update(part)
                    sock.sendall(part)
                    left -= len(part)
                i += 1
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # pragma: no cover
            error.append(exc)

    thread = threading.Thread(target=sender)
    thread.start()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while True:
        n = sock.recv_into(buf)
        if n == 0:
            break
        if hashing:
            recv_hash.update(view[:n])
        received += n
    thread.join()
    sock.close()
    if error:
        raise error[0]
    print(sent_hash.hexdigest(), recv_hash.hexdigest(), received)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "echo":
        _serve_echo(sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--hello" else "")
    elif mode == "udp-echo":
        _serve_udp_echo(sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--tag" else "")
    elif mode == "bulk":
        _bulk(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), "--no-hash" not in sys.argv)
    else:
        raise SystemExit(f"unknown mode {mode}")
