"""Access logs (SPEC §6): one line per request (HTTP) or connection (TCP/UDP) on the
`steelyard.access` logger.

How this works: the engine hands every RequestRecord to `AccessLog.__call__` on the event
loop. That formats the line (one json.dumps of a small dict, or an f-string) and puts a log
record on an in-memory queue (QueueHandler); a QueueListener thread does the writing, so a slow
disk or a full pipe never blocks the loop. `close()` drains the queue before returning.

Because the line goes through the `steelyard.access` logger, an embedding application can add
its own handlers to it. Destinations: stdout (default), a file (`log.access: PATH`, reopened
when logrotate moves it: WatchedFileHandler), or nothing (`log.access: off`).

JSON keys: time (RFC 3339, UTC, ms, the request's start), listener, client (ip:port), method,
path (with the query), status, backend, server (name), bytes_in, bytes_out, duration_ms,
retries, request_id. L4 lines omit method, path, status and request_id.
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

OFF = "off"


_second_cache: list[Any] = [None, ""]  # [whole second, "YYYY-MM-DDTHH:MM:SS"]: one per loop


def _rfc3339(ts: float) -> str:
    """UTC with milliseconds and a Z; the date part is formatted once per second."""
    second = int(ts)
    if _second_cache[0] != second:
        _second_cache[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache[0] = second
    millis = min(int((ts - second) * 1000), 999)
    return f"{_second_cache[1]}.{millis:03d}Z"


def record_fields(rec: RequestRecord) -> dict[str, Any]:
    http = rec.method is not None
    fields: dict[str, Any] = {
        "time": _rfc3339(rec.time),
        "listener": rec.listener,
        "client": rec.client,
    }
    if http:
        fields["method"] = rec.method
        fields["path"] = rec.path
        fields["status"] = rec.status
    fields["backend"] = rec.backend
    fields["server"] = rec.server
    fields["bytes_in"] = rec.bytes_in
    fields["bytes_out"] = rec.bytes_out
    fields["duration_ms"] = round(rec.duration * 1000, 3)
    fields["retries"] = rec.retries
    if http:
        fields["request_id"] = rec.request_id
    return fields


def format_json(rec: RequestRecord) -> str:
    return json.dumps(record_fields(rec), separators=(",", ":"))


_TEXT_ESCAPES = {i: f"\\x{i:02x}" for i in range(0x20)} | {0x7F: "\\x7f", 0x22: '\\"', 0x5C: "\\\\"}


def _text(value: Any) -> str:
    """A field for the text format: '-' for None; quotes, backslashes and control characters
    escaped so that a request cannot forge or break a log line."""
    if value is None:
        return "-"
    return str(value).translate(_TEXT_ESCAPES)


def format_text(rec: RequestRecord) -> str:
    f = record_fields(rec)
    upstream = f"{_text(f['backend'])}/{_text(f['server'])}"
    common = f"in={f['bytes_in']} out={f['bytes_out']} {f['duration_ms']}ms retries={f['retries']}"
    if rec.method is not None:
        return (
            f"{f['time']} {_text(f['listener'])} {_text(f['client'])} "
            f'"{_text(f["method"])} {_text(f["path"])}" {_text(f["status"])} '
            f"{upstream} {common} id={_text(f['request_id'])}"
        )
    return f"{f['time']} {_text(f['listener'])} {_text(f['client'])} {upstream} {common}"


class AccessLog:
    """Formats records on the loop and hands them to a background writer thread.

    `path`: None/"-"/"stdout" = stdout, "off" = no access log, else a file (appended to).
    """

    def __init__(self, path: str | None = None, fmt: str = "json") -> None:
        self.path = path
        self.format = format_text if fmt == "text" else format_json
        self.enabled = path != OFF
        self.lines = 0
        self.handler: logging.Handler | None = None
        self.listener: logging.handlers.QueueListener | None = None
        self._target: logging.Handler | None = None
        if not self.enabled:
            return
        target: logging.Handler
        if path in (None, "", "-", "stdout"):
            target = logging.StreamHandler(sys.stdout)
        else:
            target = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
        target.setFormatter(logging.Formatter("%(message)s"))
        self._target = target
        self.queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self.listener = logging.handlers.QueueListener(self.queue, target)
        self.handler = logging.handlers.QueueHandler(self.queue)
        access_log.addHandler(self.handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False
        self.listener.start()

    def __call__(self, rec: RequestRecord) -> None:
        if self.enabled and access_log.isEnabledFor(logging.INFO):
            self.lines += 1
            access_log.info(self.format(rec))

    def close(self) -> None:
        """Stop taking lines, write what is queued, close the file."""
        if not self.enabled:
            return
        self.enabled = False
        if self.handler is not None:
            access_log.removeHandler(self.handler)
        if self.listener is not None:
            self.listener.stop()
        if self._target is not None:
            self._target.flush()
            self._target.close()  # a StreamHandler leaves stdout open

    def __repr__(self) -> str:
        where = "off" if self.path == OFF else (self.path or "stdout")
        return f"AccessLog({where}, lines={self.lines}, enabled={self.enabled})"
