"""The simulator's event loop, scenario format, failure handling and command line.

Everything runs in virtual time: sleeping is forbidden by a fixture, and exact latencies are
asserted from hand-computed queueing schedules.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

import steelyard.core.balancing as balancing
import steelyard.simulate.engine as engine
from steelyard.core.backend import Backend
from steelyard.core.balancing.base import Health
from steelyard.simulate import BUILTIN_NAMES, main
from steelyard.simulate.engine import Simulation
from steelyard.simulate.runner import ScenarioResult, prepare, run_scenario
from steelyard.simulate.scenario import (
    ScenarioError,
    load_scenario,
    load_scenario_text,
    parse_duration,
)
from steelyard.simulate.workload import generate


@pytest.fixture(autouse=True)
def no_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the simulator must not sleep")

    monkeypatch.setattr(time, "sleep", forbidden)
    monkeypatch.setattr(asyncio, "sleep", forbidden)


def trace_file(tmp_path: Path, rows: list[tuple[float, str, float]]) -> Path:
    path = tmp_path / "trace.csv"
    lines = ["time,key,service_time"] + [f"{t},{k},{s}" for t, k, s in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def one_server(trace: Path, capacity: int, extra: str = "") -> str:
    return f"""
name: tiny
servers:
  - {{name: s1, capacity: {capacity}}}
workload:
  arrivals: {{trace: {trace}}}
algorithms: [round_robin]
{extra}
"""


def simulate(text: str, algorithm: str | None = None, **kw: object) -> ScenarioResult:
    scenario = load_scenario_text(text)
    algorithms = [algorithm] if algorithm else None
    return run_scenario(scenario, algorithms=algorithms, **kw)  # type: ignore[arg-type]


# --- the event loop, in virtual time -------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "latencies"),
    [
        # one worker, a FIFO queue: a 0..10ms, b 10..20, c 20..30, d waits from 15 until 30,
        # done at 40
        (1, [0.010, 0.020, 0.030, 0.025]),
        # two workers in parallel: a, b 0..10; c 10..20; d 15..25 on the second worker
        (2, [0.010, 0.010, 0.020, 0.010]),
    ],
    ids=["fifo_queue_behind_one_worker", "two_workers_in_parallel"],
)
def test_exact_latencies_behind_capacity_workers(
    tmp_path: Path, capacity: int, latencies: list[float]
) -> None:
    trace = trace_file(
        tmp_path, [(0.0, "a", 0.010), (0.0, "b", 0.010), (0.0, "c", 0.010), (0.015, "d", 0.010)]
    )
    r = simulate(one_server(trace, capacity=capacity)).entries["round_robin"]
    assert r.latencies == pytest.approx(latencies)
    assert r.peak_in_flight == {"s1": 3}
    assert r.share == {"s1": 1.0}


def test_virtual_clock_follows_the_events_and_leases_see_it(tmp_path: Path) -> None:
    trace = trace_file(tmp_path, [(100.0, "a", 2.0), (250.0, "b", 0.5)])
    scenario = load_scenario_text(one_server(trace, capacity=1))
    tasks, _, _ = prepare(scenario)
    sim = Simulation(*tasks[0])
    r = sim.run()
    assert r.latencies == pytest.approx([2.0, 0.5])
    # the clock stopped at the last completion, or at one upkeep tick or sample after it
    step = max(engine.TICK_INTERVAL, 250.0 / engine.SAMPLES)
    assert 250.5 <= sim.clock.now <= 250.5 + step
    state = sim.instances[0].servers["s1"]
    assert state.active == 0 and state.requests_total == 2
    # the peak-EWMA latency was fed from lease start (arrival) to release (completion)
    assert state.ewma.samples == 2
    assert 0.5 <= state.ewma.value <= 2.0


def test_slow_event_multiplies_later_service_times(tmp_path: Path) -> None:
    trace = trace_file(tmp_path, [(0.5, "a", 0.010), (2.0, "b", 0.010)])
    extra = "events:\n  - {at: 1s, action: slow, server: s1, factor: 3}\n"
    r = simulate(one_server(trace, capacity=1, extra=extra)).entries["round_robin"]
    assert r.latencies == pytest.approx([0.010, 0.030])


def test_long_lived_connections_hold_a_worker_and_count_in_flight(tmp_path: Path) -> None:
    text = """
name: ll
servers: [{name: s1, capacity: 1, service_time: {constant: 10ms}}]
workload:
  arrivals: {poisson: 10}
  long_lived: {fraction: 1.0, duration: {constant: 100s}}
algorithms: [round_robin]
"""
    r = simulate(text, requests=5).entries["round_robin"]
    assert r.latencies == []  # connections are not requests: no latency sample
    assert r.peak_in_flight["s1"] == 5  # one held, four queued behind it


def test_same_seed_same_result_and_processes_do_not_change_it() -> None:
    scenario = load_scenario("slow-server")
    kw = {"requests": 3000, "algorithms": ["round_robin", "least_connections"]}
    a = run_scenario(scenario, seed=7, jobs=1, **kw).to_json()  # type: ignore[arg-type]
    b = run_scenario(scenario, seed=7, jobs=2, **kw).to_json()  # type: ignore[arg-type]
    c = run_scenario(scenario, seed=8, jobs=1, **kw).to_json()  # type: ignore[arg-type]
    assert a == b
    assert a["algorithms"] != c["algorithms"]
    assert a["seed"] == 7 and a["requests"] == 3000


# --- the same objects as the proxy ----------------------------------------------------------


@pytest.mark.parametrize("algorithm", sorted(balancing.ALGORITHMS))
def test_simulate_drives_the_proxy_balancer_classes(algorithm: str) -> None:
    assert vars(engine)["ALGORITHMS"] is balancing.ALGORITHMS  # the registry, not a copy
    scenario = load_scenario("homogeneous")
    tasks, _, _ = prepare(scenario, requests=500, algorithms=[algorithm])
    sim = Simulation(*tasks[0])
    factory = balancing.ALGORITHMS[algorithm]
    assert sim.factory is factory
    for backend in sim.instances:
        assert type(backend) is Backend
        if isinstance(factory, type):
            assert type(backend.balancer) is factory
    r = sim.run()
    states = sim.instances[0].servers.values()
    assert sum(s.requests_total for s in states) == 500
    assert all(s.active == 0 for s in states)
    assert sum(r.share.values()) == pytest.approx(1.0, abs=1e-3)


def test_simulator_defines_no_balancer_of_its_own_but_the_modulo_baseline() -> None:
    import inspect

    import steelyard.simulate as pkg

    pickers = []
    for path in Path(pkg.__file__).parent.glob("*.py"):
        if path.stem == "__main__":
            continue
        module = __import__(f"steelyard.simulate.{path.stem}", fromlist=["*"])
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == module.__name__ and hasattr(obj, "pick"):
                pickers.append(name)
    assert pickers == ["ModuloHash"]
    assert "modulo" not in balancing.ALGORITHMS


# --- failures, health checks, outlier detection, retries ------------------------------------

FAILING = """
name: failing
servers:
  - {{name: s1, capacity: 4, service_time: {{constant: 10ms}}}}
  - {{name: s2, capacity: 4, service_time: {{constant: 10ms}}}}
events:
  - {{at: 5s, action: fail, server: s2}}
workload:
  arrivals: {{poisson: 200}}
lb: {lb}
algorithms: [round_robin]
"""


def test_a_failed_server_that_nobody_notices_takes_half_the_requests() -> None:
    r = simulate(FAILING.format(lb="{}"), requests=4000, seed=3).entries["round_robin"]
    # after 5 s of ~20 s, every second request goes to s2 and fails
    assert 0.3 < r.failed_hits < 0.45
    assert r.errors >= r.failed_hits


def test_outlier_detection_stops_traffic_after_consecutive_failures() -> None:
    lb = "{outlier_detection: {consecutive_failures: 5, base_ejection_time: 60s}}"
    r = simulate(FAILING.format(lb=lb), requests=4000, seed=3).entries["round_robin"]
    hits = round(r.failed_hits * 4000)
    assert 1 <= hits <= 10  # five in a row eject it (plus those already in flight)


def test_health_checks_notice_a_failure_after_the_threshold() -> None:
    lb = "{health_check: {interval: 1s, healthy_threshold: 2, unhealthy_threshold: 2}}"
    r = simulate(FAILING.format(lb=lb), requests=4000, seed=3).entries["round_robin"]
    hits = round(r.failed_hits * 4000)
    # two failed checks ~2 s at 100 req/s to s2: about 200, never the 1500 of no checks
    assert 50 <= hits <= 400


def test_retries_go_to_another_server() -> None:
    r = simulate(FAILING.format(lb="{retries: 1}"), requests=4000, seed=3).entries["round_robin"]
    assert r.failed_hits > 0.3  # the first attempt still lands on s2
    assert r.errors < 0.01  # ... but the retry on s1 answers (only requests cut at 5 s fail)


def test_recovered_server_comes_back_after_healthy_checks() -> None:
    text = FAILING.format(
        lb="{health_check: {interval: 1s, healthy_threshold: 2, unhealthy_threshold: 2}}"
    ).replace(
        "  - {at: 5s, action: fail, server: s2}",
        "  - {at: 5s, action: fail, server: s2}\n  - {at: 8s, action: recover, server: s2}",
    )
    scenario = load_scenario_text(text)
    tasks, _, _ = prepare(scenario, requests=4000, seed=3)
    sim = Simulation(*tasks[0])
    r = sim.run()
    assert sim.instances[0].servers["s2"].health is Health.HEALTHY
    # s2 missed roughly 5..10 s of 20 s: a share well under half, well over nothing
    assert 0.3 < r.share["s2"] < 0.47


def test_leave_and_drain_stop_new_traffic_join_starts_it() -> None:
    base = """
name: membership
servers:
  - {name: s1, capacity: 8, service_time: {constant: 10ms}}
  - {name: s2, capacity: 8, service_time: {constant: 10ms}}
events:
  - {at: 50%, action: ACTION, server: s2}
workload: {arrivals: {poisson: 200}}
algorithms: [round_robin]
"""
    for action in ("leave", "drain"):
        r = simulate(base.replace("ACTION", action), requests=4000).entries["round_robin"]
        assert r.share["s2"] == pytest.approx(0.25, abs=0.02)
        assert r.errors == 0
    join = base.replace(
        "{at: 50%, action: ACTION, server: s2}",
        "{at: 50%, action: join, server: {name: s3, capacity: 8}}",
    )
    r = simulate(join, requests=4000).entries["round_robin"]
    assert r.share["s3"] == pytest.approx(1 / 6, abs=0.02)


def test_moved_keys_and_disagreement_are_null_where_they_mean_nothing() -> None:
    text = """
name: keys
servers:
  - {name: s1, capacity: 8}
  - {name: s2, capacity: 8}
events:
  - {at: 50%, action: join, server: {name: s3, capacity: 8}}
workload: {arrivals: {poisson: 100}, keys: {count: 3000}}
lb: {instances: 2}
algorithms: [round_robin, modulo, consistent_hash]
"""
    result = simulate(text, requests=2000)
    rr, mod, ch = (result.entries[n] for n in ("round_robin", "modulo", "consistent_hash"))
    assert rr.moved_keys is None and rr.instance_disagreement is None
    assert mod.moved_keys == pytest.approx(2 / 3, abs=0.05)  # h % 2 == h % 3 for 1/3
    assert ch.moved_keys == pytest.approx(1 / 3, abs=0.08)  # the new server's share
    assert ch.instance_disagreement == 0.0  # unbounded hashing needs no coordination
    single = simulate(text.replace("lb: {instances: 2}", ""), requests=500)
    assert single.entries["consistent_hash"].instance_disagreement is None


# --- workload ------------------------------------------------------------------------------


def test_poisson_arrivals_have_the_configured_rate() -> None:
    scenario = load_scenario("homogeneous")
    wl = generate(scenario, 20000, seed=5)
    rate = len(wl) / wl.times[-1]
    assert rate == pytest.approx(1400, rel=0.05)
    assert all(a <= b for a, b in zip(wl.times, wl.times[1:], strict=False))


def test_bursts_raise_the_rate_inside_the_bursts() -> None:
    text = """
name: b
servers: [{name: s1}]
workload: {arrivals: {bursts: {rate: 100, burst_rate: 1000, every: 10s, length: 1s}}}
"""
    wl = generate(load_scenario_text(text), 20000, seed=1)
    inside = sum(1 for t in wl.times if t % 10 < 1)
    # per 10 s: 1000 in the burst, 900 outside
    assert inside / len(wl) == pytest.approx(1000 / 1900, abs=0.03)


def test_hot_key_and_zipf_keys() -> None:
    hot = load_scenario_text(
        "name: h\nservers: [{name: s1}]\nworkload: {keys: {count: 1000, hot_fraction: 0.3}}"
    )
    wl = generate(hot, 20000, seed=1)
    assert wl.key_ids.count(0) / len(wl) == pytest.approx(0.3, abs=0.02)
    zipf = load_scenario_text(
        "name: z\nservers: [{name: s1}]\n"
        "workload: {keys: {count: 1000, distribution: zipf, exponent: 1.2}}"
    )
    wl = generate(zipf, 20000, seed=1)
    counts = [wl.key_ids.count(i) for i in range(3)]
    assert counts[0] > counts[1] > counts[2] > 20000 / 1000


def test_service_time_distributions_have_their_means() -> None:
    text = """
name: d
servers:
  - {name: c, service_time: {constant: 10ms}}
  - {name: e, service_time: {exponential: 10ms}}
  - {name: l, service_time: {lognormal: {median: 10ms, sigma: 0.5}}}
  - {name: m, service_time: {empirical: [1ms, 2ms, 3ms]}}
"""
    scenario = load_scenario_text(text)
    wl = generate(scenario, 40000, seed=2)

    def mean(name: str) -> float:
        return sum(wl.service[name]) / len(wl)

    assert set(wl.service["c"]) == {0.010}
    assert mean("e") == pytest.approx(0.010, rel=0.03)
    assert mean("l") == pytest.approx(scenario.servers[2].service_time.mean, rel=0.03)
    assert set(wl.service["m"]) == {0.001, 0.002, 0.003}


# --- scenario files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nservers: []", "non-empty list"),
        ("name: x\nservers: [{name: a, capasity: 2}]", "did you mean 'capacity'"),
        ("name: x\nservers: [{name: a, service_time: {constant: 10 parsecs}}]", "duration"),
        ("name: x\nservers: [{name: a}]\nevents: [{at: 1s, action: fail, server: b}]", "'b'"),
        ("name: x\nservers: [{name: a}]\nevents: [{at: 1s, action: explode, server: a}]", "one of"),
        ("name: x\nservers: [{name: a}, {name: a}]", "two servers"),
        ("name: x\nservers: [{name: a}]\nworkload: {arrivals: {poisson: 0}}", "positive"),
        ("name: x\nservers: [{name: a}]\nalgorithms: [{algorithm: rr, weights: {b: 1}}]", "'b'"),
        ("name: x\nservers: [{name: a}]\nlb: {instanses: 2}", "did you mean 'instances'"),
        ("name: [x", "not valid YAML"),
    ],
)
def test_bad_scenarios_are_refused_with_the_place(text: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message.replace("(", r"\(")):
        load_scenario_text(text, "bad.yaml")


def test_unknown_algorithm_is_refused() -> None:
    scenario = load_scenario_text("name: x\nservers: [{name: a}]\nalgorithms: [fastest]")
    with pytest.raises(ScenarioError, match="unknown algorithm 'fastest'"):
        run_scenario(scenario, requests=10)


def test_durations() -> None:
    assert parse_duration("250ms", "x") == pytest.approx(0.25)
    assert parse_duration("2s", "x") == 2.0
    assert parse_duration("1m", "x") == 60.0
    assert parse_duration(0.5, "x") == 0.5
    with pytest.raises(ScenarioError):
        parse_duration("-1s", "x")


def test_weight_overrides_model_equal_and_capacity_weights() -> None:
    scenario = load_scenario("mixed-capacity")
    entries = {e.name: e for e in scenario.algorithms}
    small, big = scenario.servers[0], scenario.servers[2]
    assert entries["round_robin"].weight_for(small) == entries["round_robin"].weight_for(big)
    assert entries["weighted_round_robin"].weight_for(big) == 4 * entries[
        "weighted_round_robin"
    ].weight_for(small)


# --- command line --------------------------------------------------------------------------


def test_list_prints_the_builtin_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    expected = [
        "homogeneous",
        "slow-server",
        "mixed-capacity",
        "long-lived",
        "scale-out",
        "hot-key",
        "canary",
    ]
    assert main(["--list"]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    assert list(BUILTIN_NAMES) == expected


def test_out_writes_results_json_in_the_spec_shape_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "scale-out",
            "--requests",
            "3000",
            "--seed",
            "4",
            "--algorithms",
            "round_robin,maglev",
            "--out",
            str(out),
            "--jobs",
            "1",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "round_robin" in printed and "maglev" in printed and "p99" in printed
    doc = json.loads((out / "results.json").read_text())
    assert list(doc) == ["scenario", "seed", "requests", "algorithms"]
    assert (doc["scenario"], doc["seed"], doc["requests"]) == ("scale-out", 4, 3000)
    assert list(doc["algorithms"]) == ["round_robin", "maglev"]
    for name, entry in doc["algorithms"].items():
        assert list(entry)[:5] == [
            "latency_ms",
            "share",
            "peak_in_flight",
            "moved_keys",
            "instance_disagreement",
        ]
        assert list(entry)[5:] == ["failed_hits", "errors", "algorithm"]
        assert list(entry["latency_ms"]) == ["p50", "p90", "p99", "max"]
        assert set(entry["share"]) == {f"s{i}" for i in range(1, 11)}
        assert all(isinstance(v, int) for v in entry["peak_in_flight"].values())
        assert entry["instance_disagreement"] is None
        assert (entry["moved_keys"] is None) == (name == "round_robin")
    for png in ("latency_cdf.png", "in_flight.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["no-such-scenario"],
        ["canary", "--algorithms", "fastest"],
        ["canary", "--requests", "0"],
        ["canary", "--bogus"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_a_scenario_file_and_a_trace_relative_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace_file(tmp_path, [(0.0, "a", 0.01), (0.001, "b", 0.01), (0.002, "a", 0.01)])
    scenario = tmp_path / "mine.yaml"
    scenario.write_text(
        "name: mine\nservers: [{name: x, capacity: 1}, {name: y, capacity: 1}]\n"
        "workload: {arrivals: {trace: trace.csv}}\n"
    )
    assert main([str(scenario), "--algorithms", "consistent_hash", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "scenario mine: 3 requests" in out


def test_steelyard_cli_hands_simulate_its_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from steelyard.cli import main as cli_main

    assert cli_main(["simulate", "--list"]) == 0
    assert capsys.readouterr().out.split() == list(BUILTIN_NAMES)
    assert cli_main(["simulate", "canary", "--requests", "500", "--jobs", "1"]) == 0
    assert "scenario canary: 500 requests" in capsys.readouterr().out


def test_the_scenario_example_in_the_docs_is_valid(tmp_path: Path) -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"
    text = doc.read_text()
    start = text.index("```yaml\nname: my-workload")
    block = text[start + len("```yaml\n") : text.index("```", start + 8)]
    scenario = load_scenario_text(block, "simulator.md", tmp_path)
    assert [e.action for e in scenario.events] == [
        "slow",
        "fail",
        "recover",
        "join",
        "leave",
        "drain",
    ]
    assert scenario.lb.outlier_detection is not None and scenario.lb.health_check is not None
    assert [a.name for a in scenario.algorithms][-1] == "modulo"
    # runs with the trace swapped for Poisson arrivals
    runnable = block.replace("arrivals: {poisson: 1200}", "arrivals: {poisson: 300}")
    result = run_scenario(load_scenario_text(runnable), requests=2000, jobs=1)
    assert set(result.entries) == {a.name for a in scenario.algorithms}


BUSY_FAILING = """
name: busy-failing
servers:
  - {{name: s1, capacity: 8, service_time: {{exponential: 50ms}}}}
  - {{name: s2, capacity: 8, service_time: {{exponential: 50ms}}}}
events:
  - {{at: 5s, action: fail, server: s2}}
  - {{at: 12s, action: recover, server: s2}}
workload:
  arrivals: {{poisson: 200}}
lb: {lb}
algorithms: [round_robin]
"""


@pytest.mark.parametrize("lb", ["{}", "{retries: 1}", "{retries: 2, instances: 2}"])
def test_every_request_either_completes_or_counts_as_an_error(lb: str) -> None:
    scenario = load_scenario_text(BUSY_FAILING.format(lb=lb))
    tasks, n, _ = prepare(scenario, requests=4000, seed=9)
    sim = Simulation(*tasks[0])
    r = sim.run()
    assert len(r.latencies) + round(r.errors * n) == n
    # ~5 requests were in service on s2 when it failed: they are reset, retries or not
    assert round(r.errors * n) >= 1
    for backend in sim.instances:  # every lease was released
        assert all(s.active == 0 for s in backend.servers.values())
    if scenario.lb.instances > 1:
        # each instance has its own ServerStates and saw its own half of the requests
        a, b = (sim.instances[k].servers["s1"] for k in (0, 1))
        assert a is not b
        totals = [sum(s.requests_total for s in i.servers.values()) for i in sim.instances]
        assert totals[0] == pytest.approx(totals[1], rel=0.05)


def test_docs_generator_writes_the_page_and_every_plot(tmp_path: Path) -> None:
    from steelyard.simulate import docs

    names = ["slow-server", "hot-key"]
    argv = ["--docs", str(tmp_path), "--requests", "1500", "--jobs", "1"]
    assert docs.main([*argv, "--scenarios", ",".join(names)]) == 0
    page = (tmp_path / "which-algorithm.md").read_text()
    assert page.startswith("# Which algorithm?\n")
    for name in names:
        assert f"\n## {name}\n" in page
        for plot in ("latency_cdf", "in_flight"):
            assert f"](img/{name}-{plot}.png)" in page
            assert (tmp_path / "img" / f"{name}-{plot}.png").read_bytes()[:4] == b"\x89PNG"
    assert "Every scenario ran 1,500 requests (seed 1)" in page


def test_table_shows_failure_hash_and_instance_columns_only_when_they_say_something() -> None:
    from steelyard.simulate.report import table

    healthy = FAILING.format(lb="{}").replace("  - {at: 5s, action: fail, server: s2}\n", "")
    text = table(simulate(healthy, requests=500))
    assert "p99 ms" in text and "round_robin" in text
    for column in ("failed hits", "errors", "moved keys", "disagree"):
        assert column not in text
    failing = table(simulate(FAILING.format(lb="{instances: 2}"), "maglev", requests=2000))
    for column in ("failed hits", "errors", "moved keys", "disagree"):
        assert column in failing


def test_readme_summary_replaces_only_the_marked_section(tmp_path: Path) -> None:
    from steelyard.simulate import docs

    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\nbefore\n{docs.README_START}\nold\n{docs.README_END}\nafter\n")
    assert docs.update_readme(readme, "NEW TABLE")
    assert readme.read_text() == (
        f"# T\n\nbefore\n{docs.README_START}\nNEW TABLE\n{docs.README_END}\nafter\n"
    )
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not docs.update_readme(plain, "X")
    assert plain.read_text() == "no markers\n"
