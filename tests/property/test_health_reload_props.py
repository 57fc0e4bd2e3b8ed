"""The reload carry-over rule (Backend.carry_over, docs/health.md) as a property: any old
file, any admin changes, any new file."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from steelyard.core.backend import Backend
from steelyard.core.balancing.base import AdminState, BalancerSettings, PickContext, Server
from steelyard.core.clock import FakeClock
from steelyard.core.load import Lease, Outcome

NAMES = ["a", "b", "c", "d"]
PORTS = [9001, 9002]

entries = st.dictionaries(
    st.sampled_from(NAMES),
    st.tuples(st.sampled_from(PORTS), st.integers(1, 3)),
    max_size=4,
)
admin_ops = st.lists(
    st.tuples(
        st.sampled_from(["drain", "disable", "weight", "remove", "add", "hold"]),
        st.sampled_from([*NAMES, "x", "y"]),
        st.integers(0, 5),
    ),
    max_size=8,
)


def file_servers(entries: dict[str, tuple[int, int]]) -> list[Server]:
    return [Server(n, "127.0.0.1", port, w) for n, (port, w) in sorted(entries.items())]


def backend(servers: list[Server], clock: FakeClock, checked: bool) -> Backend:
    return Backend(
        "api",
        servers,
        BalancerSettings(),
        clock=clock,
        rng=random.Random(0),
        health_checked=checked,
    )


@settings(max_examples=300, deadline=None)
@given(old_file=entries, ops=admin_ops, new_file=entries, checked=st.booleans())
def test_reload_rule(
    old_file: dict[str, tuple[int, int]],
    ops: list[tuple[str, str, int]],
    new_file: dict[str, tuple[int, int]],
    checked: bool,
) -> None:
    clock = FakeClock()
    old = backend(file_servers(old_file), clock, checked)
    for name in list(old.servers):
        old.observe_check(name, True, "ok", 0.0)
    leases: list[Lease] = []
    for op, name, n in ops:
        exists = name in old.servers and not old.servers[name].removed
        if op == "add" and not exists:
            old.add_server(Server(name, "127.0.0.1", PORTS[n % 2], 1 + n % 3))
        elif op == "hold" and exists:
            others = frozenset(s for s in old.servers if s != name)
            lease = old.acquire(PickContext(exclude=others))
            if lease is not None:
                leases.append(lease)
        elif exists and op == "weight":
            old.set_weight(name, n)
        elif exists and op in ("drain", "disable", "remove"):
            getattr(old, {"remove": "remove_server"}.get(op, op))(name)
    old.tick()  # idle removed servers go
    before = {name: (s, s.admin, s.weight, s.removed, s.address) for name, s in old.servers.items()}
    old_entries = dict(old.file_servers)

    new = Backend(
        "api", [], BalancerSettings(), clock=clock, rng=random.Random(1), health_checked=checked
    )
    new_servers = file_servers(new_file)
    new.carry_over(old, new_servers)

    for server in new_servers:
        name = server.name
        prev = before.get(name)
        unchanged = old_entries.get(name) == server
        if prev is None:
            if unchanged:
                assert name not in new.servers  # deleted through the admin API: stays deleted
            else:
                assert name in new.servers and new.servers[name].address == server.address
            continue
        state, admin, weight, removed, address = prev
        got = new.servers[name]
        if address != server.address:
            assert got is not state  # a new server; the old one drains out
            assert got.weight == server.weight and not got.removed
            assert state.removed
            assert (state in new.leaving) == bool(state.active)
        elif unchanged:
            assert got is state
            assert (got.admin, got.weight, got.removed) == (admin, weight, removed)
        else:
            assert got is state  # state kept ...
            assert (got.admin, got.weight, got.removed) == (  # ... and the file wins
                AdminState.ENABLED,
                server.weight,
                False,
            )
    new_names = {s.name for s in new_servers}
    for name, (state, admin, weight, removed, _) in before.items():
        if name in new_names:
            continue
        if name in old_entries:  # the file removed it: drains, listed while busy
            assert state.removed
            assert (name in new.servers) == bool(state.active)
        else:  # added through the admin API: stays as it was
            assert new.servers[name] is state
            assert (state.admin, state.weight, state.removed) == (admin, weight, removed)
    # in-flight leases are released into the new backend
    for lease in leases:
        lease.release(Outcome.OK)
    for state in list(new.servers.values()) + new.leaving:
        assert state.active == 0
