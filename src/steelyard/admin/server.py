"""The admin listener: a small HTTP/1.1 server on asyncio streams (not the hot path).

How this works: each connection reads bytes and feeds an httptools parser; every complete
request is dispatched in order (keep-alive and pipelining work), answered with a
Content-Length body, and the connection closes when either side asks for it. Request heads are
limited to 64 KiB and bodies to 1 MiB. `GET /api/v1/events` turns the connection into a
server-sent-event stream (one `EventBus` subscription with a bounded queue per client; a client
too slow to keep up is dropped) that lasts until the client leaves or the server stops.

Authorization: with `admin.token` set, `/api/...` and `/metrics` need
`Authorization: Bearer TOKEN` (compared in constant time); `/`, `/static/...` and `/healthz`
do not. Mutating requests that carry an `Origin` header from another origin are refused (403),
so that a web page cannot drive a token-less admin listener on loopback (CSRF).

Routes (SPEC §4, plus the dashboard's extras, documented in docs/operations.md):
    GET  /  /static/{file}  /healthz  /metrics
    GET  /api/v1/status | /api/v1/backends | /api/v1/backends/{b} | /api/v1/stats
    GET  /api/v1/events (SSE; ?history=N replays the last N) | /api/v1/events/recent
    GET|POST /api/v1/backends/{b}/servers
    GET|DELETE /api/v1/backends/{b}/servers/{s}
    POST /api/v1/backends/{b}/servers/{s}/drain|enable|disable
    PUT  /api/v1/backends/{b}/servers/{s}/weight
    POST /api/v1/reload
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import json
import logging
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httptools
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from steelyard.admin.api import (
    ApiError,
    backend_json,
    event_json,
    parse_new_server,
    parse_weight,
    server_json,
)
from steelyard.admin.metrics import SteelyardCollector, stats_snapshot
from steelyard.admin.traffic import EjectionCounter, TrafficRecorder
from steelyard.core.backend import BackendError
from steelyard.core.events import Event

log = logging.getLogger("steelyard")

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
IDLE_TIMEOUT = 60.0
SSE_HEARTBEAT = 15.0
SSE_QUEUE = 1000

STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}

REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class _TooLarge(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Request:
    __slots__ = ("method", "target", "path", "segments", "query", "headers", "body", "keep_alive")

    def __init__(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.target = target
        split = urlsplit(target)
        self.path = split.path or "/"
        # split before decoding, so that an encoded '/' stays inside its segment
        self.segments = [unquote(p) for p in self.path.split("/") if p]
        self.query = parse_qs(split.query)
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive

    def json(self) -> Any:
        if not self.body.strip():
            raise ApiError(400, "a JSON body is required")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"invalid JSON body: {exc}") from None

    def __repr__(self) -> str:
        return f"Request({self.method} {self.target})"


class Response:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
        body = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
        return cls(status, body, "application/json", headers)

    def __repr__(self) -> str:
        return f"Response({self.status}, {len(self.body)} bytes)"


class _EventStream:
    """Marker: answer this request with the SSE stream."""

    __slots__ = ("history",)

    def __init__(self, history: int) -> None:
        self.history = history


class _RequestParser:
    """httptools callbacks -> complete Request objects in `ready`."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.ready: deque[Request] = deque()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.head_size = 0
        self.expect_continue = False

    def on_headers_complete(self) -> None:
        # curl sends `Expect: 100-continue` before bodies over 1 KiB and waits for the answer
        if self.headers.get("expect", "").lower() == "100-continue":
            self.expect_continue = True

    def feed(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > MAX_HEAD:
            raise _TooLarge(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD:
            raise _TooLarge(431)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_BODY:
            raise _TooLarge(413)

    def on_message_complete(self) -> None:
        self.ready.append(
            Request(
                self.parser.get_method().decode("latin-1"),
                self.url.decode("latin-1"),
                self.headers,
                bytes(self.body),
                self.parser.should_keep_alive(),
            )
        )


class AdminServer:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        cfg = engine.config.admin
        self.bind: str = cfg.bind  # a new bind takes a restart; the token follows reloads
        self._token: str | None = cfg.token or None
        self.host, self.port = _split_bind(self.bind)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()
        self._closing = False
        self._static_cache: dict[str, bytes] = {}
        self._stats_cache: tuple[Any, dict[str, Any]] | None = None
        # metrics: a hot-path recorder, an ejection counter on the event bus, a collector
        if getattr(engine, "check_counts", None) is None:
            engine.check_counts = {}  # (backend, server, result) -> int, bumped by health checks
        self.recorder = TrafficRecorder(started=time.time())
        engine.recorders.append(self.recorder)
        self.ejections = EjectionCounter()
        self._unsubscribe = engine.events.subscribe(self.ejections)
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = SteelyardCollector(engine, self.recorder, self.ejections)
        self.registry.register(self.collector)

    @property
    def token(self) -> str | None:
        """The token of the running config (a reload may rotate it; removing the admin
        section from the file keeps the last one)."""
        cfg = getattr(self.engine.config, "admin", None)
        if cfg is not None:
            self._token = cfg.token or None
        return self._token

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        from steelyard.engine import StartError

        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, reuse_address=True, limit=MAX_HEAD
            )
        except OSError as exc:
            raise StartError(f"admin: cannot bind {self.bind}: {exc.strerror or exc}") from exc
        sockets = self._server.sockets or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._closing = True
        self._unsubscribe()
        if self.recorder in self.engine.recorders:
            self.engine.recorders.remove(self.recorder)
        if self._server is not None:
            self._server.close()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    # -- connections ---------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        parser = _RequestParser()
        try:
            while not self._closing:
                data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
                if not data:
                    return
                try:
                    parser.feed(data)
                except httptools.HttpParserUpgrade:
                    await self._send(writer, Response.json(400, {"error": "upgrade not supported"}))
                    return
                except httptools.HttpParserCallbackError as exc:
                    cause = exc.__context__
                    status = cause.status if isinstance(cause, _TooLarge) else 400
                    message = "request too large" if status != 400 else "malformed request"
                    await self._send(writer, Response.json(status, {"error": message}), False)
                    return
                except httptools.HttpParserError:
                    await self._send(writer, Response.json(400, {"error": "malformed request"}))
                    return
                if parser.expect_continue and not parser.ready:
                    parser.expect_continue = False
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                while parser.ready:
                    request = parser.ready.popleft()
                    result = await self._dispatch(request)
                    if isinstance(result, _EventStream):
                        if request.method == "HEAD":
                            result = Response(200, b"", "text/event-stream; charset=utf-8")
                        else:
                            await self._stream_events(writer, result)
                            return
                    keep = request.keep_alive and not self._closing
                    if request.method == "HEAD":
                        length = str(len(result.body))  # what GET would send
                        result = Response(result.status, b"", result.content_type, result.headers)
                        result.headers["Content-Length"] = length
                    await self._send(writer, result, keep)
                    if not keep:
                        return
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): end quietly
        except Exception:
            log.exception("admin: connection handler failed")
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _send(
        self, writer: asyncio.StreamWriter, response: Response, keep_alive: bool = False
    ) -> None:
        headers = {
            "Content-Type": response.content_type,
            "Content-Length": str(len(response.body)),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            **response.headers,
        }
        if not keep_alive:
            headers["Connection"] = "close"
        reason = REASONS.get(response.status, "Unknown")
        head = f"HTTP/1.1 {response.status} {reason}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        writer.write(head.encode("latin-1") + b"\r\n" + response.body)
        await writer.drain()

    async def _stream_events(self, writer: asyncio.StreamWriter, stream: _EventStream) -> None:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=SSE_QUEUE)

        def on_event(event: Event) -> None:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # too slow: end this client's stream
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)

        unsubscribe = self.engine.events.subscribe(on_event)
        try:
            head = (
                "HTTP/1.1 200 OK\r\n"
                "Content-Type: text/event-stream; charset=utf-8\r\n"
                "Cache-Control: no-store\r\n"
                "X-Accel-Buffering: no\r\n"
                "Connection: close\r\n\r\n"
                "retry: 2000\n\n"
            )
            writer.write(head.encode())
            if stream.history > 0:
                for event in list(self.engine.events.history)[-stream.history :]:
                    writer.write(_sse(event))
            await writer.drain()
            while not self._closing:
                try:
                    event = await asyncio.wait_for(queue.get(), SSE_HEARTBEAT)
                except TimeoutError:
                    writer.write(b": keep-alive\n\n")
                    await writer.drain()
                    continue
                if event is None:
                    return
                writer.write(_sse(event))
                await writer.drain()
        finally:
            unsubscribe()

    # -- dispatch ------------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response | _EventStream:
        try:
            return await self._route(request)
        except ApiError as exc:
            headers = {}
            if exc.status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="steelyard"'
            if exc.status == 405 and "allow" in exc.extra:
                headers["Allow"] = exc.extra.pop("allow")
            return Response.json(exc.status, exc.body(), headers)
        except BackendError as exc:
            return Response.json(exc.status, {"error": str(exc)})
        except Exception:
            log.exception("admin: %s %s failed", request.method, request.target)
            return Response.json(500, {"error": "internal error"})

    async def _route(self, request: Request) -> Response | _EventStream:
        method = "GET" if request.method == "HEAD" else request.method
        seg = request.segments
        if not seg or seg == ["index.html"]:
            _allow(method, "GET")
            return self._static("index.html")
        if seg[0] == "static" and len(seg) == 2:
            _allow(method, "GET")
            return self._static(seg[1])
        if seg == ["healthz"]:
            _allow(method, "GET")
            if self.engine.shutting_down:
                return Response.json(503, {"status": "shutting down"})
            return Response.json(200, {"status": "ok"})
        if seg == ["metrics"]:
            self._authorize(request)
            _allow(method, "GET")
            return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        if seg[:2] != ["api", "v1"]:
            raise ApiError(404, f"no such path: {request.path}")
        self._authorize(request)
        if method not in ("GET", "HEAD"):
            self._check_origin(request)
        return await self._api(method, seg[2:], request)

    async def _api(self, method: str, seg: list[str], request: Request) -> Response | _EventStream:
        engine = self.engine
        if seg == ["status"]:
            _allow(method, "GET")
            status = engine.status()
            for listener in status.get("listeners", ()):
                bound = engine.bound.get(listener.get("name"))
                if bound is not None:  # beyond SPEC: the address actually bound (port 0)
                    host, port = bound
                    listener["address"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            return Response.json(200, status)
        if seg == ["backends"]:
            _allow(method, "GET")
            return Response.json(
                200, {"backends": [backend_json(n, b) for n, b in engine.backends.items()]}
            )
        if seg == ["stats"]:
            _allow(method, "GET")
            return Response.json(200, self._stats())
        if seg == ["reload"]:
            _allow(method, "POST")
            return await self._reload()
        if seg == ["events"]:
            _allow(method, "GET")
            return _EventStream(_int_param(request, "history", 0, 0, 200))
        if seg == ["events", "recent"]:
            _allow(method, "GET")
            limit = _int_param(request, "limit", 50, 1, 200)
            history = list(engine.events.history)[-limit:]
            return Response.json(200, {"events": [event_json(e) for e in reversed(history)]})
        if seg and seg[0] == "backends" and len(seg) >= 2:
            backend = self._backend(seg[1])
            rest = seg[2:]
            if not rest:
                _allow(method, "GET")
                return Response.json(200, backend_json(seg[1], backend))
            if rest[0] != "servers":
                raise ApiError(404, f"no such path: {request.path}")
            if len(rest) == 1:
                _allow(method, "GET", "POST")
                if method == "POST":
                    return self._add_server(seg[1], backend, request)
                return Response.json(200, backend_json(seg[1], backend)["servers"])
            name = rest[1]
            if len(rest) == 2:
                _allow(method, "GET", "DELETE")
                if method == "DELETE":
                    state = backend.remove_server(name)
                    return Response.json(200, server_json(state, backend.clock()))
                return Response.json(200, server_json(backend.get(name), backend.clock()))
            if len(rest) == 3:
                action = rest[2]
                if action in ("drain", "enable", "disable"):
                    _allow(method, "POST")
                    state = getattr(backend, action)(name)
                    return Response.json(200, server_json(state, backend.clock()))
                if action == "weight":
                    _allow(method, "PUT")
                    backend.get(name)  # 404 before 400
                    body = request.json()
                    if not isinstance(body, dict) or "weight" not in body:
                        raise ApiError(400, 'expected a JSON object {"weight": N}')
                    state = backend.set_weight(name, parse_weight(body["weight"]))
                    return Response.json(200, server_json(state, backend.clock()))
        raise ApiError(404, f"no such path: {request.path}")

    def _stats(self) -> dict[str, Any]:
        """Rolling statistics; computed at most once per second and membership (they cover
        complete seconds only), however many dashboards poll."""
        now = time.time()
        key = (int(now), tuple((n, b.version) for n, b in self.engine.backends.items()))
        if self._stats_cache is None or self._stats_cache[0] != key:
            self._stats_cache = (key, stats_snapshot(self.engine, self.recorder, now))
        return self._stats_cache[1]

    def _backend(self, name: str) -> Any:
        backend = self.engine.backends.get(name)
        if backend is None:
            raise ApiError(404, f"no backend {name!r}")
        return backend

    def _add_server(self, bname: str, backend: Any, request: Request) -> Response:
        server = parse_new_server(request.json())
        state = backend.add_server(server)
        health = self.engine.health
        if health is not None:
            health.sync()
        elif backend.health_checked:
            # no checker running (as the engine does at start): trust the operator
            backend.observe_check(server.name, True, "no checker", time.time())
        return Response.json(201, server_json(state, backend.clock()))

    async def _reload(self) -> Response:
        from steelyard.config import ConfigError

        async with self._reload_lock:
            try:
                await self.engine.reload()
            except ConfigError as exc:
                problems = [str(p) for p in exc.problems]
                raise ApiError(
                    400,
                    f"invalid config ({len(problems)} problem{'s' if len(problems) != 1 else ''});"
                    " the old config stays",
                    problems=problems,
                ) from None
            except OSError as exc:
                raise ApiError(400, f"cannot read the config file: {exc.strerror or exc}") from None
            except RuntimeError as exc:
                raise ApiError(400, str(exc)) from None
        status = self.engine.status()
        return Response.json(200, {"reloaded": True, "config_hash": status.get("config_hash")})

    # -- helpers -------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        token = self.token
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credentials.strip().encode(), token.encode()
        ):
            raise ApiError(401, "missing or wrong token (Authorization: Bearer TOKEN)")

    def _check_origin(self, request: Request) -> None:
        origin = request.headers.get("origin")
        if origin is None or self.token is not None:
            return  # not from a browser page, or a page that had to know the token
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc.lower() != host.lower():
            raise ApiError(403, "cross-origin request refused")

    def _static(self, name: str) -> Response:
        suffix = name[name.rfind(".") :] if "." in name else ""
        ctype = STATIC_TYPES.get(suffix)
        if ctype is None or "/" in name or name.startswith("."):
            raise ApiError(404, f"no such file: {name}")
        body = self._static_cache.get(name)
        if body is None:
            try:
                body = (
                    importlib.resources.files("steelyard.admin").joinpath("static", name)
                ).read_bytes()
            except (FileNotFoundError, IsADirectoryError, OSError):
                raise ApiError(404, f"no such file: {name}") from None
            self._static_cache[name] = body
        headers = {
            "Content-Security-Policy": (
                "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:"
            ),
            "X-Frame-Options": "DENY",
        }
        return Response(200, body, ctype, headers)

    def __repr__(self) -> str:
        state = "closing" if self._closing else ("serving" if self._server else "stopped")
        return f"AdminServer({self.url} {state}, token={'set' if self.token else 'none'})"


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise ApiError(405, f"method {method} not allowed", allow=", ".join(allowed))


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    values = request.query.get(name)
    if not values:
        return default
    try:
        value = int(values[0])
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    return max(low, min(high, value))


def _sse(event: Event) -> bytes:
    data = json.dumps(event_json(event), separators=(",", ":"))
    return f"event: {event.type}\ndata: {data}\n\n".encode()


def _split_bind(bind: str) -> tuple[str, int]:
    if bind.startswith("["):
        host, _, port = bind[1:].partition("]:")
    else:
        host, _, port = bind.rpartition(":")
    return host or "127.0.0.1", int(port)
