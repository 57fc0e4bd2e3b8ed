"""Prometheus metrics (SPEC §5) scraped from /metrics over a real socket.

The data path reports to engine.record(); these tests feed it known records and compare the
scraped counters with what was sent (the end-to-end traffic test is in test_metrics_traffic.py).
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from test_admin_support import admin_url, basic_config, record, running

from steelyard.admin.traffic import DURATION_BUCKETS, RollingWindow, code_class
from steelyard.core.balancing.base import PickContext
from steelyard.core.load import Outcome

SPEC_METRICS = {
    "steelyard_requests": ("counter", {"listener", "backend", "server", "code"}),
    "steelyard_request_duration_seconds": ("histogram", {"listener", "backend"}),
    "steelyard_connections_active": ("gauge", {"listener"}),
    "steelyard_server_active_requests": ("gauge", {"backend", "server"}),
    "steelyard_server_up": ("gauge", {"backend", "server"}),
    "steelyard_health_checks": ("counter", {"backend", "server", "result"}),
    "steelyard_ejections": ("counter", {"backend", "server"}),
    "steelyard_retries": ("counter", {"backend"}),
    "steelyard_bytes": ("counter", {"listener", "direction"}),
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient, **kw: object) -> tuple[str, Samples, dict]:
    r = await client.get("/metrics", **kw)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    families = {}
    for family in text_string_to_metric_families(r.text):
        families[family.name] = family
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return r.text, samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_every_spec_metric_has_its_type_and_labels() -> None:
    async with running(basic_config()) as engine:
        engine.record(record())
        engine.check_counts[("api", "a", "ok")] = 1
        async with httpx.AsyncClient(base_url=admin_url(engine)) as client:
            text, samples, families = await scrape(client)
    for name, (kind, labels) in SPEC_METRICS.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
    # exposition names as a user types them
    for line in (
        "# TYPE steelyard_requests_total counter",
        "# TYPE steelyard_request_duration_seconds histogram",
        "# TYPE steelyard_connections_active gauge",
        "# TYPE steelyard_health_checks_total counter",
        "# TYPE steelyard_ejections_total counter",
        "# TYPE steelyard_retries_total counter",
        "# TYPE steelyard_bytes_total counter",
    ):
        assert line in text


async def test_counters_equal_the_records_sent() -> None:
    async with running(basic_config()) as engine:
        sent = [
            record(server="a", status=200, duration=0.0004, bytes_in=10, bytes_out=100),
            record(server="a", status=204, duration=0.002, bytes_in=20, bytes_out=200),
            record(server="b", status=503, duration=0.3, bytes_in=30, bytes_out=300, retries=2),
            record(server="b", status=404, duration=12.0, bytes_in=40, bytes_out=400),
            record(server="b", status=101, duration=0.02, bytes_in=1, bytes_out=2),
            record(backend=None, server=None, status=404, duration=0.0001, bytes_in=5, bytes_out=6),
            record(
                listener="cache",
                backend="static",
                server="127.0.0.1:9003",
                status=None,
                method=None,
                duration=1.5,
                bytes_in=1000,
                bytes_out=2000,
                retries=1,
            ),
        ]
        for rec in sent:
            engine.record(rec)
        async with httpx.AsyncClient(base_url=admin_url(engine)) as client:
            _, samples, _ = await scrape(client)
    req = "steelyard_requests_total"
    assert value(samples, req, listener="web", backend="api", server="a", code="2xx") == 2
    assert value(samples, req, listener="web", backend="api", server="b", code="5xx") == 1
    assert value(samples, req, listener="web", backend="api", server="b", code="4xx") == 1
    assert value(samples, req, listener="web", backend="api", server="b", code="1xx") == 1
    assert value(samples, req, listener="web", backend="", server="", code="4xx") == 1
    assert (
        value(samples, req, listener="cache", backend="static", server="127.0.0.1:9003", code="")
        == 1
    )
    total = sum(v for (n, _), v in samples.items() if n == req)
    assert total == len(sent)

    # histogram: cumulative buckets, count and sum per (listener, backend)
    h = "steelyard_request_duration_seconds"
    durations = [0.0004, 0.002, 0.3, 12.0, 0.02]
    for bound in DURATION_BUCKETS:
        le = repr(bound)
        expected = sum(1 for d in durations if d <= bound)
        assert value(samples, h + "_bucket", listener="web", backend="api", le=le) == expected
    assert value(samples, h + "_bucket", listener="web", backend="api", le="+Inf") == 5
    assert value(samples, h + "_count", listener="web", backend="api") == 5
    assert abs(value(samples, h + "_sum", listener="web", backend="api") - sum(durations)) < 1e-9
    assert value(samples, h + "_count", listener="cache", backend="static") == 1
    assert DURATION_BUCKETS[0] == 0.0005 and DURATION_BUCKETS[-1] == 10.0

    b = "steelyard_bytes_total"
    assert value(samples, b, listener="web", direction="in") == 10 + 20 + 30 + 40 + 1 + 5
    assert value(samples, b, listener="web", direction="out") == 100 + 200 + 300 + 400 + 2 + 6
    assert value(samples, b, listener="cache", direction="in") == 1000
    assert value(samples, b, listener="cache", direction="out") == 2000
    r = "steelyard_retries_total"
    assert value(samples, r, backend="api") == 2
    assert value(samples, r, backend="static") == 1


async def test_no_client_address_or_path_in_any_label() -> None:
    async with running(basic_config()) as engine:
        for i in range(5):
            engine.record(record(client=f"10.9.8.{i}:4000{i}", path=f"/users/{i}?token=abc"))
        async with httpx.AsyncClient(base_url=admin_url(engine)) as client:
            text, samples, _ = await scrape(client)
    assert "10.9.8." not in text
    assert "/users/" not in text
    assert "token=abc" not in text
    for _, labels in samples:
        for _, v in labels:
            assert "/" not in v


async def test_server_gauges_follow_live_state() -> None:
    async with running(basic_config()) as engine:
        backend = engine.backends["api"]
        leases = [backend.acquire(PickContext()) for _ in range(4)]
        held = {name: sum(1 for x in leases if x.server.name == name) for name in ("a", "b")}
        backend.disable("a")
        async with httpx.AsyncClient(base_url=admin_url(engine)) as client:
            _, samples, _ = await scrape(client)
            for name in ("a", "b"):
                assert (
                    value(samples, "steelyard_server_active_requests", backend="api", server=name)
                    == held[name]
                )
            # disabled is an admin state; the server itself is still up
            assert value(samples, "steelyard_server_up", backend="api", server="a") == 1
            for lease in leases:
                lease.release(Outcome.OK)
            engine.backends["static"].servers["127.0.0.1:9003"].health = (
                engine.backends["static"].servers["127.0.0.1:9003"].health.UNHEALTHY
            )
            _, samples, _ = await scrape(client)
            assert (
                value(samples, "steelyard_server_active_requests", backend="api", server="a") == 0
            )
            assert (
                value(samples, "steelyard_server_up", backend="static", server="127.0.0.1:9003")
                == 0
            )
            assert value(samples, "steelyard_server_weight", backend="api", server="b") == 3


async def test_ejections_and_health_checks() -> None:
    text = """\
version: 1
admin: {bind: 127.0.0.1:0}
backends:
  api:
    outlier_detection: {consecutive_failures: 2, base_ejection_time: 30s, max_ejection_percent: 50}
    servers:
      - {address: 127.0.0.1:9001, name: a}
      - {address: 127.0.0.1:9002, name: b}
"""
    async with running(text) as engine:
        backend = engine.backends["api"]
        async with httpx.AsyncClient(base_url=admin_url(engine)) as client:
            _, samples, _ = await scrape(client)
            assert value(samples, "steelyard_ejections_total", backend="api", server="a") == 0
            # real outcomes through leases: two connect failures on a -> one ejection
            failures = 0
            while failures < 2:
                lease = backend.acquire(PickContext(exclude=frozenset({"b"})))
                assert lease is not None and lease.server.name == "a"
                lease.release(Outcome.CONNECT_FAILED)
                failures += 1
            _, samples, _ = await scrape(client)
            assert value(samples, "steelyard_ejections_total", backend="api", server="a") == 1
            assert value(samples, "steelyard_ejections_total", backend="api", server="b") == 0
            assert value(samples, "steelyard_server_up", backend="api", server="a") == 0
            # health checks are counted by the checker in engine.check_counts
            engine.check_counts[("api", "a", "ok")] = 7
            engine.check_counts[("api", "a", "fail")] = 2
            _, samples, _ = await scrape(client)
            hc = "steelyard_health_checks_total"
            assert value(samples, hc, backend="api", server="a", result="ok") == 7
            assert value(samples, hc, backend="api", server="a", result="fail") == 2


async def test_metrics_token() -> None:
    async with (
        running(basic_config(token="tok")) as engine,
        httpx.AsyncClient(base_url=admin_url(engine)) as client,
    ):
        assert (await client.get("/metrics")).status_code == 401
        _, samples, _ = await scrape(client, headers={"Authorization": "Bearer tok"})
    assert value(samples, "steelyard_server_up", backend="api", server="a") == 1


async def test_connections_active_reads_the_listener_runtime() -> None:
    async with running(basic_config()) as engine:

        class Runtime:
            connections_active = 4

        class Handle:
            runtime = Runtime()

        engine.listeners["fake"] = Handle()  # type: ignore[assignment]
        try:
            async with httpx.AsyncClient(base_url=admin_url(engine)) as client:
                _, samples, _ = await scrape(client)
                assert value(samples, "steelyard_connections_active", listener="fake") == 4
                Runtime.connections_active = 1
                _, samples, _ = await scrape(client)
                assert value(samples, "steelyard_connections_active", listener="fake") == 1
        finally:
            del engine.listeners["fake"]


def test_code_class() -> None:
    assert [code_class(s) for s in (100, 199, 200, 302, 404, 499, 500, 599)] == [
        "1xx",
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "4xx",
        "5xx",
        "5xx",
    ]
    assert code_class(None) == "" and code_class(0) == "" and code_class(600) == ""


def test_rolling_window_rates_and_percentiles() -> None:
    w = RollingWindow(60)
    # 100 requests in second 1000: 90 at ~1 ms, 10 at ~100 ms (5 of them errors)
    for _ in range(90):
        w.observe(1000, 0.001, False)
    for i in range(10):
        w.observe(1000, 0.1, i < 5)
    w.observe(1001, 0.001, False)
    s = w.summary(1002)
    assert s["requests"] == 101 and s["errors"] == 5
    assert abs(s["rps"] - 101 / 60) < 0.01
    assert 0.8 <= s["p50_ms"] <= 1.25
    assert 80 <= s["p99_ms"] <= 125
    assert w.series(1002, 3) == [0, 100, 1]
    # a minute later the window is empty; old samples arriving late are dropped
    assert w.summary(1061)["requests"] == 1
    assert w.summary(1062)["requests"] == 0
    assert w.summary(1100)["requests"] == 0
    w.observe(1100, 0.001, False)
    w.observe(1040, 0.001, False)  # second 1040 % 60 == 1100 % 60: older, dropped
    assert w.summary(1101)["requests"] == 1
    # a young window divides by its age
    assert w.summary(1101, elapsed=2.0)["rps"] == 0.5


async def test_stats_endpoint_for_the_dashboard() -> None:
    import time

    async with running(basic_config()) as engine:
        # ten requests that ended two seconds ago: 8 on a (2 of them 5xx), 2 on b
        ended = int(time.time()) - 2
        for i in range(10):
            server = "a" if i < 8 else "b"
            status = 503 if i < 2 else 200
            engine.record(record(server=server, status=status, duration=0.01, when=ended + 0.1))
        engine.record(record(server=None, status=503, duration=0.001, when=ended + 0.1))
        async with httpx.AsyncClient(base_url=admin_url(engine)) as client:
            r = await client.get("/api/v1/stats")
    assert r.status_code == 200
    body = r.json()
    assert body["window_s"] == 60
    api = next(b for b in body["backends"] if b["name"] == "api")
    assert api["requests"] == 11 and api["errors"] == 3  # includes the one no server took
    servers = {s["name"]: s for s in api["servers"]}
    a, b = servers["a"], servers["b"]
    assert (a["requests"], a["errors"], a["error_rate"]) == (8, 2, 0.25)
    assert (b["requests"], b["errors"]) == (2, 0)
    assert 8 <= a["p50_ms"] <= 12.5 and 8 <= a["p99_ms"] <= 12.5
    assert len(a["series"]) == 60
    second_ago = body["time"] - ended  # the slot of `ended`, counted from the end
    assert a["series"][-second_ago] == 8 and sum(a["series"]) == 8
    assert a["rps"] > 0


def test_recorder_matches_a_naive_count_for_any_traffic() -> None:
    """Property: whatever the mix of records, the exposition equals a naive recount."""
    from collections import Counter

    from hypothesis import given, settings
    from hypothesis import strategies as st
    from prometheus_client import CollectorRegistry, generate_latest

    from steelyard.admin.metrics import SteelyardCollector
    from steelyard.admin.traffic import EjectionCounter, TrafficRecorder

    class FakeEngine:
        listeners: dict = {}
        backends: dict = {}
        check_counts: dict = {}
        reloads = 0

    records = st.lists(
        st.tuples(
            st.sampled_from(["web", "tcp"]),
            st.sampled_from([None, "api", "static"]),
            st.sampled_from([None, "a", "b"]),
            st.one_of(st.none(), st.integers(0, 700)),
            st.floats(0, 20, allow_nan=False),
            st.integers(0, 10_000),
            st.integers(0, 10_000),
            st.integers(0, 3),
        ),
        max_size=60,
    )

    @settings(max_examples=60, deadline=None)
    @given(records)
    def check(rows: list[tuple]) -> None:
        recorder = TrafficRecorder(started=1.0)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SteelyardCollector(FakeEngine(), recorder, EjectionCounter()))
        want_requests: Counter = Counter()
        want_count: Counter = Counter()
        want_bytes: Counter = Counter()
        want_retries: Counter = Counter()
        for listener, backend, server, status, duration, b_in, b_out, retries in rows:
            recorder(
                record(
                    listener=listener,
                    backend=backend,
                    server=server,
                    status=status,
                    duration=duration,
                    bytes_in=b_in,
                    bytes_out=b_out,
                    retries=retries,
                    when=1000.0,
                )
            )
            want_requests[(listener, backend or "", server or "", code_class(status))] += 1
            want_count[(listener, backend or "")] += 1
            want_bytes[(listener, "in")] += b_in
            want_bytes[(listener, "out")] += b_out
            if backend:
                want_retries[backend] += retries
        got: Counter = Counter()
        got_count: Counter = Counter()
        got_bytes: Counter = Counter()
        got_retries: Counter = Counter()
        text = generate_latest(registry).decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                lb = s.labels
                if s.name == "steelyard_requests_total":
                    got[(lb["listener"], lb["backend"], lb["server"], lb["code"])] += s.value
                elif s.name == "steelyard_request_duration_seconds_count":
                    got_count[(lb["listener"], lb["backend"])] += s.value
                elif s.name == "steelyard_bytes_total":
                    got_bytes[(lb["listener"], lb["direction"])] += s.value
                elif s.name == "steelyard_retries_total":
                    got_retries[lb["backend"]] += s.value
        assert got == want_requests
        assert got_count == want_count
        assert +got_bytes == +want_bytes
        assert +got_retries == +want_retries

    check()
