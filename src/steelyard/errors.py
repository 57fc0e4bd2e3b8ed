"""Errors of the data path: who failed, may we retry, what the client should see."""

from __future__ import annotations

from typing import Literal

Source = Literal["downstream", "upstream", "internal"]


class ProxyError(Exception):
    """A failure the proxy turns into a local response (or a cut-off connection).

    source: who failed (the client, the server, or us); retryable: whether the request may be
    retried on another server (only when nothing reached the upstream); status: the HTTP status the
    client should see if no response head was sent yet.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        source: Source = "internal",
        retryable: bool = False,
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.source: Source = source
        self.retryable = retryable

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.status}, {self.reason!r}, source={self.source}, "
            f"retryable={self.retryable})"
        )


class ProtocolError(ProxyError):
    """A message that breaks HTTP/1.1 framing or our limits; the connection must close."""

    def __init__(self, status: int, reason: str, *, source: Source = "downstream") -> None:
        super().__init__(status, reason, source=source, retryable=False)
