"""Test HTTP backends and clients built on h11 (an independent HTTP/1.1 implementation).

    async with http_backend("s1") as b:      # b.port, b.address ("127.0.0.1:PORT")
        ...

Every response carries `x-server: NAME`; the default body is NAME. Paths:

    /echo                 JSON: {"server", "method", "target", "http_version", "headers": [[n, v]],
                          "body" (latin-1 text), "trailers": [[n, v]]}
    /health               200, or 503 while b.healthy is False
    /status/NNN           that status, body NAME
    /big/N                N bytes (Content-Length), written in 64 KiB pieces
    /chunked              chunked body "a", "bb", "ccc" and trailers x-checksum: 42, x-end: yes
    /stream/N             N bytes, chunked, in 64 KiB chunks
    /delay/SECONDS        waits before the response head
    /reset-before-head    resets the connection (RST) instead of answering
    /reset-after-head     sends a head with Content-Length: 100 and 10 bytes, then resets
    /close                answers with Connection: close and closes
    /head-only            HEAD-style: answers any method with Content-Length: 5, no body
    /stall                a head with Content-Length: 100, 10 bytes, then silence (30s)
    /hop                  a response carrying hop-by-hop fields (Connection: x-secret, ...)
    /no-length            body NAME delimited by closing the connection (HTTP/1.0-style)
    /upgrade              101 to `Upgrade: echo`, then echoes bytes upper-cased

`behaviour` (a Behaviour, mutable via b.behaviour) applies to every request: delay before the
head, reset before/after the head, close after the response.

Counters: b.connections (accepted), b.requests (a list of RequestSeen), b.open (now open).

Clients: `request()` sends one request on a fresh socket and parses the answer with h11;
`RawClient` sends raw bytes and reads raw answers (smuggling, pipelining, timeouts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import h11


@dataclass
class Behaviour:
    delay: float = 0.0  # before the response head
    reset_before_head: bool = False
    reset_after_head: bool = False
    close_after_response: bool = False
    status: int = 200
    read_delay: float = 0.0  # before reading a request body (uploads back up)
    reset_reused: bool = False  # reset a connection on its second request (keep-alive race)


class HeaderLookup:
    """Case-insensitive reads of `headers` (lower-cased (name, value) pairs, in order)."""

    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        name = name.lower()
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n == name]


@dataclass
class RequestSeen(HeaderLookup):
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class HttpBackend:
    def __init__(self, name: str, behaviour: Behaviour | None = None) -> None:
        self.name = name
        self.behaviour = behaviour or Behaviour()
        self.healthy = True
        self.connections = 0
        self.open = 0
        self.requests: list[RequestSeen] = []
        self.server: asyncio.Server | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1") -> None:
        self.server = await asyncio.start_server(self._serve, host, 0)
        sockname = self.server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self._writers):
                w.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    def close_idle_connections(self) -> None:
        """Close every open connection (as a server's keep-alive timeout would)."""
        for w in list(self._writers):
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        served = 0
        try:
            while True:
                if served and self.behaviour.reset_reused:
                    await reader.read(1)  # the next request arrives: reset without answering
                    _reset(writer)
                    break
                served += 1
                ok = await self._one(conn, reader, writer)
                if not ok:
                    break
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    break
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    break
        except (ConnectionError, h11.RemoteProtocolError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the server is stopping
        finally:
            self.open -= 1
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _next_event(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            return event

    async def _one(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        event = await self._next_event(conn, reader)
        if isinstance(event, h11.ConnectionClosed):
            return False
        assert isinstance(event, h11.Request), event
        target = event.target.decode("latin-1")
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers]
        if conn.they_are_waiting_for_100_continue and not target.startswith("/no-continue"):
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        body = bytearray()
        trailers: list[tuple[str, str]] = []
        if self.behaviour.read_delay:
            await asyncio.sleep(self.behaviour.read_delay)
        while True:
            ev = await self._next_event(conn, reader)
            if isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                trailers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in ev.headers]
                break
            elif isinstance(ev, h11.ConnectionClosed):
                return False
        seen = RequestSeen(event.method.decode(), target, headers, bytes(body), trailers)
        self.requests.append(seen)
        return await self._respond(conn, writer, seen, reader)

    async def _respond(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        req: RequestSeen,
        reader: asyncio.StreamReader,
    ) -> bool:
        b = self.behaviour
        path = req.target.split("?", 1)[0]
        if b.delay:
            await asyncio.sleep(b.delay)
        if path.startswith("/delay/"):
            await asyncio.sleep(float(path[len("/delay/") :]))
        if b.reset_before_head or path == "/reset-before-head":
            _reset(writer)
            return False
        base = [("x-server", self.name)]
        close = b.close_after_response or path == "/close"
        if close:
            base.append(("connection", "close"))
        name = self.name.encode()
        send = writer.write

        def simple(status: int, body: bytes, extra: Iterable[tuple[str, str]] = ()) -> None:
            headers = [*base, *extra, ("content-length", str(len(body)))]
            send(conn.send(h11.Response(status_code=status, headers=headers)))
            if req.method != "HEAD":
                send(conn.send(h11.Data(data=body)))
            send(conn.send(h11.EndOfMessage()))

        async def pieces(fill: bytes, n: int) -> None:
            """n bytes of `fill` in 64 KiB pieces (chunks when chunked), then the end."""
            piece = fill * 65536
            left = n
            while left > 0:
                part = piece[: min(left, 65536)]
                send(conn.send(h11.Data(data=part)))
                left -= len(part)
                await writer.drain()
            send(conn.send(h11.EndOfMessage()))

        if path == "/echo":
            payload = {
                "server": self.name,
                "method": req.method,
                "target": req.target,
                "headers": req.headers,
                "body": req.body.decode("latin-1"),
                "trailers": req.trailers,
            }
            simple(b.status, json.dumps(payload).encode(), [("content-type", "application/json")])
        elif path == "/health":
            simple(200 if self.healthy else 503, name)
        elif path.startswith("/status/"):
            simple(int(path[len("/status/") :]), name)
        elif path.startswith("/big/"):
            n = int(path[len("/big/") :])
            headers = [*base, ("content-length", str(n))]
            send(conn.send(h11.Response(status_code=200, headers=headers)))
            await pieces(b"x", n)
        elif path.startswith("/stream/"):
            n = int(path[len("/stream/") :])
            send(conn.send(h11.Response(status_code=200, headers=[*base])))
            await pieces(b"y", n)
        elif path == "/chunked":
            headers = [*base, ("transfer-encoding", "chunked"), ("trailer", "x-checksum, x-end")]
            send(conn.send(h11.Response(status_code=200, headers=headers)))
            for part in (b"a", b"bb", b"ccc"):
                send(conn.send(h11.Data(data=part)))
                await writer.drain()
            send(conn.send(h11.EndOfMessage(headers=[("x-checksum", "42"), ("x-end", "yes")])))
        elif path == "/reset-after-head" or b.reset_after_head:
            send(
                b"HTTP/1.1 200 OK\r\nx-server: "
                + name
                + b"\r\ncontent-length: 100\r\n\r\n0123456789"
            )
            await writer.drain()
            await asyncio.sleep(0.05)
            _reset(writer)
            return False
        elif path == "/head-only":
            send(b"HTTP/1.1 200 OK\r\nx-server: " + name + b"\r\ncontent-length: 5\r\n\r\n")
            # h11 state is now out of step; keep the connection usable by restarting it
            await writer.drain()
            return await self._raw_continue(writer, reader)
        elif path == "/stall":
            send(
                b"HTTP/1.1 200 OK\r\nx-server: "
                + name
                + b"\r\ncontent-length: 100\r\n\r\n0123456789"
            )
            await writer.drain()
            await asyncio.sleep(30)
            return False
        elif path == "/hop":
            send(
                b"HTTP/1.1 200 OK\r\nx-server: " + name + b"\r\nConnection: x-secret\r\n"
                b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
                b"Trailer: x-t\r\nUpgrade: foo\r\nTE: trailers\r\nX-Request-Id: from-server\r\n"
                b"content-length: 2\r\n\r\nok"
            )
            await writer.drain()
            return await self._raw_continue(writer, reader)
        elif path == "/no-length":
            send(b"HTTP/1.1 200 OK\r\nx-server: " + name + b"\r\n\r\n" + name)
            await writer.drain()
            writer.close()
            return False
        elif path == "/upgrade":
            send(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n"
                b"x-server: " + name + b"\r\n\r\n"
            )
            await writer.drain()
            leftover, _ = conn.trailing_data
            if leftover:
                send(bytes(leftover).upper())
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                send(data.upper())
                await writer.drain()
            return False
        else:
            simple(b.status, name)
        await writer.drain()
        if close:
            writer.close()
            return False
        return True

    async def _raw_continue(
        self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader
    ) -> bool:
        await self._serve_rest(reader, writer)
        return False

    async def _serve_rest(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            ok = await self._one(conn, reader, writer)
            if not ok or conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    def __repr__(self) -> str:
        return (
            f"HttpBackend({self.name} {self.address} connections={self.connections} "
            f"requests={len(self.requests)})"
        )


@contextlib.asynccontextmanager
async def http_backend(
    name: str = "s1", behaviour: Behaviour | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[HttpBackend]:
    backend = HttpBackend(name, behaviour)
    await backend.start(host)
    try:
        yield backend
    finally:
        await backend.stop()


# -- clients ----------------------------------------------------------------------------------


@dataclass
class Reply(HeaderLookup):
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)
    interim: list[int] = field(default_factory=list)
    http_version: str = "1.1"

    def json(self) -> Any:
        return json.loads(self.body)


class ReplyParts:
    """h11 client events of one response collected into a Reply (`reply` set at its end)."""

    def __init__(self) -> None:
        self.interim: list[int] = []
        self.response: h11.Response | None = None
        self.body = bytearray()
        self.reply: Reply | None = None

    def take(self, event: Any) -> bool:
        """Add one event; False when it is not part of a response (the caller decides)."""
        if isinstance(event, h11.InformationalResponse):
            self.interim.append(event.status_code)
        elif isinstance(event, h11.Response):
            self.response = event
        elif isinstance(event, h11.Data):
            self.body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert self.response is not None
            self.reply = Reply(
                self.response.status_code,
                _text_fields(self.response.headers),
                bytes(self.body),
                _text_fields(event.headers),
                self.interim,
                self.response.http_version.decode(),
            )
        else:
            return False
        return True


def _text_fields(fields: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in fields]


class H11Client:
    """A keep-alive client on one connection, parsing every answer with h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> H11Client:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(
        self,
        method: str = "GET",
        target: str = "/",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | Iterable[bytes] = b"",
        host: str = "test.local",
        trailers: Iterable[tuple[str, str]] = (),
        timeout: float = 10.0,
    ) -> Reply:
        hdrs = list(headers)
        if not any(n.lower() == "host" for n, _ in hdrs):
            hdrs.insert(0, ("host", host))
        parts = [body] if isinstance(body, bytes) else list(body)
        has_framing = any(n.lower() in ("content-length", "transfer-encoding") for n, _ in hdrs)
        if not has_framing and (len(parts) != 1 or parts[0] or method in ("POST", "PUT")):
            if isinstance(body, bytes):
                hdrs.append(("content-length", str(len(body))))
            else:
                hdrs.append(("transfer-encoding", "chunked"))
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        self.writer.write(self.conn.send(h11.Request(method=method, target=target, headers=hdrs)))
        for part in parts:
            if part:
                self.writer.write(self.conn.send(h11.Data(data=part)))
        self.writer.write(self.conn.send(h11.EndOfMessage(headers=list(trailers))))
        await self.writer.drain()
        return await asyncio.wait_for(self.read_reply(), timeout)

    async def read_reply(self) -> Reply:
        parts = ReplyParts()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(65536)
                self.conn.receive_data(data)
                continue
            if parts.take(event):
                if parts.reply is not None:
                    return parts.reply
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before the response ended")

    @property
    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def request(port: int, method: str = "GET", target: str = "/", **kw: Any) -> Reply:
    """One request on a fresh connection."""
    client = await H11Client.connect(port)
    try:
        return await client.request(method, target, **kw)
    finally:
        await client.close()


class RawClient:
    """Raw bytes in, raw bytes out: for malformed input and exact-byte assertions."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_until_close(self, timeout: float = 10.0) -> bytes:
        """Everything until EOF (or a reset, which also ends it)."""
        out = bytearray()

        async def run() -> None:
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionError:
                    return
                if not data:
                    return
                out.extend(data)

        await asyncio.wait_for(run(), timeout)
        return bytes(out)

    async def read_exactly(self, n: int, timeout: float = 5.0) -> bytes:
        """The next n bytes (fewer only if the connection ends first)."""
        try:
            return await asyncio.wait_for(self.reader.readexactly(n), timeout)
        except asyncio.IncompleteReadError as exc:
            return exc.partial

    async def read_response(self, timeout: float = 10.0) -> Reply:
        """One response parsed with h11 (leaves following bytes in the reader's buffer)."""
        conn = h11.Connection(h11.CLIENT)
        # tell h11 a request went out so it parses a response
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        client = H11Client(self.reader, self.writer)
        client.conn = conn
        return await asyncio.wait_for(client.read_reply(), timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


ECHO_UPGRADE = b"GET /upgrade HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"


async def open_echo_tunnel(port: int, early: bytes = b"") -> tuple[RawClient, bytes]:
    """A connection upgraded to the test backends' `echo` protocol (bytes come back
    upper-cased), `early` sent right behind the request; returns it and the 101 head."""
    raw = await RawClient.connect(port)
    await raw.send(ECHO_UPGRADE + early)
    head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return raw, head


def parse_responses(data: bytes, methods: Iterable[str] | None = None) -> list[Reply]:
    """Parse a byte string holding several responses (pipelining) with h11."""
    replies: list[Reply] = []
    methods = list(methods or [])
    rest = data
    i = 0
    while rest:
        conn = h11.Connection(h11.CLIENT)
        method = methods[i] if i < len(methods) else "GET"
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(rest)
        parts = ReplyParts()
        while parts.reply is None:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(b"")
                continue
            if not parts.take(event):
                raise AssertionError(f"unexpected {event!r}")
        replies.append(parts.reply)
        rest = bytes(conn.trailing_data[0])
        i += 1
    return replies


# -- a Steelyard engine in-process ------------------------------------------------------------


@dataclass
class Running:
    engine: Any
    port: int
    records: list[Any]

    def listener(self, name: str = "web") -> Any:
        return self.engine.listeners[name].runtime


def backends_yaml(backends: dict[str, list[Any]], **options: Any) -> str:
    """A `backends:` section for test backends; options go into every backend."""
    lines = ["backends:"]
    for name, servers in backends.items():
        lines.append(f"  {name}:")
        for key, value in options.items():
            lines.append(f"    {key}: {json.dumps(value)}")
        lines.append("    servers:")
        for s in servers:
            lines.append(f"      - {{address: '{s.address}', name: {s.name}}}")
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def steelyard(config_text: str, listener: str = "web") -> AsyncIterator[Running]:
    """Start an Engine from YAML text (listeners bound to 127.0.0.1:0); stop it afterwards."""
    from steelyard.config import load_config_text
    from steelyard.engine import Engine

    config = load_config_text(config_text)
    engine = Engine(config, loop=asyncio.get_running_loop())
    records: list[Any] = []
    engine.recorders.append(records.append)
    await engine.start()
    try:
        yield Running(engine, engine.bound[listener][1], records)
    finally:
        await engine.shutdown(2.0)


def proxy_config(
    backends: dict[str, list[Any]],
    routes: str | None = None,
    listener: str = "",
    **backend_options: Any,
) -> str:
    """YAML for one http listener `web` on 127.0.0.1:0 in front of test backends.

    routes: the YAML list under `routes:` (indented by 6); default: everything to the first
    backend. listener: extra YAML lines for the listener (indented by 4).
    """
    if routes is None:
        first = next(iter(backends))
        routes = f"      - match: {{path_prefix: /}}\n        backend: {first}\n"
    text = "version: 1\nlisteners:\n  - name: web\n    bind: 127.0.0.1:0\n"
    if listener:
        text += listener.rstrip("\n") + "\n"
    text += "    routes:\n" + routes.rstrip("\n") + "\n"
    return text + backends_yaml(backends, **backend_options)


@dataclass
class DeadServer:
    """A server address nobody listens on (connections are refused)."""

    name: str
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        # bound and kept, never listening: connecting is refused, and nobody else gets the port
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((self.host, 0))
        self.port = self._sock.getsockname()[1]

    def close(self) -> None:
        self._sock.close()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class BlackholeServer:
    """A server address where connecting hangs (its accept queue is full): connect timeouts.

    `sock` is the listening socket (accept from it to let a connect through), `fillers` the
    client sockets that fill its queue."""

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers: list[socket.socket] = []
        for _ in range(4):  # fill the accept queue; later SYNs are dropped
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect((host, self.port))
            self.fillers.append(c)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        for c in self.fillers:
            c.close()
        self.sock.close()
