"""Active health checks: one asyncio task per (backend, server).

How this works
--------------
`HealthSupervisor.sync()` makes the set of running checks match `engine.backends`: a task
per server of every backend with a `health_check`, started when the server appears (at
start-up, after a reload, when the admin API adds one — the supervisor also listens for
`add`/`remove` events) and cancelled when it goes away or its check settings change (then a
fresh task starts and checks at once).

Each task checks at once, then every `interval` × U(0.9, 1.1) (the jitter keeps the checks
of many servers from synchronising; it comes from engine.rng so tests can seed it), in
every state — and at once when an ejected server's time is up and only a passing check can
let it back (the `awaiting_check` event). A check is one fresh connection within `timeout`:

- `type: tcp`: the connection is established (TLS handshake included when the backend
  speaks TLS upstream);
- `type: http`: `GET path HTTP/1.1` with `Host` (the `host` setting, else the server's
  address) and `Connection: close`; the status must fall in `expect_status` and, when
  `expect_body` is set, the body (read up to 64 KiB) must contain it.

If the backend sends the PROXY protocol, the check first sends a LOCAL header (v2) or
`PROXY UNKNOWN` (v1), as HAProxy's `check-send-proxy` does, so that servers which require
the header do not log the check as garbage.

The result goes to `backend.observe_check(name, ok, reason, time.time())` — the pure state
machine in core/health.py decides what it means — and is counted in
`engine.check_counts[(backend, server, "ok" | "fail")]` for steelyard_health_checks_total.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httptools

from steelyard import __version__

log = logging.getLogger("steelyard")

MAX_CHECK_BODY = 64 * 1024
MAX_CHECK_HEAD = 64 * 1024
JITTER = 0.1


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """Everything one check task needs; a change restarts the task."""

    kind: str  # http | tcp
    host: str
    port: int
    path: str
    host_header: str
    statuses: tuple[tuple[int, int], ...]
    expect_body: bytes | None
    interval: float
    timeout: float
    tls: Any  # config UpstreamTLS or None
    proxy_protocol: str | None

    def status_ok(self, status: int) -> bool:
        return any(lo <= status <= hi for lo, hi in self.statuses)


def _status_ranges(text: str) -> tuple[tuple[int, int], ...]:
    ranges: list[tuple[int, int]] = []
    for part in str(text).split(","):
        lo, _, hi = part.strip().partition("-")
        ranges.append((int(lo), int(hi or lo)))
    return tuple(ranges)


def spec_for(backend: Any, state: Any) -> CheckSpec | None:
    cfg = getattr(backend, "config", None)
    hc = getattr(cfg, "health_check", None)
    if hc is None:
        return None
    server = state.server
    statuses = getattr(hc, "status_ranges", None) or _status_ranges(hc.expect_status)
    return CheckSpec(
        kind=hc.type,
        host=server.host,
        port=server.port,
        path=hc.path,
        host_header=hc.host or server.address,
        statuses=tuple(statuses),
        expect_body=hc.expect_body.encode() if hc.expect_body else None,
        interval=float(hc.interval),
        timeout=float(hc.timeout),
        tls=getattr(cfg, "tls", None),
        proxy_protocol=getattr(cfg, "proxy_protocol", None),
    )


def _client_ssl_context(tls: Any) -> ssl.SSLContext:
    """The same client context the proxy uses toward the backend (net/upstream_tls.py)."""
    from steelyard.net.upstream_tls import client_context

    return client_context(bool(getattr(tls, "verify", True)), getattr(tls, "ca", None) or None)


def _server_hostname(spec: CheckSpec, ssl_ctx: ssl.SSLContext) -> str | None:
    """SNI and the name to verify, by the proxy's rule (net/upstream_tls.UpstreamTLS)."""
    from steelyard.net.upstream_tls import UpstreamTLS

    name = getattr(spec.tls, "server_name", None) or None
    return UpstreamTLS((), ssl_ctx, name).server_hostname(spec.host)


def _proxy_header(version: str | None) -> bytes:
    if version is None:
        return b""
    from steelyard.core.proxy_protocol import encode_v1_unknown, encode_v2_local

    return encode_v2_local() if version == "v2" else encode_v1_unknown()


def _error_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, ssl.SSLError):
        return f"tls error: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return f"connect error: {exc.strerror or exc}"
    return f"error: {exc!r}"


class _ResponseReader:
    """httptools callbacks for one check response."""

    __slots__ = ("headers_done", "complete", "body", "body_limit")

    def __init__(self, body_limit: int) -> None:
        self.headers_done = False
        self.complete = False
        self.body = bytearray()
        self.body_limit = body_limit

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, data: bytes) -> None:
        room = self.body_limit - len(self.body)
        if room > 0:
            self.body += data[:room]

    def on_message_complete(self) -> None:
        self.complete = True


async def probe(spec: CheckSpec, ssl_ctx: ssl.SSLContext | None = None) -> tuple[bool, str]:
    """Run one check; (passed, reason). `ssl_ctx`: for backends that speak TLS upstream."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(spec.timeout):
            server_hostname = _server_hostname(spec, ssl_ctx) if ssl_ctx is not None else None
            reader, writer = await asyncio.open_connection(
                spec.host,
                spec.port,
                ssl=ssl_ctx,
                server_hostname=server_hostname,
                limit=MAX_CHECK_HEAD,
            )
            header = _proxy_header(spec.proxy_protocol)
            if spec.kind == "tcp":
                if header:
                    writer.write(header)
                    await writer.drain()
                return True, "connected"
            request = (
                f"GET {spec.path} HTTP/1.1\r\n"
                f"Host: {spec.host_header}\r\n"
                f"User-Agent: steelyard-health-check/{__version__}\r\n"
                "Accept: */*\r\n"
                "Connection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(header + request)
            await writer.drain()
            return await _read_response(reader, spec)
    except (TimeoutError, OSError) as exc:
        return False, _error_reason(exc)
    except httptools.HttpParserError:
        return False, "invalid response"
    finally:
        if writer is not None:
            writer.close()


async def _read_response(reader: asyncio.StreamReader, spec: CheckSpec) -> tuple[bool, str]:
    cb = _ResponseReader(MAX_CHECK_BODY)
    parser = httptools.HttpResponseParser(cb)
    received = 0
    while True:
        data = await reader.read(16384)
        if not data:
            break
        received += len(data)
        if not cb.headers_done and received > MAX_CHECK_HEAD:
            return False, "invalid response (head too large)"
        parser.feed_data(data)
        if cb.headers_done and (
            spec.expect_body is None
            or cb.complete
            or len(cb.body) >= MAX_CHECK_BODY
            or not spec.status_ok(parser.get_status_code())
        ):
            break
    if not cb.headers_done:
        return False, "connection closed before a response" if not received else "invalid response"
    status = parser.get_status_code()
    if not spec.status_ok(status):
        return False, f"status {status}"
    if spec.expect_body is not None and spec.expect_body not in bytes(cb.body):
        return False, "body mismatch"
    return True, f"status {status}"


class _CheckTask:
    __slots__ = ("spec", "task")

    def __init__(self, spec: CheckSpec, task: asyncio.Task[None]) -> None:
        self.spec = spec
        self.task = task


class HealthSupervisor:
    """Starts and stops the check tasks to match engine.backends."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        if getattr(engine, "check_counts", None) is None:
            engine.check_counts = {}
        self.checks: dict[tuple[str, str], _CheckTask] = {}
        self.stopped = False
        self._cancelled: list[asyncio.Task[None]] = []
        self._wake: dict[tuple[str, str], asyncio.Event] = {}
        self._sync_pending = False
        self._unsubscribe = engine.events.subscribe(self._on_event)

    def _on_event(self, event: Any) -> None:
        if event.type == "awaiting_check":
            # an ejection is over but only a passing check lets the server back: check now
            # rather than up to an interval later
            wake = self._wake.get((event.backend, event.server))
            if wake is not None:
                wake.set()
            return
        # servers added or removed outside sync() (admin API): catch up soon
        if event.type in ("add", "remove", "removed") and not self._sync_pending:
            self._sync_pending = True
            self.engine.loop.call_soon(self._deferred_sync)

    def _deferred_sync(self) -> None:
        self._sync_pending = False
        if not self.stopped:
            self.sync()

    def sync(self) -> None:
        if self.stopped:
            return
        wanted: dict[tuple[str, str], CheckSpec] = {}
        for bname, backend in self.engine.backends.items():
            for sname, state in backend.servers.items():
                if state.removed:
                    continue
                spec = spec_for(backend, state)
                if spec is not None:
                    wanted[(bname, sname)] = spec
        for key, check in list(self.checks.items()):
            if wanted.get(key) != check.spec or check.task.done():
                self._cancel(check)
                del self.checks[key]
                if key not in wanted:
                    self._wake.pop(key, None)
        for key, spec in wanted.items():
            if key not in self.checks:
                task = self.engine.loop.create_task(
                    self._run(key, spec), name=f"health-check {key[0]}/{key[1]}"
                )
                self.checks[key] = _CheckTask(spec, task)

    async def _run(self, key: tuple[str, str], spec: CheckSpec) -> None:
        bname, sname = key
        loop = asyncio.get_running_loop()
        ssl_ctx = None
        if spec.tls is not None:
            try:
                ssl_ctx = _client_ssl_context(spec.tls)
            except (OSError, ssl.SSLError) as exc:
                log.error("health check %s/%s: cannot set up TLS: %s", bname, sname, exc)
        while True:
            started = loop.time()
            if spec.tls is not None and ssl_ctx is None:
                ok, reason = False, "tls setup failed"
            else:
                try:
                    ok, reason = await probe(spec, ssl_ctx)
                except Exception as exc:  # never let one odd answer end the checking
                    log.exception("health check %s/%s: unexpected error", bname, sname)
                    ok, reason = False, f"error: {type(exc).__name__}"
            backend = self.engine.backends.get(bname)
            if backend is None or sname not in backend.servers:
                return
            result = "ok" if ok else "fail"
            counts: dict[tuple[str, str, str], int] = self.engine.check_counts
            counts[(bname, sname, result)] = counts.get((bname, sname, result), 0) + 1
            if not ok:
                log.debug("health check %s/%s failed: %s", bname, sname, reason)
            try:
                backend.observe_check(sname, ok, reason, time.time())
            except Exception:  # a bug in a state machine must not end the checking
                log.exception("health check %s/%s: observe_check failed", bname, sname)
            jitter = 1.0 + self.engine.rng.uniform(-JITTER, JITTER)
            delay = spec.interval * jitter - (loop.time() - started)
            wake = self._wake.setdefault(key, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(delay, 0.0)):
                    await wake.wait()
            wake.clear()

    def stop(self) -> None:
        self.stopped = True
        self._unsubscribe()
        for check in self.checks.values():
            self._cancel(check)
        self.checks.clear()

    def _cancel(self, check: _CheckTask) -> None:
        check.task.cancel()
        self._cancelled = [t for t in self._cancelled if not t.done()]
        self._cancelled.append(check.task)

    async def wait_stopped(self) -> None:
        """Let the cancelled tasks finish (tests, orderly shutdown)."""
        tasks, self._cancelled = self._cancelled, []
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def __repr__(self) -> str:
        return f"HealthSupervisor(checks={len(self.checks)}, stopped={self.stopped})"
