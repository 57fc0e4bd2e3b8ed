"""Scenario files: YAML -> frozen, validated values.

A scenario names the servers (capacity, weight, service-time distribution), events over
virtual time, the workload (arrivals, keys, long-lived connections), the load balancer set-up
(instances, health checks, outlier detection, retries, slow start) and the algorithm entries
to compare. Durations are `250ms`/`2s`/`1m` strings or plain seconds; an event time may also be
a percentage of the run's expected length (`at: 50%`), so a scenario scales with --requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

BUILTIN_NAMES: tuple[str, ...] = (
    "homogeneous",
    "slow-server",
    "mixed-capacity",
    "long-lived",
    "scale-out",
    "hot-key",
    "canary",
)

EVENT_ACTIONS = ("slow", "fail", "recover", "join", "leave", "drain")


class ScenarioError(ValueError):
    """A scenario file (or built-in name) that cannot be used; the message says where."""


# --- values -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Distribution:
    """A service time or connection duration: constant, exponential, lognormal, empirical."""

    kind: str  # constant | exponential | lognormal | empirical
    value: float = 0.0  # constant: the value; exponential: the mean; lognormal: the median
    sigma: float = 0.0  # lognormal: sigma of the underlying normal
    samples: tuple[float, ...] = ()  # empirical: drawn uniformly

    @property
    def mean(self) -> float:
        import math

        if self.kind == "lognormal":
            return self.value * math.exp(self.sigma * self.sigma / 2)
        if self.kind == "empirical":
            return sum(self.samples) / len(self.samples)
        return self.value


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    capacity: int = 1  # concurrent workers; a FIFO queue beyond
    weight: int = 1
    service_time: Distribution = Distribution("exponential", 0.01)


@dataclass(frozen=True, slots=True)
class EventSpec:
    at: float  # seconds, or a fraction of the expected run length when `relative`
    relative: bool
    action: str  # one of EVENT_ACTIONS
    server: str
    factor: float = 1.0  # slow: service times are multiplied by this from now on
    spec: ServerSpec | None = None  # join: the new server


@dataclass(frozen=True, slots=True)
class Arrivals:
    kind: str  # poisson | bursts | trace
    rate: float = 100.0  # per second (bursts: between bursts)
    burst_rate: float = 0.0
    burst_every: float = 0.0
    burst_length: float = 0.0
    trace: Path | None = None  # lines of `time,key,service_time` (seconds)


@dataclass(frozen=True, slots=True)
class Keys:
    count: int = 10000
    distribution: str = "uniform"  # uniform | zipf
    exponent: float = 1.0  # zipf
    hot_fraction: float = 0.0  # this share of requests carries key 0 (the hot key)


@dataclass(frozen=True, slots=True)
class LongLived:
    fraction: float = 0.0  # of arrivals that open a long-lived connection
    duration: Distribution = Distribution("constant", 0.0)


@dataclass(frozen=True, slots=True)
class Workload:
    arrivals: Arrivals = Arrivals("poisson")
    keys: Keys = Keys()
    long_lived: LongLived = LongLived()


@dataclass(frozen=True, slots=True)
class HealthCheckSpec:
    interval: float = 5.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3


@dataclass(frozen=True, slots=True)
class OutlierSpec:
    consecutive_failures: int = 5
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 50


@dataclass(frozen=True, slots=True)
class LbSpec:
    instances: int = 1  # each with its own in-flight view (own ServerState objects)
    retries: int = 0  # on a different server, after a failed attempt
    slow_start: float = 0.0
    connect_failure_time: float = 0.001  # how long a refused connect takes to fail
    health_check: HealthCheckSpec | None = None
    outlier_detection: OutlierSpec | None = None


@dataclass(frozen=True, slots=True)
class AlgorithmEntry:
    """One line of the comparison: a registered algorithm (or a simulator baseline) with
    optional weight overrides and balancer settings, reported under `name`."""

    name: str
    algorithm: str
    weights: str | dict[str, int] | None = None  # None: the servers' weights; "equal": all 1
    hash_balance_factor: int | None = None
    table_size: int | None = None

    def weight_for(self, spec: ServerSpec) -> int:
        if self.weights is None:
            return spec.weight
        if self.weights == "equal":
            return 1
        assert isinstance(self.weights, dict)
        return self.weights.get(spec.name, spec.weight)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str = ""
    rule: str = ""  # the rule of thumb this scenario checks, one line (for the docs)
    advice: str = ""  # the rule explained (for the docs)
    requests: int = 100_000
    seed: int = 1
    servers: tuple[ServerSpec, ...] = ()
    events: tuple[EventSpec, ...] = ()
    workload: Workload = Workload()
    lb: LbSpec = LbSpec()
    algorithms: tuple[AlgorithmEntry, ...] = ()
    source: str = "<string>"
    extra: dict[str, Any] = field(default_factory=dict)

    def all_servers(self) -> tuple[ServerSpec, ...]:
        """Initial servers and those that join later, in order of appearance."""
        joined = tuple(e.spec for e in self.events if e.action == "join" and e.spec is not None)
        return self.servers + joined


# --- parsing ------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|µs|ms|s|m|h)?\s*$")
_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object, where: str) -> float:
    if isinstance(value, bool):
        raise ScenarioError(f"{where}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ScenarioError(f"{where}: a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ScenarioError(f"{where}: expected a duration like 250ms or 2s, got {value!r}")


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _check_keys(d: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    import difflib

    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ScenarioError(f"{where}: unknown key {key!r}{hint}")


def _number(value: object, where: str, *, minimum: float = 0.0, integer: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{where}: expected a number, got {value!r}")
    if integer and not isinstance(value, int):
        raise ScenarioError(f"{where}: expected a whole number, got {value!r}")
    if value < minimum:
        raise ScenarioError(f"{where}: must be at least {minimum:g}, got {value!r}")
    return value


def parse_distribution(value: object, where: str) -> Distribution:
    """`{constant: 10ms}`, `{exponential: 10ms}` (mean), `{lognormal: {median: 10ms,
    sigma: 0.5}}` or `{empirical: [5ms, 10ms, 80ms]}`; a bare duration means constant."""
    if not isinstance(value, dict):
        return Distribution("constant", parse_duration(value, where))
    if len(value) != 1:
        raise ScenarioError(
            f"{where}: give exactly one of constant, exponential, lognormal, empirical"
        )
    ((kind, arg),) = value.items()
    if kind in ("constant", "exponential"):
        return Distribution(kind, parse_duration(arg, f"{where}.{kind}"))
    if kind == "lognormal":
        d = _mapping(arg, f"{where}.lognormal")
        _check_keys(d, ("median", "sigma"), f"{where}.lognormal")
        if "median" not in d:
            raise ScenarioError(f"{where}.lognormal: `median` is required")
        sigma = float(_number(d.get("sigma", 1.0), f"{where}.lognormal.sigma"))
        return Distribution(
            "lognormal", parse_duration(d["median"], f"{where}.lognormal.median"), sigma
        )
    if kind == "empirical":
        if not isinstance(arg, list) or not arg:
            raise ScenarioError(f"{where}.empirical: expected a non-empty list of durations")
        samples = tuple(parse_duration(v, f"{where}.empirical[{i}]") for i, v in enumerate(arg))
        return Distribution("empirical", samples=samples)
    raise ScenarioError(
        f"{where}: unknown distribution {kind!r} (constant, exponential, lognormal, empirical)"
    )


def _server(value: object, where: str) -> ServerSpec:
    d = _mapping(value, where)
    _check_keys(d, ("name", "capacity", "weight", "service_time"), where)
    if "name" not in d or not isinstance(d["name"], str) or not d["name"]:
        raise ScenarioError(f"{where}: `name` is required")
    return ServerSpec(
        name=d["name"],
        capacity=int(_number(d.get("capacity", 1), f"{where}.capacity", minimum=1, integer=True)),
        weight=int(_number(d.get("weight", 1), f"{where}.weight", integer=True)),
        service_time=parse_distribution(
            d.get("service_time", {"exponential": "10ms"}), f"{where}.service_time"
        ),
    )


def _event(value: object, where: str, known: set[str]) -> EventSpec:
    d = _mapping(value, where)
    _check_keys(d, ("at", "action", "server", "factor"), where)
    for key in ("at", "action", "server"):
        if key not in d:
            raise ScenarioError(f"{where}: `{key}` is required")
    action = d["action"]
    if action not in EVENT_ACTIONS:
        raise ScenarioError(f"{where}.action: expected one of {', '.join(EVENT_ACTIONS)}")
    at_raw = d["at"]
    if isinstance(at_raw, str) and at_raw.strip().endswith("%"):
        try:
            at, relative = float(at_raw.strip()[:-1]) / 100.0, True
        except ValueError:
            raise ScenarioError(f"{where}.at: bad percentage {at_raw!r}") from None
    else:
        at, relative = parse_duration(at_raw, f"{where}.at"), False
    spec: ServerSpec | None = None
    if action == "join":
        spec = _server(d["server"], f"{where}.server")
        if spec.name in known:
            raise ScenarioError(f"{where}.server: a server named {spec.name!r} already exists")
        name = spec.name
        known.add(name)
    else:
        name = d["server"]
        if name not in known:
            raise ScenarioError(f"{where}.server: no server named {name!r}")
    factor = 1.0
    if action == "slow":
        factor = float(_number(d.get("factor", 1.0), f"{where}.factor"))
        if factor <= 0:
            raise ScenarioError(f"{where}.factor: must be positive")
    elif "factor" in d:
        raise ScenarioError(f"{where}.factor: only for action slow")
    return EventSpec(at, relative, action, name, factor, spec)


def _workload(value: object, where: str, base: Path | None) -> Workload:
    d = _mapping(value, where)
    _check_keys(d, ("arrivals", "keys", "long_lived"), where)
    arrivals = Arrivals("poisson")
    if "arrivals" in d:
        a = _mapping(d["arrivals"], f"{where}.arrivals")
        _check_keys(a, ("poisson", "bursts", "trace"), f"{where}.arrivals")
        if len(a) != 1:
            raise ScenarioError(f"{where}.arrivals: give exactly one of poisson, bursts, trace")
        ((kind, arg),) = a.items()
        w = f"{where}.arrivals.{kind}"
        if kind == "poisson":
            arrivals = Arrivals("poisson", rate=float(_number(arg, w)))
        elif kind == "bursts":
            b = _mapping(arg, w)
            _check_keys(b, ("rate", "burst_rate", "every", "length"), w)
            arrivals = Arrivals(
                "bursts",
                rate=float(_number(b.get("rate", 100), f"{w}.rate")),
                burst_rate=float(_number(b.get("burst_rate", 1000), f"{w}.burst_rate")),
                burst_every=parse_duration(b.get("every", "10s"), f"{w}.every"),
                burst_length=parse_duration(b.get("length", "1s"), f"{w}.length"),
            )
        else:
            if not isinstance(arg, str):
                raise ScenarioError(f"{w}: expected a file name")
            path = Path(arg)
            if not path.is_absolute() and base is not None:
                path = base / path
            arrivals = Arrivals("trace", trace=path)
        if arrivals.kind != "trace" and arrivals.rate <= 0:
            raise ScenarioError(f"{w}: the rate must be positive")
    keys = Keys()
    if "keys" in d:
        k = _mapping(d["keys"], f"{where}.keys")
        w = f"{where}.keys"
        _check_keys(k, ("count", "distribution", "exponent", "hot_fraction"), w)
        dist = k.get("distribution", "uniform")
        if dist not in ("uniform", "zipf"):
            raise ScenarioError(f"{w}.distribution: expected uniform or zipf")
        hot = float(_number(k.get("hot_fraction", 0.0), f"{w}.hot_fraction"))
        if hot > 1:
            raise ScenarioError(f"{w}.hot_fraction: at most 1")
        keys = Keys(
            count=int(_number(k.get("count", 10000), f"{w}.count", minimum=1, integer=True)),
            distribution=dist,
            exponent=float(_number(k.get("exponent", 1.0), f"{w}.exponent")),
            hot_fraction=hot,
        )
    long_lived = LongLived()
    if "long_lived" in d:
        ll = _mapping(d["long_lived"], f"{where}.long_lived")
        w = f"{where}.long_lived"
        _check_keys(ll, ("fraction", "duration"), w)
        frac = float(_number(ll.get("fraction", 0.0), f"{w}.fraction"))
        if frac > 1:
            raise ScenarioError(f"{w}.fraction: at most 1")
        long_lived = LongLived(frac, parse_distribution(ll.get("duration", "30s"), f"{w}.duration"))
    return Workload(arrivals, keys, long_lived)


def _lb(value: object, where: str) -> LbSpec:
    d = _mapping(value, where)
    _check_keys(
        d,
        (
            "instances",
            "retries",
            "slow_start",
            "connect_failure_time",
            "health_check",
            "outlier_detection",
        ),
        where,
    )
    hc = None
    if d.get("health_check") is not None:
        h = _mapping(d["health_check"], f"{where}.health_check")
        w = f"{where}.health_check"
        _check_keys(h, ("interval", "healthy_threshold", "unhealthy_threshold"), w)
        hc = HealthCheckSpec(
            interval=parse_duration(h.get("interval", "5s"), f"{w}.interval"),
            healthy_threshold=int(
                _number(h.get("healthy_threshold", 2), f"{w}.healthy_threshold", minimum=1)
            ),
            unhealthy_threshold=int(
                _number(h.get("unhealthy_threshold", 3), f"{w}.unhealthy_threshold", minimum=1)
            ),
        )
        if hc.interval <= 0:
            raise ScenarioError(f"{w}.interval: must be positive")
    od = None
    if d.get("outlier_detection") is not None:
        o = _mapping(d["outlier_detection"], f"{where}.outlier_detection")
        w = f"{where}.outlier_detection"
        _check_keys(o, ("consecutive_failures", "base_ejection_time", "max_ejection_percent"), w)
        od = OutlierSpec(
            consecutive_failures=int(
                _number(o.get("consecutive_failures", 5), f"{w}.consecutive_failures", minimum=1)
            ),
            base_ejection_time=parse_duration(
                o.get("base_ejection_time", "30s"), f"{w}.base_ejection_time"
            ),
            max_ejection_percent=int(
                _number(o.get("max_ejection_percent", 50), f"{w}.max_ejection_percent")
            ),
        )
    return LbSpec(
        instances=int(
            _number(d.get("instances", 1), f"{where}.instances", minimum=1, integer=True)
        ),
        retries=int(_number(d.get("retries", 0), f"{where}.retries", integer=True)),
        slow_start=parse_duration(d.get("slow_start", 0), f"{where}.slow_start"),
        connect_failure_time=parse_duration(
            d.get("connect_failure_time", "1ms"), f"{where}.connect_failure_time"
        ),
        health_check=hc,
        outlier_detection=od,
    )


def _algorithm(value: object, where: str, servers: set[str]) -> AlgorithmEntry:
    if isinstance(value, str):
        return AlgorithmEntry(name=value, algorithm=value)
    d = _mapping(value, where)
    _check_keys(d, ("name", "algorithm", "weights", "hash_balance_factor", "table_size"), where)
    algorithm = d.get("algorithm", d.get("name"))
    if not isinstance(algorithm, str):
        raise ScenarioError(f"{where}: `algorithm` is required")
    name = d.get("name", algorithm)
    if not isinstance(name, str):
        raise ScenarioError(f"{where}.name: expected a string")
    weights = d.get("weights")
    if weights is not None and weights != "equal":
        wd = _mapping(weights, f"{where}.weights")
        for key, w in wd.items():
            if key not in servers:
                raise ScenarioError(f"{where}.weights: no server named {key!r}")
            _number(w, f"{where}.weights.{key}", integer=True)
        weights = dict(wd)
    hbf = d.get("hash_balance_factor")
    if hbf is not None:
        hbf = int(_number(hbf, f"{where}.hash_balance_factor", minimum=100, integer=True))
    ts = d.get("table_size")
    if ts is not None:
        ts = int(_number(ts, f"{where}.table_size", minimum=1, integer=True))
    return AlgorithmEntry(name, algorithm, weights, hbf, ts)


_TOP = (
    "name",
    "description",
    "rule",
    "advice",
    "requests",
    "seed",
    "servers",
    "events",
    "workload",
    "lb",
    "algorithms",
)


def parse_scenario(data: object, source: str = "<string>", base: Path | None = None) -> Scenario:
    """Validate a scenario document (already parsed YAML)."""
    d = _mapping(data, source)
    _check_keys(d, _TOP, source)
    servers_raw = d.get("servers")
    if not isinstance(servers_raw, list) or not servers_raw:
        raise ScenarioError(f"{source}: `servers` must be a non-empty list")
    servers = tuple(_server(s, f"{source}: servers[{i}]") for i, s in enumerate(servers_raw))
    known: set[str] = set()
    for s in servers:
        if s.name in known:
            raise ScenarioError(f"{source}: two servers are named {s.name!r}")
        known.add(s.name)
    events_raw = d.get("events") or []
    if not isinstance(events_raw, list):
        raise ScenarioError(f"{source}: `events` must be a list")
    events = tuple(_event(e, f"{source}: events[{i}]", known) for i, e in enumerate(events_raw))
    algos_raw = d.get("algorithms") or []
    if not isinstance(algos_raw, list):
        raise ScenarioError(f"{source}: `algorithms` must be a list")
    algorithms = tuple(
        _algorithm(a, f"{source}: algorithms[{i}]", known) for i, a in enumerate(algos_raw)
    )
    names = [a.name for a in algorithms]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{source}: algorithm entry names must be unique")
    return Scenario(
        name=str(d.get("name", Path(source).stem)),
        description=str(d.get("description", "")).strip(),
        rule=str(d.get("rule", "")).strip(),
        advice=str(d.get("advice", "")).strip(),
        requests=int(_number(d.get("requests", 100_000), f"{source}: requests", minimum=1)),
        seed=int(_number(d.get("seed", 1), f"{source}: seed", integer=True)),
        servers=servers,
        events=events,
        workload=_workload(d.get("workload", {}), f"{source}: workload", base),
        lb=_lb(d.get("lb", {}), f"{source}: lb"),
        algorithms=algorithms,
        source=source,
    )


def load_scenario_text(text: str, source: str = "<string>", base: Path | None = None) -> Scenario:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source}: not valid YAML: {exc}") from None
    return parse_scenario(data, source, base)


def builtin_text(name: str) -> str:
    return (
        resources.files("steelyard.simulate")
        .joinpath("scenarios", f"{name}.yaml")
        .read_text(encoding="utf-8")
    )


def load_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a YAML file."""
    if name_or_path in BUILTIN_NAMES:
        return load_scenario_text(builtin_text(name_or_path), f"{name_or_path}.yaml")
    path = Path(name_or_path)
    if not path.is_file():
        raise ScenarioError(
            f"{name_or_path}: no such file and not a built-in scenario ({', '.join(BUILTIN_NAMES)})"
        )
    return load_scenario_text(path.read_text(encoding="utf-8"), str(path), path.parent)
