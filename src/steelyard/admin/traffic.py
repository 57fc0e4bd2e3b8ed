"""The metrics' hot-path side: what every finished request or connection adds to the counters.

Split from metrics.py so that it can be compiled with the data path (setup.py): the engine's
recorders run once per request, the prometheus side (metrics.py) only at scrape time. See
metrics.py for how the two fit together.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Final

from steelyard.core.events import Event
from steelyard.core.records import RequestRecord

# steelyard_request_duration_seconds buckets: proxy latencies, 0.5 ms ... 10 s
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_BUCKET_LABELS: Final[tuple[str, ...]] = tuple(repr(b) for b in DURATION_BUCKETS)  # le="0.0005"...

# status -> code label; index = status // 100
_CODE_CLASS: Final[tuple[str, ...]] = ("", "1xx", "2xx", "3xx", "4xx", "5xx")

WINDOW_SECONDS: Final = 60

# rolling-window latency buckets: 0.1 ms * 1.2^k up to ~60 s (upper bounds; one overflow slot)
LATENCY_BOUNDS: Final[tuple[float, ...]] = tuple(0.0001 * 1.2**k for k in range(74))


def code_class(status: int | None) -> str:
    """1xx..5xx for an HTTP status; "" for L4 records (no status) and out-of-range values."""
    if status is None or not 100 <= status < 600:
        return ""
    return _CODE_CLASS[status // 100]


class DurationHistogram:
    """Bucket counters for one (listener, backend): counts[i] = observations <= bucket i
    (not cumulative; the collector accumulates). The last slot is +Inf."""

    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(DURATION_BUCKETS, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for label, n in zip(_BUCKET_LABELS, self.counts, strict=False):
            running += n
            out.append((label, running))
        out.append(("+Inf", self.count))
        return out

    def __repr__(self) -> str:
        return f"DurationHistogram(count={self.count}, sum={self.total:.6f})"


class RollingWindow:
    """Per-second request/error counts and latency histograms for the last `span` seconds.

    Slot i holds second s where s % span == i; a slot holding an older second is reset when a
    newer second arrives. Samples for seconds already rotated out are dropped.
    """

    __slots__ = ("span", "stamps", "counts", "errors", "hists")

    def __init__(self, span: int = WINDOW_SECONDS) -> None:
        self.span = span
        self.stamps = [-1] * span
        self.counts = [0] * span
        self.errors = [0] * span
        # sparse: bucket -> count (a second's latencies fall in few buckets; cheap to merge)
        self.hists: list[dict[int, int]] = [{} for _ in range(span)]

    def observe(self, second: int, duration: float, error: bool) -> None:
        self.observe_bucket(second, bisect_left(LATENCY_BOUNDS, duration), error)

    def observe_bucket(self, second: int, bucket: int, error: bool) -> None:
        """`bucket` = bisect_left(LATENCY_BOUNDS, duration), computed once by the caller."""
        i = second % self.span
        stamp = self.stamps[i]
        if stamp != second:
            if stamp > second:
                return  # older than the window
            self.stamps[i] = second
            self.counts[i] = 0
            self.errors[i] = 0
            self.hists[i].clear()
        self.counts[i] += 1
        if error:
            self.errors[i] += 1
        hist = self.hists[i]
        hist[bucket] = hist.get(bucket, 0) + 1

    def series(self, now_second: int, length: int | None = None) -> list[int]:
        """Requests in each of the last `length` complete seconds, oldest first."""
        length = self.span if length is None else min(length, self.span)
        out: list[int] = []
        for second in range(now_second - length, now_second):
            i = second % self.span
            out.append(self.counts[i] if self.stamps[i] == second else 0)
        return out

    def summary(self, now_second: int, elapsed: float | None = None) -> dict[str, Any]:
        """Totals over the last `span` complete seconds (or `elapsed`, if shorter: a window
        younger than a minute divides by its age)."""
        requests = 0
        errors = 0
        merged = [0] * (len(LATENCY_BOUNDS) + 1)
        for second in range(now_second - self.span, now_second):
            i = second % self.span
            if self.stamps[i] != second:
                continue
            requests += self.counts[i]
            errors += self.errors[i]
            for k, n in self.hists[i].items():
                merged[k] += n
        seconds = float(self.span)
        if elapsed is not None:
            seconds = max(1.0, min(seconds, elapsed))
        return {
            "requests": requests,
            "errors": errors,
            "rps": round(requests / seconds, 3),
            "error_rate": round(errors / requests, 4) if requests else 0.0,
            "p50_ms": _percentile_ms(merged, requests, 0.50),
            "p99_ms": _percentile_ms(merged, requests, 0.99),
        }

    def __repr__(self) -> str:
        live = sum(1 for s in self.stamps if s >= 0)
        return f"RollingWindow(span={self.span}, slots_used={live})"


def _percentile_ms(hist: list[int], total: int, q: float) -> float | None:
    if total <= 0:
        return None
    rank = q * total
    running = 0
    for k, n in enumerate(hist):
        if not n:
            continue
        if running + n >= rank:
            upper = LATENCY_BOUNDS[k] if k < len(LATENCY_BOUNDS) else LATENCY_BOUNDS[-1]
            lower = LATENCY_BOUNDS[k - 1] if 0 < k <= len(LATENCY_BOUNDS) else 0.0
            if k >= len(LATENCY_BOUNDS):
                lower = upper
            fraction = (rank - running) / n
            return round((lower + (upper - lower) * fraction) * 1000, 3)
        running += n
    return round(LATENCY_BOUNDS[-1] * 1000, 3)


class _Series:
    """Everything one (listener, backend, server) updates, resolved once per key."""

    __slots__ = ("codes", "hist", "io", "retries", "backend_window", "server_window")

    def __init__(
        self,
        hist: DurationHistogram,
        io: list[int],
        retries: list[int] | None,
        backend_window: RollingWindow | None,
        server_window: RollingWindow | None,
    ) -> None:
        self.codes = [0] * 6  # index status // 100; 0 = no status (L4) or out of range
        self.hist = hist
        self.io = io  # [bytes_in, bytes_out] of the listener, shared
        self.retries = retries  # [n] of the backend, shared
        self.backend_window = backend_window
        self.server_window = server_window


class TrafficRecorder:
    """The hot-path side: called with every RequestRecord (append it to engine.recorders).

    One dict lookup per record finds the record's `_Series`; the rest is list increments.
    """

    __slots__ = ("series", "durations", "io", "retries", "windows", "backend_windows", "started")

    def __init__(self, started: float = 0.0) -> None:
        self.series: dict[tuple[str, str | None, str | None], _Series] = {}
        self.durations: dict[tuple[str, str], DurationHistogram] = {}
        self.io: dict[str, list[int]] = {}
        self.retries: dict[str, list[int]] = {}
        self.windows: dict[tuple[str, str], RollingWindow] = {}
        self.backend_windows: dict[str, RollingWindow] = {}
        self.started = started  # wall clock; the dashboard's rates divide by min(age, 60 s)

    def __call__(self, rec: RequestRecord) -> None:
        series = self.series.get((rec.listener, rec.backend, rec.server))
        if series is None:
            series = self._new_series(rec.listener, rec.backend, rec.server)
        status = rec.status
        if status is not None and 100 <= status < 600:
            series.codes[status // 100] += 1
        else:
            series.codes[0] += 1
        duration = rec.duration
        hist = series.hist
        hist.counts[bisect_left(DURATION_BUCKETS, duration)] += 1
        hist.total += duration
        hist.count += 1
        io = series.io
        io[0] += rec.bytes_in
        io[1] += rec.bytes_out
        if rec.retries and series.retries is not None:
            series.retries[0] += rec.retries
        window = series.backend_window
        if window is not None:
            second = int(rec.time + duration)
            bucket = bisect_left(LATENCY_BOUNDS, duration)
            error = status is not None and status >= 500
            window.observe_bucket(second, bucket, error)
            window = series.server_window
            if window is not None:
                window.observe_bucket(second, bucket, error)

    def _new_series(self, listener: str, backend: str | None, server: str | None) -> _Series:
        hkey = (listener, backend or "")
        hist = self.durations.get(hkey)
        if hist is None:
            hist = self.durations[hkey] = DurationHistogram()
        io = self.io.setdefault(listener, [0, 0])
        retries = backend_window = server_window = None
        if backend:
            retries = self.retries.setdefault(backend, [0])
            backend_window = self.backend_windows.get(backend)
            if backend_window is None:
                backend_window = self.backend_windows[backend] = RollingWindow()
            if server:
                server_window = self.windows.get((backend, server))
                if server_window is None:
                    server_window = self.windows[(backend, server)] = RollingWindow()
        series = _Series(hist, io, retries, backend_window, server_window)
        self.series[(listener, backend, server)] = series
        return series

    def requests(self) -> dict[tuple[str, str, str, str], int]:
        """(listener, backend, server, code) -> count, for the label sets seen so far."""
        out: dict[tuple[str, str, str, str], int] = {}
        for (listener, backend, server), series in self.series.items():
            for index, n in enumerate(series.codes):
                if n:
                    key = (listener, backend or "", server or "", _CODE_CLASS[index])
                    out[key] = out.get(key, 0) + n
        return out

    def __repr__(self) -> str:
        total = sum(sum(s.codes) for s in self.series.values())
        return f"TrafficRecorder(requests={total}, series={len(self.series)})"


class EjectionCounter:
    """Counts `ejection` events from the engine's event bus per (backend, server)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def __call__(self, event: Event) -> None:
        if event.type == "ejection" and event.backend and event.server:
            key = (event.backend, event.server)
            self.counts[key] = self.counts.get(key, 0) + 1

    def __repr__(self) -> str:
        return f"EjectionCounter({sum(self.counts.values())} ejections)"
