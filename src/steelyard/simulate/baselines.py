"""Reference lines that exist only in the simulator, never as proxy algorithms.

`modulo` is the naive "hash the key, take it modulo the number of servers" that people often
mean by ip_hash: adding a tenth server to nine remaps about 9 keys in 10, which is why
Steelyard's `ip_hash` is a consistent hash instead. It follows the Balancer factory signature
so the simulator drives it through the same core Backend as the real algorithms.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from hashlib import blake2b

from steelyard.core.balancing import BalancerFactory
from steelyard.core.balancing.base import BalancerSettings, PickContext, ServerState


class ModuloHash:
    """hash(key) mod n over the servers in configuration order; weights ignored."""

    __slots__ = ("servers",)

    def __init__(
        self,
        servers: Sequence[ServerState],
        weights: Sequence[float],
        settings: BalancerSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.servers = list(servers)

    def pick(self, ctx: PickContext) -> ServerState | None:
        servers = self.servers
        if not servers:
            return None
        key = ctx.hash_key if ctx.hash_key is not None else b""
        h = int.from_bytes(blake2b(key, digest_size=8).digest(), "little")
        n = len(servers)
        for probe in range(n):  # on exclusion, walk on to the next index
            state = servers[(h + probe) % n]
            if not ctx.exclude or state.name not in ctx.exclude:
                return state
        return None

    def __repr__(self) -> str:
        return f"ModuloHash({[s.name for s in self.servers]})"


# simulator-only algorithm name -> factory (these route by key, like core HASHING)
BASELINES: dict[str, BalancerFactory] = {"modulo": ModuloHash}
