"""The configuration file as frozen pydantic models (SPEC §2).

Attribute names equal the YAML keys. Durations are float seconds, sizes int bytes, lists
tuples. The models check shape, types and single-field constraints; rules that relate
several fields or sections (unknown backends, bind conflicts, protocol-specific keys, ...)
live in rules.py so that every problem in a file is reported at once.
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from steelyard.config.units import (
    parse_duration,
    parse_size,
    parse_status_ranges,
    split_host_port,
)
from steelyard.core.balancing.maglev import is_prime  # the table size rule Maglev checks

ALGORITHM_NAMES: tuple[str, ...] = (
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "least_response_time",
    "power_of_two",
    "random",
    "ip_hash",
    "consistent_hash",
    "maglev",
)


class FieldProblem(ValueError):
    """Raised by a model validator to point at one of the model's keys, not the model."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _name(value: str) -> str:
    if not value:
        raise ValueError("a name cannot be empty")
    if any(c.isspace() for c in value) or "/" in value:
        raise ValueError(f"invalid name {value!r}: no spaces or '/'")
    return value


def _file(value: str, info: ValidationInfo) -> str:
    """A file we must read: resolved against the config file's directory; must be readable."""
    path = _resolve(value, info)
    if not os.path.isfile(path):
        raise ValueError(f"file {value!r} not found (looked for {path})")
    if not os.access(path, os.R_OK):
        raise ValueError(f"file {value!r} is not readable ({path})")
    return path


def _output_file(value: str, info: ValidationInfo) -> str:
    """A file we append to: resolved as _file(); it must be writable, or creatable in a
    directory that exists (checked when the config is loaded, so that `steelyard check`, a
    start and a reload all refuse a path the process could not open)."""
    path = _resolve(value, info)
    if os.path.isdir(path):
        raise ValueError(f"{value!r} is a directory, not a file ({path})")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise ValueError(f"file {value!r} is not writable ({path})")
        return path
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise ValueError(f"directory {parent!r} does not exist (for {value!r})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot create {value!r}: directory {parent!r} is not writable")
    return path


def _resolve(value: str, info: ValidationInfo) -> str:
    if not value:
        raise ValueError("a file path cannot be empty")
    base = (info.context or {}).get("base_dir") or os.getcwd()
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _bind(value: str) -> str:
    split_host_port(value)
    return value


def _as_tuple(value: Any) -> Any:
    if isinstance(value, str):
        return (value,)
    return value


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Name = Annotated[str, AfterValidator(_name)]
FilePath = Annotated[str, AfterValidator(_file)]
BindAddress = Annotated[str, AfterValidator(_bind)]  # HOST:PORT


class HasBind:
    """`host` and `port` of a model's `bind` (a BindAddress, checked when the model is built)."""

    if typing.TYPE_CHECKING:
        bind: str

    @property
    def host(self) -> str:
        return split_host_port(self.bind)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.bind)[1]


class Model(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        coerce_numbers_to_str=True,
        validate_default=False,
    )

    # sections whose bare key (`health_check:` with nothing after it) means "on, defaults"
    _EMPTY_MEANS_DEFAULTS: typing.ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls._EMPTY_MEANS_DEFAULTS:
            fix = [k for k in cls._EMPTY_MEANS_DEFAULTS if k in data and data[k] is None]
            if fix:
                return {**data, **{k: {} for k in fix}}
        return data


# ---------------------------------------------------------------- admin, log


class Admin(Model, HasBind):
    bind: BindAddress = "127.0.0.1:9901"
    token: str | None = None


class Log(Model):
    access: str | None = None  # None: stdout; "off": no access log; else a file
    format: Literal["json", "text"] = "json"

    @field_validator("access", mode="before")
    @classmethod
    def _special(cls, v: Any) -> Any:
        if v in ("stdout", "-"):
            return None
        if v is False or v == "off":  # YAML reads a bare `off` as false
            return "off"
        return v

    @field_validator("access")
    @classmethod
    def _path(cls, v: str | None, info: ValidationInfo) -> str | None:
        # (one validator, not a Literal["off"] | path union: a bad path gets one message)
        return v if v is None or v == "off" else _output_file(v, info)


# ---------------------------------------------------------------- listeners


class ListenerTimeouts(Model):
    request_head: Duration = 10.0
    idle: Duration = 75.0
    tunnel: Duration = 3600.0


class Certificate(Model):
    cert: FilePath
    key: FilePath

    @model_validator(mode="after")
    def _pair(self) -> Certificate:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            raise FieldProblem(
                "cert", f"cannot load certificate {self.cert} with key {self.key}: {reason}"
            ) from None
        return self


class ListenerTLS(Model):
    certificates: tuple[Certificate, ...] = Field(min_length=1)


class Match(Model):
    host: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None
    method: tuple[str, ...] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    cookies: dict[str, str] = Field(default_factory=dict)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        return v.lower() if v is not None else v

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError(f"path_prefix must start with '/', got {v!r}")
        return v

    @field_validator("path_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {v!r}: {exc}") from None
        return v

    @field_validator("method", mode="before")
    @classmethod
    def _method_before(cls, v: Any) -> Any:
        return _as_tuple(v)

    @field_validator("method")
    @classmethod
    def _method(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        out = tuple(m.upper() for m in v)
        for m in out:
            if not m.isalpha():
                raise ValueError(f"invalid HTTP method {m!r}")
        return out

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        return {k.lower(): val for k, val in v.items()}


class SplitEntry(Model):
    backend: str
    weight: Int = Field(default=1, ge=0, le=1000)


class HeaderRules(Model):
    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: tuple[str, ...] = ()

    @field_validator("remove", mode="before")
    @classmethod
    def _remove(cls, v: Any) -> Any:
        return _as_tuple(v)


class Redirect(Model):
    to: str
    status: Literal[301, 302, 307, 308] = 302


class Respond(Model):
    status: Int = Field(default=200, ge=100, le=599)
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"


class Route(Model):
    _EMPTY_MEANS_DEFAULTS = ("match", "request_headers", "response_headers")

    match: Match = Field(default_factory=Match)
    backend: str | None = None
    split: tuple[SplitEntry, ...] | None = None
    redirect: Redirect | None = None
    respond: Respond | None = None
    request_headers: HeaderRules = Field(default_factory=HeaderRules)
    response_headers: HeaderRules = Field(default_factory=HeaderRules)
    strip_prefix: str | None = None
    rewrite_prefix: str | None = None

    @field_validator("strip_prefix", "rewrite_prefix")
    @classmethod
    def _slash(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError(f"must start with '/', got {v!r}")
        return v


class SniRoute(Model):
    server_name: str
    backend: str

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, v: str) -> str:
        name = v.lower()
        bare = name[2:] if name.startswith("*.") else name
        if not bare or "*" in bare or any(c.isspace() for c in bare):
            raise ValueError(
                f"invalid server_name {v!r}: an exact name or '*.' followed by a domain"
            )
        return name


class Listener(Model, HasBind):
    _EMPTY_MEANS_DEFAULTS = ("timeouts",)

    name: Name
    protocol: Literal["http", "tcp", "udp"] = "http"
    bind: BindAddress
    timeouts: ListenerTimeouts = Field(default_factory=ListenerTimeouts)
    tls: ListenerTLS | None = None
    routes: tuple[Route, ...] = ()
    backend: str | None = None
    sni_routes: tuple[SniRoute, ...] = ()
    accept_proxy_protocol: bool = False
    max_body_size: Size = 0  # 0 = unlimited
    redirect_https: bool = False
    normalize_path: bool = False  # extension: routes match the RFC 3986 normal form of the path
    session_idle_timeout: Duration = 30.0  # udp
    max_sessions: Int = Field(default=10000, ge=1)  # udp


# ---------------------------------------------------------------- backends


class Server(Model):
    address: str
    weight: Int = Field(default=1, ge=0, le=1000)
    name: Name

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data and isinstance(data.get("address"), str):
            return {**data, "name": data["address"].strip()}
        return data

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        split_host_port(v, allow_port_zero=False)
        return v.strip()

    @property
    def host(self) -> str:
        return split_host_port(self.address)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.address)[1]


class HealthCheck(Model):
    type: Literal["http", "tcp"] = "http"
    path: str = "/"
    expect_status: str = "200-399"
    expect_body: str | None = None
    host: str | None = None
    interval: Duration = 5.0
    timeout: Duration = 2.0
    healthy_threshold: Int = Field(default=2, ge=1)
    unhealthy_threshold: Int = Field(default=3, ge=1)

    @field_validator("expect_status", mode="before")
    @classmethod
    def _status(cls, v: Any) -> Any:
        parse_status_ranges(v)
        return str(v)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"path must start with '/', got {v!r}")
        return v

    @property
    def status_ranges(self) -> tuple[tuple[int, int], ...]:
        return parse_status_ranges(self.expect_status)

    def status_ok(self, status: int) -> bool:
        return any(lo <= status <= hi for lo, hi in self.status_ranges)


class OutlierDetection(Model):
    consecutive_failures: Int = Field(default=5, ge=1)
    base_ejection_time: Duration = 30.0
    max_ejection_time: Duration = 300.0
    max_ejection_percent: Int = Field(default=50, ge=0, le=100)


class Sticky(Model):
    cookie: str = "SY_SRV"
    ttl: Duration = 86400.0
    secret: str | None = None

    @field_validator("cookie")
    @classmethod
    def _cookie(cls, v: str) -> str:
        if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", v):
            raise ValueError(f"invalid cookie name {v!r}")
        return v


class UpstreamTLS(Model):
    verify: bool = True
    ca: FilePath | None = None
    server_name: str | None = None


class BackendTimeouts(Model):
    connect: Duration = 5.0
    response: Duration = 60.0
    idle: Duration = 60.0


class Backend(Model):
    _EMPTY_MEANS_DEFAULTS = ("health_check", "outlier_detection", "sticky", "tls", "timeouts")

    name: str = ""  # filled from the key under `backends:`
    algorithm: str = "round_robin"
    servers: tuple[Server, ...] = ()
    health_check: HealthCheck | None = None
    outlier_detection: OutlierDetection | None = None
    hash_on: str = "client_ip"
    sticky: Sticky | None = None
    proxy_protocol: Literal["v1", "v2"] | None = None
    slow_start: Duration | None = None
    panic_threshold: Float = Field(default=50.0, ge=0, le=100)
    drain_timeout: Duration = 30.0
    retries: Int = Field(default=2, ge=0, le=100)
    timeouts: BackendTimeouts = Field(default_factory=BackendTimeouts)
    max_connections_per_server: Int = Field(default=0, ge=0)
    queue_timeout: Duration = 5.0
    max_queue: Int = Field(default=1000, ge=0)
    table_size: Int = 65537
    hash_balance_factor: Int | None = None
    tls: UpstreamTLS | None = None

    @field_validator("algorithm")
    @classmethod
    def _algorithm(cls, v: str) -> str:
        if v not in ALGORITHM_NAMES:
            raise ValueError(_choice_message("algorithm", v, ALGORITHM_NAMES))
        return v

    @field_validator("hash_on")
    @classmethod
    def _hash_on(cls, v: str) -> str:
        kind, sep, arg = v.partition(":")
        if kind in ("client_ip", "path", "sni") and not sep:
            return v
        if kind in ("header", "cookie", "query") and sep and arg:
            return f"header:{arg.lower()}" if kind == "header" else v
        raise ValueError(
            f"invalid hash_on {v!r}: expected client_ip, path, header:NAME, cookie:NAME, "
            "query:NAME or sni"
        )

    @field_validator("table_size")
    @classmethod
    def _table_size(cls, v: int) -> int:
        if not is_prime(v) or v > 10_000_019:
            raise ValueError(
                f"table_size must be a prime number (e.g. 65537, 655373), got {v}"
                if v <= 10_000_019
                else f"table_size {v} is too large (at most 10000019)"
            )
        return v

    @field_validator("hash_balance_factor")
    @classmethod
    def _factor(cls, v: int | None) -> int | None:
        if v is not None and v < 100:
            raise ValueError(
                f"hash_balance_factor must be at least 100 (125 = 1.25 x average load), got {v}"
            )
        return v

    @property
    def hash_kind(self) -> str:
        """client_ip | path | header | cookie | query."""
        return self.hash_on.partition(":")[0]

    @property
    def hash_arg(self) -> str | None:
        return self.hash_on.partition(":")[2] or None


# ---------------------------------------------------------------- top level


class Config(Model):
    _EMPTY_MEANS_DEFAULTS = ("admin", "log")

    version: Int = 1
    shutdown_timeout: Duration = 30.0
    admin: Admin | None = None
    listeners: tuple[Listener, ...] = ()
    backends: dict[str, Backend] = Field(default_factory=dict)
    log: Log = Field(default_factory=Log)

    _source_path: str | None = PrivateAttr(default=None)
    _source_hash: str | None = PrivateAttr(default=None)
    _warnings: tuple[Any, ...] = PrivateAttr(default=())

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"version must be 1 (the only config format so far), got {v}")
        return v

    @field_validator("backends", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {
                k: ({**b, "name": k} if isinstance(b, dict) and isinstance(k, str) else b)
                for k, b in v.items()
            }
        return v

    @property
    def source_path(self) -> str | None:
        """The file this config was loaded from (None for load_config_text)."""
        return self._source_path

    @property
    def source_hash(self) -> str | None:
        """sha256 hex of the file's bytes (of the text for load_config_text)."""
        return self._source_hash

    @property
    def warnings(self) -> tuple[Any, ...]:
        """Lint warnings (Problem objects) found while loading."""
        return self._warnings

    def listener(self, name: str) -> Listener:
        for lst in self.listeners:
            if lst.name == name:
                return lst
        raise KeyError(name)


def _choice_message(key: str, value: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {key} {value!r}{hint}; expected one of: {', '.join(choices)}"


# convenient aliases for code that also has runtime Backend/Server/Listener classes
ListenerConfig = Listener
RouteConfig = Route
BackendConfig = Backend
ServerConfig = Server
