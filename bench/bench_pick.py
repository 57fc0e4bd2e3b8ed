"""Micro benchmark of the balancing algorithms: pick() cost at 3, 30 and 300 servers, and the
build time of the tables that are slow to build (Maglev, the ketama rings).

Usage: python bench/bench_pick.py [--picks N] [--repeat R] [--clock wall|cpu]

Each figure is the best of R runs (least disturbed by other load on the machine) of N picks,
divided by N; it includes the loop and call overhead of the benchmark itself (~0.05 us).
``--clock cpu`` measures this process's CPU time (time.process_time) instead of
time.perf_counter, which is steadier on a machine shared with other work.

Balancers with load hooks (least_connections, least_response_time, consistent_hash with a
hash_balance_factor) are driven as the backend drives them (see tracked_cost): the figure is
pick() plus the load hooks (on_acquire if it has one, on_release), per request.

Servers carry random latency estimates and in-flight counts: "some idle" draws them from 0-5
(least_connections may stop its scan at an idle server), "all busy" from 1-6 (the full scan,
its worst case). Hash algorithms get a different key on every pick. Round robin records its cycle while it steps
through it the first time and replays it after; the "first cycle" rows time a freshly built
balancer up to the end of its first cycle (slow start rebuilds every second while a server
ramps, so that is where a ramp spends part of its picks). Not collected by pytest
(testpaths = tests); never asserted anywhere.
"""

from __future__ import annotations

import argparse
import functools
import math
import operator
import platform
import random
import sys
import time
from collections import deque
from collections.abc import Callable

from steelyard.core.balancing import (
    ALGORITHMS,
    BalancerSettings,
    PickContext,
    Server,
    ServerState,
)

SIZES = (3, 30, 300)
BUILD_SIZES = (3, 30, 100, 300)


def group(n: int, rng: random.Random, busy: bool = False) -> list[ServerState]:
    out = []
    for i in range(n):
        s = ServerState(Server(f"10.0.{i // 250}.{i % 250 + 1}:8080", "127.0.0.1", 8080))
        s.active = rng.randrange(6) + (1 if busy else 0)
        s.ewma.observe(rng.uniform(0.001, 0.050), 0.0)
        out.append(s)
    return out


CLOCK: Callable[[], float] = time.perf_counter


def best_of(repeat: int, fn: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = CLOCK()
        fn()
        best = min(best, CLOCK() - t0)
    return best


def pick_cost(
    name: str,
    n: int,
    weights: str,
    picks: int,
    repeat: int,
    busy: bool,
    first_cycle: bool = False,
    **settings: object,
) -> float:
    rng = random.Random(1)
    servers = group(n, rng, busy)
    w = [1.0] * n if weights == "equal" else [float(rng.randint(1, 5)) for _ in range(n)]
    if weights == "ramping":  # slow start: one in ten ramping, in steps of 1/32 (as Backend)
        w = [ramp(wi, rng) if i % 10 == 0 else wi for i, wi in enumerate(w)]
    elif weights == "all ramping":  # every server joined within the slow-start window
        w = [ramp(wi, rng) for wi in w]
    elif weights == "float":  # arbitrary fractions: the API takes them, Steelyard never makes them
        w = [rng.uniform(0.1, 5.0) for _ in range(n)]
    now = [0.0]
    # a C-level call, as the engine's clock (time.monotonic) is, not a Python lambda
    extra: dict[str, object] = {"clock": functools.partial(operator.getitem, now, 0)}
    # as the backend builds it: with the ramping flag while servers are in slow start
    ramping = weights in ("ramping", "all ramping")
    config = BalancerSettings(algorithm=name, extra=extra, ramping=ramping, **settings)  # type: ignore[arg-type]
    b = ALGORITHMS[name](servers, w, config, rng)
    contexts = [PickContext(hash_key=rng.getrandbits(32).to_bytes(4, "big")) for _ in range(picks)]
    if first_cycle:  # a freshly built balancer each run: round robin before its cycle is recorded
        best = float("inf")
        for _ in range(repeat):
            fresh = ALGORITHMS[name](servers, w, config, rng)
            first = contexts[: min(picks, getattr(fresh, "cycle_len", 0) or picks)]
            t0 = CLOCK()
            for ctx in first:
                fresh.pick(ctx)
            best = min(best, (CLOCK() - t0) / len(first))
        return best * 1e6
    pick = b.pick
    track = getattr(b, "track_load", None)
    if track is not None:
        track()  # as the backend does on install
        if getattr(b, "on_release", None) is not None:
            return tracked_cost(b, servers, contexts, now, repeat, rng)
    for ctx in contexts[: min(picks, 4096)]:  # warm up (and let round robin record its cycle)
        pick(ctx)

    def run() -> None:
        for ctx in contexts:
            pick(ctx)

    return best_of(repeat, run) / picks * 1e6


def ramp(weight: float, rng: random.Random) -> float:
    """A weight part way through slow start, as Backend.effective_weight gives it."""
    return weight * math.ceil(rng.uniform(0.1, 1.0) * 32) / 32


def tracked_cost(
    b: object,
    servers: list[ServerState],
    contexts: list[PickContext],
    now: list[float],
    repeat: int,
    rng: random.Random,
) -> float:
    """A balancer with load hooks, driven as the backend drives it: every pick acquires the
    server (active + 1, on_acquire) and releases the oldest lease in flight (active - 1, a
    latency sample, on_release), so in-flight stays at its starting level and the index keeps
    changing. Returns the balancer's share per request, pick() + the hooks: the same loop
    with the balancer calls left out (the servers it picked replayed from a list) is timed
    too and subtracted."""
    pick = b.pick  # type: ignore[attr-defined]
    on_acquire = getattr(b, "on_acquire", None)  # optional (least_connections has none)
    on_release = b.on_release  # type: ignore[attr-defined]
    held = deque(s for s in servers for _ in range(s.active))
    samples = [rng.uniform(0.001, 0.050) for _ in range(len(contexts))]
    step = 1e-5  # virtual seconds per request: 100k requests/s
    chosen: list[ServerState] = []

    def run() -> None:
        t = now[0]
        for ctx, sample in zip(contexts, samples, strict=True):
            s = pick(ctx)
            s.active += 1
            if on_acquire is not None:
                on_acquire(s)
            chosen.append(s)
            if held:
                o = held.popleft()
                t += step
                now[0] = t
                o.active -= 1
                o.ewma.observe(sample, t)
                on_release(o)
            held.append(s)

    def bare() -> None:
        t = now[0]
        for s, sample in zip(chosen[-len(contexts) :], samples, strict=True):
            s.active += 1
            if held:
                o = held.popleft()
                t += step
                now[0] = t
                o.active -= 1
                o.ewma.observe(sample, t)
            held.append(s)

    def hooks_only() -> None:
        t = now[0]
        for s, sample in zip(chosen[-len(contexts) :], samples, strict=True):
            s.active += 1
            if on_acquire is not None:
                on_acquire(s)
            if held:
                o = held.popleft()
                t += step
                now[0] = t
                o.active -= 1
                o.ewma.observe(sample, t)
                on_release(o)
            held.append(s)

    run()  # warm up
    # interleaved, best of each: the three loops see the same machine (a quiet spell that
    # fell on one of them alone would skew the difference)
    full = base = hooks = float("inf")
    for _ in range(repeat):
        full = min(full, best_of(1, run))
        base = min(base, best_of(1, bare))
        hooks = min(hooks, best_of(1, hooks_only))
    scale = 1e6 / len(contexts)
    # the split is approximate: without picks the hooks see slightly different keys, and
    # least_connections/least_response_time repair unreported acquires inside pick()
    SPLIT.append((max(full - hooks, 0.0) * scale, max(hooks - base, 0.0) * scale))
    return max(full - base, 0.0) * scale


SPLIT: list[tuple[float, float]] = []  # (pick, hooks) of the last tracked_cost calls


def build_cost(name: str, n: int, repeat: int) -> float:
    rng = random.Random(2)
    servers = group(n, rng)
    factory = ALGORITHMS[name]
    settings = BalancerSettings(algorithm=name)
    return best_of(repeat, lambda: factory(servers, [1.0] * n, settings, rng)) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--picks", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"python {platform.python_version()} on {platform.machine()} ({sys.platform})")
    clock = "perf_counter" if args.clock == "wall" else "process_time"
    print(
        f"pick() cost, microseconds per pick (best of {args.repeat} x {args.picks} picks, {clock})\n"
    )
    rows: list[tuple[str, str, bool, dict[str, object]]] = [  # "!": first cycle only
        ("round_robin", "equal", False, {}),
        ("round_robin", "ramping", False, {}),
        ("round_robin", "ramping!", False, {}),
        ("round_robin", "all ramping", False, {}),
        ("round_robin", "all ramping!", False, {}),
        ("round_robin", "float", False, {}),
        ("least_connections", "equal", False, {}),
        ("least_connections", "equal", True, {}),
        ("least_connections", "integer", True, {}),
        ("least_response_time", "equal", False, {}),
        ("least_response_time", "integer", True, {}),
        ("power_of_two", "integer", False, {}),
        ("random", "integer", False, {}),
        ("ip_hash", "equal", False, {}),
        ("consistent_hash", "equal", False, {}),
        ("consistent_hash", "equal", False, {"hash_balance_factor": 125}),
        ("maglev", "equal", False, {}),
    ]
    width = 50
    header = f"{'algorithm':<{width}}" + "".join(f"{n:>10} srv" for n in SIZES)
    print(header)
    print("-" * len(header))
    splits: list[tuple[str, tuple[float, float]]] = []
    for name, weights, busy, extra in rows:
        first = weights.endswith("!")
        weights = weights.rstrip("!")
        label = f"{name} ({weights} weights, {'all busy' if busy else 'some idle'})"
        if first:
            label = f"{name} ({weights} weights, first cycle)"
        if extra:
            label = f"{name} (hash_balance_factor {extra['hash_balance_factor']})"
        if name.startswith("least_") or extra:
            label += " *"
        cells = []
        for n in SIZES:
            picks = args.picks if n < 300 else args.picks // 4
            cells.append(pick_cost(name, n, weights, picks, args.repeat, busy, first, **extra))
        print(f"{label:<{width}}" + "".join(f"{c:>11.2f}us" for c in cells))
        if SPLIT:
            splits.append((label, SPLIT[-1]))
            SPLIT.clear()
    print("\n* pick() + load hooks per request, driven as the backend drives them (tracked_cost)")
    print(f"  at {SIZES[-1]} servers, split into pick() / hooks (approximate):")
    for label, (p, h) in splits:
        print(f"    {label:<{width}} {p:6.2f}us / {h:.2f}us")
    print(f"\nbuild time, milliseconds (best of {max(1, args.repeat // 2)}, equal weights)\n")
    header = f"{'algorithm':<{width}}" + "".join(f"{n:>10} srv" for n in BUILD_SIZES)
    print(header)
    print("-" * len(header))
    for name in ("maglev", "consistent_hash", "ip_hash", "round_robin", "least_connections"):
        cells = [build_cost(name, n, max(1, args.repeat // 2)) for n in BUILD_SIZES]
        print(f"{name:<{width}}" + "".join(f"{c:>11.1f}ms" for c in cells))


if __name__ == "__main__":
    main()
