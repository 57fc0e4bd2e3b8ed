"""A bare uvloop + httptools HTTP/1.1 relay: the reference point for "how fast can Python go".

How this works: it does the least an HTTP load balancer can do and nothing else, so that the
benchmark can show how far Steelyard is from the floor of Python's per-request cost on this
machine. Downstream requests are parsed with httptools; each request head is rebuilt (hop-by-hop
`Connection` dropped, X-Forwarded-For added) and sent on an idle keep-alive connection to the next
of the servers in round robin (a new one is opened when none is idle); the response head is
rebuilt the same way (`Connection: close` when the client asked for it), the body is passed on as
httptools hands it over, and at the response's end the upstream connection goes back to its idle
list. Request bodies, pipelining, timeouts, errors and every
other part of SPEC §3 are left out on purpose: this is a yardstick, not a proxy.

Usage: python bench/bare_relay.py LISTEN_PORT SERVER_PORT [SERVER_PORT ...]
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import cast

import httptools
import uvloop


class UpstreamConn(asyncio.Protocol):
    __slots__ = ("relay", "port", "transport", "parser", "client", "reason", "headers")

    def __init__(self, relay: Relay, port: int) -> None:
        self.relay = relay
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: Downstream | None = None
        self.reason = b""
        self.headers: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.reason = b""
        self.headers = []

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in (b"connection", b"keep-alive"):
            self.headers.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        client = self.client
        if client is None or client.transport is None:
            return
        status = str(self.parser.get_status_code()).encode()
        close = b"connection: close\r\n" if client.close else b""
        head = b"HTTP/1.1 " + status + b" " + self.reason + b"\r\n" + b"".join(self.headers)
        client.transport.write(head + close + b"\r\n")

    def on_body(self, body: bytes) -> None:
        client = self.client
        if client is not None and client.transport is not None:
            client.transport.write(body)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        self.relay.idle[self.port].append(self)
        if client is not None:
            client.response_done()

    def connection_lost(self, exc: Exception | None) -> None:
        idle = self.relay.idle[self.port]
        if self in idle:
            idle.remove(self)
        if self.client is not None and self.client.transport is not None:
            self.client.transport.close()


class Downstream(asyncio.Protocol):
    __slots__ = ("relay", "transport", "parser", "url", "headers", "close", "peer")

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[bytes] = []
        self.close = False
        self.peer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.peer = transport.get_extra_info("peername")[0].encode()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.close = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"connection":
            self.close = value.lower() == b"close"
        else:
            self.headers.append(name + b": " + value + b"\r\n")

    def on_message_complete(self) -> None:
        head = (
            self.parser.get_method()
            + b" "
            + self.url
            + b" HTTP/1.1\r\n"
            + b"".join(self.headers)
            + b"x-forwarded-for: "
            + self.peer
            + b"\r\n\r\n"
        )
        self.relay.send(self, head)

    def response_done(self) -> None:
        if self.close and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class Relay:
    def __init__(self, loop: asyncio.AbstractEventLoop, ports: list[int]) -> None:
        self.loop = loop
        self.ports = ports
        self.next = 0
        self.idle: dict[int, list[UpstreamConn]] = {p: [] for p in ports}

    def send(self, client: Downstream, head: bytes) -> None:
        port = self.ports[self.next]
        self.next = (self.next + 1) % len(self.ports)
        idle = self.idle[port]
        if idle:
            up = idle.pop()
            up.client = client
            assert up.transport is not None
            up.transport.write(head)
            return
        self.loop.create_task(self._connect_and_send(port, client, head))

    async def _connect_and_send(self, port: int, client: Downstream, head: bytes) -> None:
        try:
            transport, up = await self.loop.create_connection(
                lambda: UpstreamConn(self, port), "127.0.0.1", port
            )
        except OSError:
            if client.transport is not None:
                client.transport.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            return
        up.client = client
        transport.write(head)


async def main(listen_port: int, ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    relay = Relay(loop, ports)
    server = await loop.create_server(
        lambda: Downstream(relay), "127.0.0.1", listen_port, backlog=4096
    )
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    await stop
    server.close()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), [int(p) for p in sys.argv[2:]]))
