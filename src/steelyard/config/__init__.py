"""Steelyard's configuration: YAML -> frozen, validated models (SPEC §2).

    from steelyard.config import load_config, load_config_text, ConfigError, Config

Every problem carries FILE:LINE:COL; see docs/configuration.md for every key.
"""

from __future__ import annotations

from steelyard.config.check import check_command
from steelyard.config.loader import analyse_file, analyse_text, load_config, load_config_text
from steelyard.config.models import (
    ALGORITHM_NAMES,
    Admin,
    Backend,
    BackendConfig,
    BackendTimeouts,
    Certificate,
    Config,
    HeaderRules,
    HealthCheck,
    Listener,
    ListenerConfig,
    ListenerTimeouts,
    ListenerTLS,
    Log,
    Match,
    OutlierDetection,
    Redirect,
    Respond,
    Route,
    RouteConfig,
    Server,
    ServerConfig,
    SniRoute,
    SplitEntry,
    Sticky,
    UpstreamTLS,
)
from steelyard.config.problems import ConfigError, Problem
from steelyard.config.units import parse_duration, parse_size, split_host_port

__all__ = [
    "ALGORITHM_NAMES",
    "Admin",
    "Backend",
    "BackendConfig",
    "BackendTimeouts",
    "Certificate",
    "Config",
    "ConfigError",
    "HeaderRules",
    "HealthCheck",
    "Listener",
    "ListenerConfig",
    "ListenerTLS",
    "ListenerTimeouts",
    "Log",
    "Match",
    "OutlierDetection",
    "Problem",
    "Redirect",
    "Respond",
    "Route",
    "RouteConfig",
    "Server",
    "ServerConfig",
    "SniRoute",
    "SplitEntry",
    "Sticky",
    "UpstreamTLS",
    "analyse_file",
    "analyse_text",
    "check_command",
    "load_config",
    "load_config_text",
    "parse_duration",
    "parse_size",
    "split_host_port",
]
