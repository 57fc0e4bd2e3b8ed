"""`steelyard demo`: three embedded HTTP servers, the balancer in front, and the dashboard.

The demo servers answer every request with their own name (an `x-server` header and the
body), so a few `curl`s show the balancing at work.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from typing import Any

import httptools

DEMO_CONFIG = """\
version: 1
shutdown_timeout: 5s
admin:
  bind: 127.0.0.1:{admin_port}
listeners:
  - name: web
    protocol: http
    bind: 127.0.0.1:{port}
    routes:
      - match: {{path_prefix: /}}
        backend: demo
backends:
  demo:
    algorithm: round_robin
    servers:
{servers}
    health_check:
      type: http
      path: /health
      interval: 2s
      timeout: 1s
"""


class DemoServerProtocol(asyncio.Protocol):
    """A tiny keep-alive HTTP/1.1 server that names itself in every answer."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        body = f"{self.name} answered {self.parser.get_method().decode()} {self.url.decode(errors='replace')}\n".encode()
        keep = self.parser.should_keep_alive()
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nx-server: "
            + self.name.encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + (b"\r\n\r\n" if keep else b"\r\nConnection: close\r\n\r\n")
        )
        self.transport.write(head + body)
        self.url = b""
        if not keep:
            self.transport.close()


async def start_demo_servers(names: list[str]) -> list[tuple[str, Any, int]]:
    loop = asyncio.get_running_loop()
    result = []
    for name in names:
        server = await loop.create_server(
            functools.partial(DemoServerProtocol, name), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        result.append((name, server, port))
    return result


def run_demo(port: int = 8080, admin_port: int = 9901) -> int:
    from steelyard.config import load_config_text
    from steelyard.runner import run_loop, serve, setup_logging

    setup_logging()

    async def main() -> int:
        servers = await start_demo_servers(["alpha", "beta", "gamma"])
        lines = "\n".join(f"      - {{address: 127.0.0.1:{p}, name: {n}}}" for n, _, p in servers)
        config = load_config_text(
            DEMO_CONFIG.format(port=port, admin_port=admin_port, servers=lines), "<demo>"
        )

        def started(engine: Any) -> None:
            web = engine.bound["web"]
            print("\nSteelyard demo is running.", flush=True)
            for n, _, p in servers:
                print(f"  demo server {n:6} http://127.0.0.1:{p}/")
            print(f"  balancer           http://{web[0]}:{web[1]}/")
            if engine.admin is not None:
                print(f"  dashboard          {engine.admin.url.rstrip('/')}/")
            print(f"\nTry:  for i in 1 2 3 4 5 6; do curl -s http://127.0.0.1:{web[1]}/; done")
            print("Stop with Ctrl-C.\n", flush=True)

        try:
            return await serve(config, None, on_started=started)
        finally:
            for _, server, _ in servers:
                server.close()

    try:
        return run_loop(main)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(run_demo())
