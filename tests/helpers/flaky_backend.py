"""A test HTTP backend (tests.helpers.http_backends.HttpBackend) whose health endpoint can be
made to fail in every way a real one does, and which can be killed and brought back on the
same port.

    async with flaky_backend("s1") as b:
        b.health = "503" | "hang" | "reset" | "close" | "garbage" | "body" | "ok"
        await b.kill()        # listening socket closed, open connections reset
        await b.revive()      # listening again on the same port
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from tests.helpers.http_backends import HttpBackend, RequestSeen, _reset


class FlakyBackend(HttpBackend):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.health = "ok"
        self.health_body = b"all good"
        self.health_checks = 0
        self.alive = False
        self.first_bytes: list[bytes] = []  # what each connection sent first (tcp checks)

    async def start(self, host: str = "127.0.0.1") -> None:
        await super().start(host)
        self.alive = True

    async def kill(self) -> None:
        """Stop listening and reset every open connection (a crashed process)."""
        self.alive = False
        if self.server is not None:
            self.server.close()
            for w in list(self._writers):
                _reset(w)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None

    async def revive(self) -> None:
        """Listen again on the same port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.setblocking(False)
        self.server = await asyncio.start_server(self._serve, sock=sock)
        self.alive = True

    async def _respond(
        self,
        conn: object,
        writer: asyncio.StreamWriter,
        req: RequestSeen,
        reader: asyncio.StreamReader,
    ) -> bool:
        if req.target.split("?", 1)[0] != "/health":
            return await super()._respond(conn, writer, req, reader)  # type: ignore[arg-type]
        self.health_checks += 1
        mode = self.health
        if mode == "hang":
            await asyncio.sleep(3600)
            return False
        if mode == "reset":
            _reset(writer)
            return False
        if mode == "close":
            writer.close()
            return False
        if mode == "garbage":
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            await writer.drain()
            writer.close()
            return False
        status = 503 if mode == "503" else 200
        body = b"something else" if mode == "body" else self.health_body
        writer.write(
            b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\nx-server: %s\r\n\r\n"
            % (status, len(body), self.name.encode())
            + body
        )
        await writer.drain()
        writer.close()
        return False


@contextlib.asynccontextmanager
async def flaky_backend(name: str = "s1") -> AsyncIterator[FlakyBackend]:
    backend = FlakyBackend(name)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()


class RawTcpServer:
    """Accepts connections and records the first bytes each one sends (tcp checks)."""

    def __init__(self) -> None:
        self.first: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            data = await asyncio.wait_for(reader.read(256), 1.0)
            self.first.append(data)
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
