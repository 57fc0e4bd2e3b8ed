"""Access logs (SPEC §6): one line per request (HTTP) or connection (TCP/UDP) on the
`steelyard.access` logger.

How this works. The engine hands every RequestRecord to `AccessLog.__call__` on the event loop,
which formats the line (one f-string; JSON strings escaped by the json module's C encoder) and
appends it to an in-memory list. A writer thread takes whatever has gathered, joins it and
writes it with one write() and one flush() per batch, so a slow disk or a full pipe never
blocks the loop, and a busy proxy pays neither a `logging.LogRecord` nor a thread hand-off
per line. `close()` writes out what is buffered before returning.

The lines are on the `steelyard.access` logger. Our own handler is attached to it; as long as
it is the logger's only handler (no filters, no propagation, INFO enabled), lines skip the
logging machinery and go straight to the buffer: that is the fast path. Once an embedding
application adds a handler or a filter to the logger (or turns propagation on), every line goes
through `Logger.info` again, so those handlers see it; our handler then puts it in the same
buffer. Raising the logger's level above INFO (or `logging.disable`) silences the log.

Destinations: stdout (default) or a file (`log.access: PATH`, appended to, reopened when
logrotate moves it: the writer compares the path's inode with the open file's once per batch).

The writer sleeps on an Event that the loop sets when the buffer goes from empty to non-empty,
then waits FLUSH_INTERVAL more so that a busy proxy's lines go out in batches. List append and
slice deletion are atomic under the GIL and only the writer removes lines (from the front), so
the buffer needs no lock; a line appended while a batch is written is picked up by the next.

JSON keys: time (RFC 3339, UTC, ms, the request's start), listener, client (ip:port), method,
path (with the query), status, backend, server (name), bytes_in, bytes_out, duration_ms,
retries, request_id. L4 lines omit method, path, status and request_id.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import Any, Final, TextIO

from steelyard.core.records import RequestRecord

access_log = logging.getLogger("steelyard.access")

OFF: Final = "off"
FLUSH_INTERVAL: Final = 0.05  # seconds the writer waits after the first line of a batch
_INFO: Final = logging.INFO


_second_cache: list[Any] = [None, ""]  # [whole second, "YYYY-MM-DDTHH:MM:SS"]: one per loop


_MILLIS: Final = [f".{i:03d}Z" for i in range(1000)]


def _rfc3339(ts: float) -> str:
    """UTC with milliseconds and a Z; the date part is formatted once per second."""
    second, millis = divmod(int(ts * 1000), 1000)
    if _second_cache[0] != second:
        _second_cache[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache[0] = second
    date: str = _second_cache[1]
    return date + _MILLIS[millis]


def record_fields(rec: RequestRecord) -> dict[str, Any]:
    """The JSON object of a line, as a dict (format_json is the fast equivalent)."""
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


def _dumps(rec: RequestRecord) -> str:
    return json.dumps(record_fields(rec), separators=(",", ":"))


def _millis(duration: float) -> str:
    """`repr(round(duration * 1000, 3))`, twice as fast: "%.3f" rounds the same way (correctly,
    from the exact binary value), and below 1e12 the shortest repr of the rounded float is that
    decimal without its trailing zeros (at most 12 + 3 = 15 significant digits round-trip
    exactly; from 1e12 on, "%.3f" can print 16 or 17 that repr would not). `%`, not an f-string
    with ":.3f": compiled, the f-string is a str.format call (~650 instructions more per line).
    Byte-identical: hypothesis-tested against round() in tests/unit/test_access_log_fast.py."""
    ms = duration * 1000
    if -1e12 < ms < 1e12:  # also False for inf and nan; 1e12 ms is 31 years
        text = "%.3f" % ms  # noqa: UP031 - see the docstring
        if text[-1] == "0":
            text = text.rstrip("0")
            if text[-1] == ".":
                text += "0"
        return text
    return repr(round(ms, 3))


class _JsonStrings(dict[Any, str]):
    """str -> its JSON form (None -> null), for the values that repeat from line to line:
    listener, client, method, backend, server. Bounded: cleared when it outgrows _JSON_MAX
    (clients are many; each connection's lines still share the entry)."""

    def __missing__(self, value: Any) -> str:
        if len(self) >= _JSON_MAX:
            self.clear()
            self[None] = "null"
        text = self[value] = encode_basestring_ascii(value)
        return text


_JSON_MAX: Final = 4096
_JSON: Final = _JsonStrings({None: "null"})


def format_json(rec: RequestRecord) -> str:
    """Exactly `json.dumps(record_fields(rec), separators=(",", ":"))`, without the dict and
    the encoder object: one f-string, strings escaped by json's C function."""
    status = rec.status
    bytes_in = rec.bytes_in
    bytes_out = rec.bytes_out
    retries = rec.retries
    duration = rec.duration
    if not (
        type(bytes_in) is int
        and type(bytes_out) is int
        and type(retries) is int
        and (status is None or type(status) is int)
        and type(duration) is float
    ):
        return _dumps(rec)  # an int subclass (bool, IntEnum) renders differently: be exact
    enc = encode_basestring_ascii
    js = _JSON
    method = rec.method
    ts = rec.time
    t = int(ts * 1000)  # _rfc3339(ts), inline
    second = t // 1000
    if _second_cache[0] != second:
        _rfc3339(ts)  # a new second: format its date part
    when = _second_cache[1]
    millis = _MILLIS[t - second * 1000]
    ms = duration * 1000  # _millis(duration), inline
    if -1e12 < ms < 1e12:  # as in _millis: beyond, ".3f" can print digits repr would not
        dur = "%.3f" % ms  # noqa: UP031 - cheaper compiled (see _millis)
        if dur[-1] == "0":
            dur = dur.rstrip("0")
            if dur[-1] == ".":
                dur += "0"
    else:
        dur = repr(round(ms, 3))
    if method is None:
        return (
            f'{{"time":"{when}{millis}","listener":{js[rec.listener]},'
            f'"client":{js[rec.client]},"backend":{js[rec.backend]},"server":{js[rec.server]},'
            f'"bytes_in":{bytes_in},"bytes_out":{bytes_out},'
            f'"duration_ms":{dur},"retries":{retries}}}'
        )
    path = rec.path
    rid = rec.request_id
    return (
        f'{{"time":"{when}{millis}","listener":{js[rec.listener]},'
        f'"client":{js[rec.client]},'
        f'"method":{js[method]},"path":{"null" if path is None else enc(path)},'
        f'"status":{"null" if status is None else status},'
        f'"backend":{js[rec.backend]},"server":{js[rec.server]},'
        f'"bytes_in":{bytes_in},"bytes_out":{bytes_out},'
        f'"duration_ms":{dur},"retries":{retries},'
        f'"request_id":{"null" if rid is None else enc(rid)}}}'
    )


_TEXT_ESCAPES: Final = {i: f"\\x{i:02x}" for i in range(0x20)} | {
    0x7F: "\\x7f",
    0x22: '\\"',
    0x5C: "\\\\",
}


def _text(value: Any) -> str:
    """A field for the text format: '-' for None; quotes, backslashes and control characters
    escaped so that a request cannot forge or break a log line."""
    if value is None:
        return "-"
    return str(value).translate(_TEXT_ESCAPES)


def format_text(rec: RequestRecord) -> str:
    upstream = f"{_text(rec.backend)}/{_text(rec.server)}"
    common = (
        f"in={rec.bytes_in} out={rec.bytes_out} {round(rec.duration * 1000, 3)}ms "
        f"retries={rec.retries}"
    )
    when = _rfc3339(rec.time)
    if rec.method is not None:
        return (
            f"{when} {_text(rec.listener)} {_text(rec.client)} "
            f'"{_text(rec.method)} {_text(rec.path)}" {_text(rec.status)} '
            f"{upstream} {common} id={_text(rec.request_id)}"
        )
    return f"{when} {_text(rec.listener)} {_text(rec.client)} {upstream} {common}"


class _Destination:
    """Where the writer thread puts batches: stdout, or a file reopened when it was moved."""

    __slots__ = ("path", "stream", "_ident", "errors")

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.stream: TextIO = sys.stdout
        self._ident: tuple[int, int] | None = None
        self.errors = 0
        if path is not None:
            self._open()

    def _open(self) -> None:
        assert self.path is not None
        self.stream = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        st = os.fstat(self.stream.fileno())
        self._ident = (st.st_dev, st.st_ino)

    def _reopen_if_moved(self) -> None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
            moved = (st.st_dev, st.st_ino) != self._ident
        except FileNotFoundError:
            moved = True
        if moved:
            self.stream.close()
            self._open()

    def write(self, text: str) -> None:
        try:
            if self.path is not None:
                self._reopen_if_moved()
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError) as exc:  # a full disk, a closed stdout: keep the thread
            self.errors += 1
            if self.errors == 1:
                print(f"steelyard: cannot write the access log: {exc}", file=sys.stderr)

    def close(self) -> None:
        if self.path is not None:
            try:
                self.stream.close()
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"_Destination({self.path or 'stdout'}, errors={self.errors})"


class _BufferHandler(logging.Handler):
    """Our handler on `steelyard.access`: lines that came through the logger (slow path)."""

    def __init__(self, owner: AccessLog) -> None:
        super().__init__(logging.INFO)
        self.owner = owner

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.owner._push(record.getMessage())
        except Exception:  # logging's contract: a handler does not raise
            self.handleError(record)


class AccessLog:
    """Formats records on the loop; a writer thread writes them out in batches.

    `path`: None/"-"/"stdout" = stdout, "off" = no access log, else a file (appended to).
    """

    def __init__(self, path: str | None = None, fmt: str = "json") -> None:
        self.path = path
        self.format = format_text if fmt == "text" else format_json
        self.enabled = path != OFF
        self.lines = 0
        self.batches = 0
        self.handler: _BufferHandler | None = None
        self._buffer: list[str] = []
        self._wake = threading.Event()
        self._closing = False
        self._writer_thread: threading.Thread | None = None
        self._dest: _Destination | None = None
        self._solo: list[logging.Handler] = []
        if not self.enabled:
            return
        to_stdout = path in (None, "", "-", "stdout")
        self._dest = _Destination(None if to_stdout else path)
        self.handler = _BufferHandler(self)
        self._solo = [self.handler]
        access_log.addHandler(self.handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False
        self._writer_thread = threading.Thread(
            target=self._writer, name="steelyard-access-log", daemon=True
        )
        self._writer_thread.start()

    def __call__(self, rec: RequestRecord) -> None:
        if not self.enabled:
            return
        lg = access_log
        if lg.handlers == self._solo and not lg.filters and not lg.propagate:
            if lg.isEnabledFor(_INFO):  # the fast path: nobody else listens
                self.lines += 1
                buffer = self._buffer
                buffer.append(self.format(rec))
                if len(buffer) == 1:
                    self._wake.set()
        elif lg.isEnabledFor(_INFO):
            self.lines += 1
            lg.info(self.format(rec))

    def _push(self, line: str) -> None:
        buffer = self._buffer
        buffer.append(line)
        if len(buffer) == 1:
            self._wake.set()

    def _writer(self) -> None:
        buffer = self._buffer
        wake = self._wake
        dest = self._dest
        assert dest is not None
        while True:
            wake.wait()
            wake.clear()
            if not self._closing:
                wake.wait(FLUSH_INTERVAL)  # let a batch gather (close() cuts this short)
            n = len(buffer)
            if n:
                batch = buffer[:n]
                del buffer[:n]  # only this thread removes lines; the loop only appends
                batch.append("")
                dest.write("\n".join(batch))
                self.batches += 1
            if self._closing and not buffer:
                return
            if buffer:  # lines that came while writing, maybe without setting the event
                wake.set()

    def detach(self) -> None:
        """Take no more lines, now (a reload put another access log in its place); close()
        then writes out what is buffered."""
        self.enabled = False
        if self.handler is not None:
            access_log.removeHandler(self.handler)

    def close(self) -> None:
        """Stop taking lines, write what is buffered, close the file."""
        if self._dest is None or self._closing:  # off, or closed already
            return
        self.detach()
        self._closing = True
        self._wake.set()
        if self._writer_thread is not None:
            self._writer_thread.join()
            self._writer_thread = None
        if self._dest is not None:
            if self._buffer:  # pushed through the logger by another thread as we stopped
                self._dest.write("\n".join([*self._buffer, ""]))
                self._buffer.clear()
            self._dest.close()  # stdout stays open

    def __repr__(self) -> str:
        where = "off" if self.path == OFF else (self.path or "stdout")
        return (
            f"AccessLog({where}, lines={self.lines}, batches={self.batches}, "
            f"buffered={len(self._buffer)}, enabled={self.enabled})"
        )
