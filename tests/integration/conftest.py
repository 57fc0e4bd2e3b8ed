"""Which event loops the integration tests run on (pytest-asyncio's loop-factory hook).

A test module that sets `LOOP_FACTORIES` (name -> factory) runs each of its async tests once
per loop, e.g. on uvloop (production) and on the stdlib loop. Every other module keeps what it
had: its loop comes from the current event loop policy (the default one, or a module's own
`event_loop_policy` fixture, which pytest-asyncio installs around the runner), so adding this
hook changes nothing for them.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable, Mapping
from typing import Any

# STEELYARD_TEST_EAGER_GC=1 (the pure-Python pass of `make test`): the cyclic GC runs about
# 35 times as often (gen0 at 20 allocations, not 700), so what is left to it is freed while a
# test runs rather than by chance. Above all a uvloop transport freed while its shutdown(2)
# request is pending, which crashes uvloop 0.23 (docs/l4.md). With it, test_tcp_proxy.py failed
# in 3 runs of 3 with the test servers that had that fault (a worker crash); without it, it
# passed 4 runs of 4 and the whole suite crashed now and then.
if os.environ.get("STEELYARD_TEST_EAGER_GC") == "1":
    gc.set_threshold(20, 2, 2)


def _policy_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_event_loop_policy().new_event_loop()


_FROM_POLICY: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {"policy": _policy_loop}


def pytest_asyncio_loop_factories(
    config: Any, item: Any
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    module = getattr(item, "module", None)
    factories = getattr(module, "LOOP_FACTORIES", None)
    return factories if factories else _FROM_POLICY
