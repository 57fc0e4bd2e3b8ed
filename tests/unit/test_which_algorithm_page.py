"""docs/which-algorithm.md and the README's summary of it are generated from simulator runs
(`python -m steelyard.simulate.docs`); this regenerates them in memory and fails when the
committed text is stale -- after a change to a balancer or a scenario, say. (Only the CPU time
in the page's opening varies between runs; the plots are not compared.)"""

from __future__ import annotations

import re
from pathlib import Path

from steelyard.simulate.docs import README_END, README_START, readme_summary, render
from steelyard.simulate.runner import run_scenarios
from steelyard.simulate.scenario import BUILTIN_NAMES, load_scenario

ROOT = Path(__file__).resolve().parents[2]
HOW = "stale: regenerate with `.venv/bin/python -m steelyard.simulate.docs` and commit it"


def test_which_algorithm_page_and_readme_summary_are_current() -> None:
    page = (ROOT / "docs" / "which-algorithm.md").read_text(encoding="utf-8")
    took = re.search(r"took (\d+) s of CPU time", page)
    assert took is not None, "docs/which-algorithm.md: no 'took N s of CPU time' line"
    results = run_scenarios([load_scenario(name) for name in BUILTIN_NAMES], jobs=2)
    assert render(results, "img/", float(took.group(1))) == page, (
        f"docs/which-algorithm.md is {HOW}"
    )
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index(README_START) + len(README_START) + 1
    end = readme.index(README_END) - 1
    assert readme[start:end] == readme_summary(results), f"README's algorithm summary is {HOW}"
