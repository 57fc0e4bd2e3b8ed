"""Build hook: the data path's modules compiled to C extensions with mypyc.

The sources stay plain, type-checked Python; mypyc (part of mypy) turns the modules listed in
COMPILED into C extensions that CPython loads in place of the .py files. On the HTTP path
this cuts the user-space instructions per request by 40-46% (bench/PROFILE.md).

`STEELYARD_COMPILE=0` builds a pure-Python package instead (no C compiler needed);
`STEELYARD_PURE_PYTHON=1` at run time ignores compiled modules that are present (see
src/steelyard/_native.py). `make build` compiles in place for a source checkout.
"""

from __future__ import annotations

import os

from setuptools import setup

# The modules the request path runs through. Only modules whose every name is typed
# precisely enough for mypyc's run-time checks belong here (the test suite runs against the
# compiled build and, with STEELYARD_PURE_PYTHON=1, against the sources).
COMPILED = [
    # HTTP: parse, route, pick, pool, relay, record
    "src/steelyard/core/http1/headers.py",
    "src/steelyard/core/http1/parser.py",
    "src/steelyard/core/routing.py",
    "src/steelyard/core/records.py",
    "src/steelyard/core/load.py",
    "src/steelyard/core/health.py",
    "src/steelyard/core/backend.py",
    "src/steelyard/core/sticky.py",
    "src/steelyard/core/balancing/base.py",
    "src/steelyard/core/balancing/round_robin.py",
    "src/steelyard/core/balancing/least_load.py",
    "src/steelyard/core/balancing/load_index.py",
    "src/steelyard/core/balancing/random_choice.py",
    "src/steelyard/core/balancing/hashing.py",
    "src/steelyard/core/balancing/ring.py",
    "src/steelyard/core/balancing/maglev.py",
    "src/steelyard/net/pool.py",
    "src/steelyard/net/writes.py",
    "src/steelyard/net/timers.py",
    "src/steelyard/net/rawsock.py",
    "src/steelyard/net/transport_table.py",  # uvloop's table of transports, per connection
    "src/steelyard/net/http_proxy.py",
    "src/steelyard/net/http_sticky.py",
    "src/steelyard/net/https_redirect.py",
    "src/steelyard/net/http_tunnel.py",  # WebSocket and CONNECT-style relays
    "src/steelyard/core/websocket.py",
    "src/steelyard/logs.py",
    "src/steelyard/admin/traffic.py",  # the metrics' per-request counters
    # L4
    "src/steelyard/core/proxy_protocol.py",
    "src/steelyard/net/proxy_preface.py",
    "src/steelyard/core/sni.py",
    "src/steelyard/net/tcp_proxy.py",
    "src/steelyard/net/udp_proxy.py",
]


def ext_modules() -> list[object]:
    if os.environ.get("STEELYARD_COMPILE", "1") == "0":
        return []
    from mypyc.build import mypycify

    return list(mypycify(COMPILED, opt_level="3", group_name="steelyard"))


setup(ext_modules=ext_modules())
