"""`steelyard simulate`: compare balancing algorithms on a workload in virtual time.

The simulator drives the proxy's own objects (core.backend.Backend, the ALGORITHMS factories,
Lease/Outcome, the health state machines) with a FakeClock; see engine.py for how, and
docs/simulator.md for the scenario format.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from steelyard.simulate.runner import ScenarioResult, run_scenario, run_scenarios
from steelyard.simulate.scenario import (
    BUILTIN_NAMES,
    Scenario,
    ScenarioError,
    load_scenario,
    load_scenario_text,
)

__all__ = [
    "BUILTIN_NAMES",
    "Scenario",
    "ScenarioError",
    "ScenarioResult",
    "load_scenario",
    "load_scenario_text",
    "main",
    "run_scenario",
    "run_scenarios",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"steelyard simulate: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="steelyard simulate",
        description=(
            "Replay a workload against the balancing algorithms in a discrete-event "
            "simulation (the proxy's own balancer code, virtual time)."
        ),
    )
    p.add_argument(
        "scenario", nargs="?", metavar="SCENARIO", help="a scenario YAML file or a built-in name"
    )
    p.add_argument("--algorithms", help="comma-separated entries or algorithm names to compare")
    p.add_argument("--requests", type=int, help="number of requests (default: the scenario's)")
    p.add_argument("--seed", type=int, help="random seed (default: the scenario's)")
    p.add_argument("--out", type=Path, help="write results.json and PNG plots into this directory")
    p.add_argument("--list", action="store_true", help="print the built-in scenarios and exit")
    p.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: one per CPU)",
    )
    return p


def main(argv: list[str]) -> int:
    """Entry point for `steelyard simulate ARGS...`; returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    if args.list:
        for name in BUILTIN_NAMES:
            print(name)
        return 0
    if not args.scenario:
        parser.print_usage(sys.stderr)
        print("steelyard simulate: error: SCENARIO is required (or --list)", file=sys.stderr)
        return 2
    if args.requests is not None and args.requests < 1:
        print("steelyard simulate: error: --requests must be at least 1", file=sys.stderr)
        return 2
    wanted = None
    if args.algorithms:
        wanted = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    try:
        scenario = load_scenario(args.scenario)
        result = run_scenario(
            scenario,
            requests=args.requests,
            seed=args.seed,
            algorithms=wanted,
            jobs=max(1, args.jobs),
        )
    except ScenarioError as exc:
        print(f"steelyard simulate: {exc}", file=sys.stderr)
        return 2
    from steelyard.simulate.report import table, write_json

    print(table(result))
    if args.out is not None:
        from steelyard.simulate.plots import write_plots

        written = [write_json(result, args.out), *write_plots(result, args.out)]
        print()
        for path in written:
            print(f"wrote {path}")
    return 0
