"""Metrics (SPEC §5) and the dashboard's rolling statistics.

How this works: the data path hands every finished request/connection to the engine's
recorders (`engine.recorders`), among them `TrafficRecorder(rec)` (admin/traffic.py, compiled
with the data path). The recorder does nothing but plain dict and list increments keyed by
tuples of config names (listener, backend, server, status class) — no locks, no prometheus
objects, no allocation beyond the first sight of a key. Every request runs on the event loop
thread, and so does the scrape (the admin server is on the same loop), so nothing is shared
across threads.

At scrape time `SteelyardCollector.collect()` turns those counters, the live `ServerState`
objects of every backend, the listeners' connection counts, `engine.check_counts` (health
checks, counted by the health-check supervisor) and the ejection counter (fed by the event
bus) into prometheus metric families. Label values are config names and status classes only —
never a client address or a URL path — so the label sets stay bounded.

For the dashboard each (backend, server) and each backend also gets a `RollingWindow`: 60
one-second slots in a ring, each holding a request count, an error count (5xx) and a coarse
log-spaced latency histogram. Requests per second, error rate and p50/p99 over the last minute
are computed from the slots when asked (GET /api/v1/stats), never on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from steelyard.admin.traffic import WINDOW_SECONDS, EjectionCounter, TrafficRecorder
from steelyard.core.balancing.base import Health


class SteelyardCollector(Collector):
    """Builds the SPEC §5 metric families from live state at scrape time."""

    def __init__(self, engine: Any, recorder: TrafficRecorder, ejections: EjectionCounter) -> None:
        self.engine = engine
        self.recorder = recorder
        self.ejections = ejections

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        rec = self.recorder

        requests = CounterMetricFamily(
            "steelyard_requests",
            "Requests (HTTP) or connections (TCP/UDP, code empty) by status class.",
            labels=["listener", "backend", "server", "code"],
        )
        for (listener, backend, server, code), n in sorted(rec.requests().items()):
            requests.add_metric([listener, backend, server, code], n)
        yield requests

        durations = HistogramMetricFamily(
            "steelyard_request_duration_seconds",
            "Request (HTTP) or connection (TCP/UDP) duration.",
            labels=["listener", "backend"],
        )
        for (listener, backend), hist in sorted(rec.durations.items()):
            durations.add_metric([listener, backend], hist.cumulative(), hist.total)
        yield durations

        connections = GaugeMetricFamily(
            "steelyard_connections_active",
            "Open downstream connections (UDP: sessions).",
            labels=["listener"],
        )
        for name, handle in sorted(engine.listeners.items()):
            value = getattr(handle.runtime, "connections_active", 0)
            connections.add_metric([name], float(value if isinstance(value, int | float) else 0))
        yield connections

        active = GaugeMetricFamily(
            "steelyard_server_active_requests",
            "In-flight requests (HTTP) or open connections (TCP/UDP) per server.",
            labels=["backend", "server"],
        )
        up = GaugeMetricFamily(
            "steelyard_server_up",
            "1 when the server is healthy and not ejected (admin state aside), else 0.",
            labels=["backend", "server"],
        )
        weight = GaugeMetricFamily(
            "steelyard_server_weight",
            "The server's current weight (0-1000).",
            labels=["backend", "server"],
        )
        ejections = CounterMetricFamily(
            "steelyard_ejections",
            "Outlier-detection ejections.",
            labels=["backend", "server"],
        )
        retries = CounterMetricFamily(
            "steelyard_retries", "Retries on another server.", labels=["backend"]
        )
        seen_ejections: set[tuple[str, str]] = set()
        for bname, backend in sorted(engine.backends.items()):
            now = backend.clock()
            for sname, state in sorted(backend.servers.items()):
                labels = [bname, sname]
                active.add_metric(labels, float(state.active))
                is_up = state.health is Health.HEALTHY and not state.ejected(now)
                up.add_metric(labels, 1.0 if is_up else 0.0)
                weight.add_metric(labels, float(state.weight))
                ejections.add_metric(labels, self.ejections.counts.get((bname, sname), 0))
                seen_ejections.add((bname, sname))
            retries.add_metric([bname], rec.retries.get(bname, [0])[0])
        for key, n in sorted(self.ejections.counts.items()):
            if key not in seen_ejections:  # a server since removed: keep its counter
                ejections.add_metric(list(key), n)
        for bname, (n,) in sorted(rec.retries.items()):
            if bname not in engine.backends:
                retries.add_metric([bname], n)
        yield active
        yield up
        yield weight

        checks = CounterMetricFamily(
            "steelyard_health_checks",
            "Active health checks by result.",
            labels=["backend", "server", "result"],
        )
        counts = getattr(engine, "check_counts", None) or {}
        for (bname, sname, result), n in sorted(counts.items()):
            checks.add_metric([bname, sname, str(result)], n)
        yield checks
        yield ejections
        yield retries

        traffic = CounterMetricFamily(
            "steelyard_bytes",
            "Bytes from (in) and to (out) downstream clients.",
            labels=["listener", "direction"],
        )
        for name in sorted(set(engine.listeners) | set(rec.io)):
            bytes_in, bytes_out = rec.io.get(name, (0, 0))
            traffic.add_metric([name, "in"], bytes_in)
            traffic.add_metric([name, "out"], bytes_out)
        yield traffic

        reloads = CounterMetricFamily(
            "steelyard_reloads", "Successful configuration reloads.", labels=[]
        )
        reloads.add_metric([], getattr(engine, "reloads", 0))
        yield reloads

    def __repr__(self) -> str:
        return f"SteelyardCollector({self.recorder!r})"


def stats_snapshot(engine: Any, recorder: TrafficRecorder, now: float) -> dict[str, Any]:
    """The dashboard's per-backend and per-server rates (GET /api/v1/stats)."""
    second = int(now)
    elapsed = now - recorder.started if recorder.started else None
    backends = []
    for bname, backend in engine.backends.items():
        window = recorder.backend_windows.get(bname)
        summary = window.summary(second, elapsed) if window else _empty_summary()
        servers = []
        for sname in backend.servers:
            sw = recorder.windows.get((bname, sname))
            entry: dict[str, Any] = {"name": sname}
            entry.update(sw.summary(second, elapsed) if sw else _empty_summary())
            entry["series"] = sw.series(second) if sw else [0] * WINDOW_SECONDS
            servers.append(entry)
        backends.append({"name": bname, **summary, "servers": servers})
    return {"time": second, "window_s": WINDOW_SECONDS, "backends": backends}


def _empty_summary() -> dict[str, Any]:
    return {
        "requests": 0,
        "errors": 0,
        "rps": 0.0,
        "error_rate": 0.0,
        "p50_ms": None,
        "p99_ms": None,
    }
