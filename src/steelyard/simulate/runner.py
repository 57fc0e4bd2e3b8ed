"""Run a scenario: draw the workload once, simulate every algorithm entry on it.

Entries are independent, so with `jobs > 1` they run in forked worker processes (the
workloads are drawn in the parent and inherited by fork, never pickled).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from steelyard.core.balancing import ALGORITHMS
from steelyard.simulate.engine import EntryResult, Simulation, factory_of
from steelyard.simulate.scenario import AlgorithmEntry, Scenario, ScenarioError
from steelyard.simulate.workload import Workload, generate


@dataclass(slots=True)
class ScenarioResult:
    scenario: Scenario
    seed: int
    requests: int
    entries: dict[str, EntryResult]

    def to_json(self) -> dict[str, Any]:
        """The SPEC §7 results.json document (plus failed_hits/errors per algorithm)."""
        algorithms: dict[str, Any] = {}
        for name, r in self.entries.items():
            algorithms[name] = {  # the SPEC §7 keys in its order, then ours
                "latency_ms": r.percentiles_ms(),
                "share": r.share,
                "peak_in_flight": r.peak_in_flight,
                "moved_keys": r.moved_keys,
                "instance_disagreement": r.instance_disagreement,
                "failed_hits": r.failed_hits,
                "errors": r.errors,
                "algorithm": r.algorithm,
            }
        return {
            "scenario": self.scenario.name,
            "seed": self.seed,
            "requests": self.requests,
            "algorithms": algorithms,
        }


def default_entries() -> list[AlgorithmEntry]:
    """Every registered algorithm once (aliases of the same factory are skipped)."""
    seen: set[int] = set()
    out: list[AlgorithmEntry] = []
    for name, factory in ALGORITHMS.items():
        if id(factory) in seen:
            continue
        seen.add(id(factory))
        out.append(AlgorithmEntry(name, name))
    return out


def select_entries(scenario: Scenario, wanted: list[str] | None) -> list[AlgorithmEntry]:
    """The scenario's entries (or every algorithm), narrowed to `wanted` names if given.
    A wanted name that is not an entry but a known algorithm is added as a plain entry."""
    entries = list(scenario.algorithms) or default_entries()
    if not wanted:
        return entries
    by_name = {e.name: e for e in entries}
    out: list[AlgorithmEntry] = []
    for name in wanted:
        if name in by_name:
            out.append(by_name[name])
        else:
            factory_of(name)  # raises ScenarioError for an unknown name
            out.append(AlgorithmEntry(name, name))
    return out


# One slot, set in the parent just before forking workers and read by them: the work list.
_FORKED: list[tuple[Scenario, Workload, AlgorithmEntry, int]] = []


def _run_forked(index: int) -> EntryResult:
    scenario, workload, entry, seed = _FORKED[index]
    return Simulation(scenario, workload, entry, seed).run()


def run_tasks(
    tasks: list[tuple[Scenario, Workload, AlgorithmEntry, int]], jobs: int = 1
) -> list[EntryResult]:
    """Simulate each (scenario, workload, entry, seed); in `jobs` processes when > 1."""
    jobs = max(1, min(jobs, len(tasks)))
    if jobs == 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [Simulation(s, w, e, seed).run() for s, w, e, seed in tasks]
    _FORKED[:] = tasks
    try:
        ctx = multiprocessing.get_context("fork")
        # the longest tasks first keeps both workers busy to the end
        order = sorted(range(len(tasks)), key=lambda k: -len(tasks[k][1]))
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {k: pool.submit(_run_forked, k) for k in order}
            return [futures[k].result() for k in range(len(tasks))]
    finally:
        _FORKED.clear()


def prepare(
    scenario: Scenario,
    requests: int | None = None,
    seed: int | None = None,
    algorithms: list[str] | None = None,
) -> tuple[list[tuple[Scenario, Workload, AlgorithmEntry, int]], int, int]:
    n = requests if requests is not None else scenario.requests
    if n < 1:
        raise ScenarioError("--requests must be at least 1")
    s = seed if seed is not None else scenario.seed
    entries = select_entries(scenario, algorithms)
    for entry in entries:
        factory_of(entry.algorithm)
    workload = generate(scenario, n, s)
    return [(scenario, workload, e, s) for e in entries], len(workload), s


def run_scenario(
    scenario: Scenario,
    *,
    requests: int | None = None,
    seed: int | None = None,
    algorithms: list[str] | None = None,
    jobs: int = 1,
) -> ScenarioResult:
    tasks, n, s = prepare(scenario, requests, seed, algorithms)
    results = run_tasks(tasks, jobs)
    return ScenarioResult(scenario, s, n, {r.name: r for r in results})


def run_scenarios(
    scenarios: list[Scenario],
    *,
    requests: int | None = None,
    seed: int | None = None,
    jobs: int | None = None,
) -> list[ScenarioResult]:
    """Several scenarios, all entries of all of them spread over `jobs` processes."""
    jobs = jobs if jobs is not None else (os.cpu_count() or 1)
    all_tasks: list[tuple[Scenario, Workload, AlgorithmEntry, int]] = []
    meta: list[tuple[Scenario, int, int, int]] = []
    for scenario in scenarios:
        tasks, n, s = prepare(scenario, requests, seed)
        meta.append((scenario, s, n, len(tasks)))
        all_tasks.extend(tasks)
    results = run_tasks(all_tasks, jobs)
    out: list[ScenarioResult] = []
    pos = 0
    for scenario, s, n, count in meta:
        chunk = results[pos : pos + count]
        pos += count
        out.append(ScenarioResult(scenario, s, n, {r.name: r for r in chunk}))
    return out
