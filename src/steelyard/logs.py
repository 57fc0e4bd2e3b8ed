"""Access logs (SPEC §6): one line per request/connection on the `steelyard.access` logger.

Lines are formatted on the event loop (cheap: one json.dumps of a small dict) and written by
a QueueListener thread, so a slow disk or pipe never blocks the loop.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
from datetime import UTC, datetime
from typing import Any

from steelyard.core.records import RequestRecord

access_log = logging.getLogger("steelyard.access")


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_fields(rec: RequestRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "time": _rfc3339(rec.time),
        "listener": rec.listener,
        "client": rec.client,
    }
    if rec.method is not None:
        fields["method"] = rec.method
        fields["path"] = rec.path
        fields["status"] = rec.status
    fields["backend"] = rec.backend
    fields["server"] = rec.server
    fields["bytes_in"] = rec.bytes_in
    fields["bytes_out"] = rec.bytes_out
    fields["duration_ms"] = round(rec.duration * 1000, 3)
    fields["retries"] = rec.retries
    if rec.method is not None:
        fields["request_id"] = rec.request_id
    return fields


def format_json(rec: RequestRecord) -> str:
    return json.dumps(record_fields(rec), separators=(",", ":"))


def format_text(rec: RequestRecord) -> str:
    f = record_fields(rec)
    if rec.method is not None:
        return (
            f'{f["time"]} {f["listener"]} {f["client"]} "{f["method"]} {f["path"]}" {f["status"]} '
            f"{f['backend']}/{f['server']} in={f['bytes_in']} out={f['bytes_out']} "
            f"{f['duration_ms']}ms retries={f['retries']} id={f['request_id']}"
        )
    return (
        f"{f['time']} {f['listener']} {f['client']} {f['backend']}/{f['server']} "
        f"in={f['bytes_in']} out={f['bytes_out']} {f['duration_ms']}ms retries={f['retries']}"
    )


class AccessLog:
    """Formats records and hands them to a background writer thread."""

    def __init__(self, path: str | None = None, fmt: str = "json") -> None:
        self.format = format_text if fmt == "text" else format_json
        handler: logging.Handler
        if path:
            handler = logging.FileHandler(path)
        else:
            handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self.queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self.listener = logging.handlers.QueueListener(self.queue, handler)
        self.handler = logging.handlers.QueueHandler(self.queue)
        access_log.addHandler(self.handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False
        self.listener.start()

    def __call__(self, rec: RequestRecord) -> None:
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(self.format(rec))

    def close(self) -> None:
        access_log.removeHandler(self.handler)
        self.listener.stop()
