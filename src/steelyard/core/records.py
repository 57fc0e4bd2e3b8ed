"""What the data path reports when a request (HTTP) or connection (TCP/UDP) ends.

One record per request/connection, handed to the engine, which updates the metrics and writes
the access log line (SPEC §6). A plain slotted object: cheap to fill on the hot path.
"""

from __future__ import annotations


class RequestRecord:
    __slots__ = (
        "time",
        "listener",
        "client",
        "method",
        "path",
        "status",
        "backend",
        "server",
        "bytes_in",
        "bytes_out",
        "duration",
        "retries",
        "request_id",
    )

    def __init__(self, listener: str, client: str, time: float) -> None:
        self.time = time  # wall clock (time.time()) at the start
        self.listener = listener
        self.client = client  # "ip:port"
        self.method: str | None = None  # None on L4 lines
        self.path: str | None = None  # with the query
        self.status: int | None = None
        self.backend: str | None = None
        self.server: str | None = None  # server name
        self.bytes_in = 0  # from downstream
        self.bytes_out = 0  # to downstream
        self.duration = 0.0  # seconds
        self.retries = 0
        self.request_id: str | None = None

    def __repr__(self) -> str:
        return (
            f"RequestRecord({self.listener} {self.method} {self.path} -> {self.status} "
            f"{self.backend}/{self.server} {self.duration * 1000:.1f}ms)"
        )
