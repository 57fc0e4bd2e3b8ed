"""Which event loops the integration tests run on (pytest-asyncio's loop-factory hook).

A test module that sets `LOOP_FACTORIES` (name -> factory) runs each of its async tests once
per loop, e.g. on uvloop (production) and on the stdlib loop. Every other module keeps what it
had: its loop comes from the current event loop policy (the default one, or a module's own
`event_loop_policy` fixture, which pytest-asyncio installs around the runner), so adding this
hook changes nothing for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any


def _policy_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_event_loop_policy().new_event_loop()


_FROM_POLICY: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {"policy": _policy_loop}


def pytest_asyncio_loop_factories(
    config: Any, item: Any
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    module = getattr(item, "module", None)
    factories = getattr(module, "LOOP_FACTORIES", None)
    return factories if factories else _FROM_POLICY
