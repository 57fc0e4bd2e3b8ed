"""JSON shapes of the admin API (SPEC §4) and validation of request bodies.

Pure functions over the engine's runtime objects; the HTTP plumbing is in server.py.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from steelyard.core.balancing.base import Server, ServerState
from steelyard.core.events import Event


class ApiError(Exception):
    """An error answered as JSON {"error": message} with `status`."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def server_json(state: ServerState, now: float) -> dict[str, Any]:
    check = state.last_check
    return {
        "name": state.name,
        "address": state.address,
        "weight": state.weight,
        "state": state.state(now),
        "active": state.active,
        "requests_total": state.requests_total,
        "failures_total": state.failures_total,
        "latency_ewma_ms": round(state.ewma.value * 1000, 3),
        "last_check": (
            None
            if check is None
            else {
                "time": rfc3339(check.time),
                "result": "ok" if check.ok else "fail",
                "reason": check.reason,
            }
        ),
    }


def backend_json(name: str, backend: Any) -> dict[str, Any]:
    now = backend.clock()
    return {
        "name": name,
        "algorithm": backend.settings.algorithm,
        "panic": bool(getattr(backend, "panic", False)),
        "servers": [server_json(s, now) for s in backend.servers.values()],
    }


def event_json(event: Event) -> dict[str, Any]:
    return {
        "type": event.type,
        "time": rfc3339(event.time),
        "backend": event.backend,
        "server": event.server,
        "state": event.state,
        "reason": event.reason,
    }


def parse_weight(value: Any) -> int:
    """An integer 0..1000 (a float with no fraction is accepted; booleans are not)."""
    if isinstance(value, bool) or value is None:
        raise ApiError(400, "weight must be an integer from 0 to 1000")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ApiError(400, "weight must be an integer from 0 to 1000")
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= 1000:
        raise ApiError(400, "weight must be an integer from 0 to 1000")
    return value


def parse_address(address: Any) -> tuple[str, int]:
    """'host:port' or '[v6]:port' with a port 1..65535."""
    if not isinstance(address, str) or not address.strip():
        raise ApiError(400, "address must be a string 'host:port'")
    address = address.strip()
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
    else:
        host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or any(c.isspace() for c in host):
        raise ApiError(400, f"invalid address {address!r}: expected host:port")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ApiError(400, f"invalid port in {address!r}: 1 to 65535")
    return host, number


def parse_new_server(body: Any) -> Server:
    """Body of POST /api/v1/backends/{backend}/servers: {"address", "weight", "name"}."""
    if not isinstance(body, dict):
        raise ApiError(400, 'expected a JSON object {"address": "host:port", ...}')
    unknown = sorted(set(body) - {"address", "weight", "name"})
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")
    if "address" not in body:
        raise ApiError(400, "address is required")
    host, port = parse_address(body["address"])
    weight = parse_weight(body.get("weight", 1))
    name = body.get("name")
    if name is None:
        name = body["address"].strip()
    if not isinstance(name, str) or not name or "/" in name or any(c.isspace() for c in name):
        raise ApiError(400, "name must be a non-empty string without spaces or '/'")
    return Server(name=name, host=host, port=port, weight=weight)
