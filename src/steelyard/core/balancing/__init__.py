"""Every balancing algorithm, behind one Balancer interface (see base.py)."""

from __future__ import annotations

from steelyard.core.balancing.base import (
    Balancer,
    BalancerFactory,
    BalancerSettings,
    PickContext,
    Server,
    ServerState,
)
from steelyard.core.balancing.least_load import LeastConnections, LeastResponseTime, PowerOfTwo
from steelyard.core.balancing.maglev import Maglev
from steelyard.core.balancing.random_choice import WeightedRandom
from steelyard.core.balancing.ring import ConsistentHash, IpHash
from steelyard.core.balancing.round_robin import SmoothWeightedRoundRobin

# algorithm name (SPEC §2) -> factory
ALGORITHMS: dict[str, BalancerFactory] = {
    "round_robin": SmoothWeightedRoundRobin,
    "weighted_round_robin": SmoothWeightedRoundRobin,
    "least_connections": LeastConnections,
    "least_response_time": LeastResponseTime,
    "power_of_two": PowerOfTwo,
    "random": WeightedRandom,
    "ip_hash": IpHash,
    "consistent_hash": ConsistentHash,
    "maglev": Maglev,
}

# algorithms whose snapshot is slow to build in Python: built off the event loop
SLOW_BUILD: frozenset[str] = frozenset({"maglev", "consistent_hash", "ip_hash"})

# algorithms that use a hash key (PickContext.hash_key)
HASHING: frozenset[str] = frozenset({"ip_hash", "consistent_hash", "maglev"})


def factory_for(algorithm: str) -> BalancerFactory:
    try:
        return ALGORITHMS[algorithm]
    except KeyError:
        raise ValueError(f"unknown algorithm {algorithm!r}") from None


__all__ = [
    "ALGORITHMS",
    "HASHING",
    "SLOW_BUILD",
    "Balancer",
    "ConsistentHash",
    "IpHash",
    "LeastConnections",
    "LeastResponseTime",
    "Maglev",
    "PowerOfTwo",
    "SmoothWeightedRoundRobin",
    "WeightedRandom",
    "BalancerFactory",
    "BalancerSettings",
    "PickContext",
    "Server",
    "ServerState",
    "factory_for",
]
