"""Loading valid configs: the SPEC §2 example, defaults, env interpolation, the file hash."""

from __future__ import annotations

import hashlib
import pathlib
import re

import pydantic
import pytest
import trustme

from steelyard.config import (
    Backend,
    Config,
    ConfigError,
    Listener,
    load_config,
    load_config_text,
)
from steelyard.config.loader import analyse_text

SPEC = pathlib.Path("/work/shared/SPEC.md")

# backends the SPEC example's routes name but do not define
EXTRA_BACKENDS = """\
  static:
    servers: [{address: 10.0.1.1:80}]
  ws:
    servers: [{address: 10.0.2.1:80}]
  api_v2:
    servers: [{address: 10.0.3.1:80}]
  redis:
    servers: [{address: 10.0.4.1:6379}]
  a:
    servers: [{address: 10.0.5.1:443}]
  b:
    servers: [{address: 10.0.6.1:443}]
  resolvers:
    servers: [{address: 10.0.7.1:53}]
"""


def spec_example() -> str:
    if SPEC.exists():
        m = re.search(r"## 2\. Configuration file.*?```yaml\n(.*?)```", SPEC.read_text(), re.S)
        assert m is not None
        return m.group(1)
    pytest.skip("SPEC.md not available")


@pytest.fixture
def spec_file(tmp_path: pathlib.Path) -> pathlib.Path:
    ca = trustme.CA()
    cert = ca.issue_cert("example.com", "*.example.com")
    (tmp_path / "certs").mkdir()
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "certs/example.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "certs/example.key"))
    path = tmp_path / "steelyard.yaml"
    path.write_text(spec_example() + EXTRA_BACKENDS)
    return path


def test_spec_example_round_trip(spec_file: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEELYARD_ADMIN_TOKEN", raising=False)
    config = load_config(spec_file)
    assert isinstance(config, Config)
    assert config.version == 1
    assert config.shutdown_timeout == 30.0
    assert config.admin is not None
    assert (config.admin.bind, config.admin.host, config.admin.port) == (
        "127.0.0.1:9901",
        "127.0.0.1",
        9901,
    )
    assert config.admin.token == ""  # ${STEELYARD_ADMIN_TOKEN:-} with the variable unset

    web, cache, passthrough, dns = config.listeners
    assert isinstance(web, Listener)
    assert (web.name, web.protocol, web.bind, web.host, web.port) == (
        "web",
        "http",
        "0.0.0.0:8080",
        "0.0.0.0",
        8080,
    )
    assert (web.timeouts.request_head, web.timeouts.idle) == (10.0, 75.0)
    assert web.tls is not None
    (pair,) = web.tls.certificates
    assert pair.cert == str(spec_file.parent / "certs/example.pem")  # resolved beside the file
    assert pair.key == str(spec_file.parent / "certs/example.key")
    assert isinstance(web.routes, tuple) and len(web.routes) == 5
    assert web.routes[0].match.path_prefix == "/api/" and web.routes[0].backend == "api"
    assert web.routes[1].match.host == "static.example.com"
    assert web.routes[3].match.headers == {"x-canary": "on"}
    split = web.routes[4].split
    assert split is not None
    assert [(s.backend, s.weight) for s in split] == [("api", 90), ("api_v2", 10)]

    assert (cache.protocol, cache.backend, cache.accept_proxy_protocol) == ("tcp", "redis", False)
    assert [(r.server_name, r.backend) for r in passthrough.sni_routes] == [
        ("a.example.com", "a"),
        ("*.example.com", "b"),
    ]
    assert passthrough.backend == "a"
    assert (dns.protocol, dns.backend, dns.port) == ("udp", "resolvers", 5353)

    assert list(config.backends)[:1] == ["api"]  # order kept
    api = config.backends["api"]
    assert isinstance(api, Backend)
    assert api.name == "api"
    assert api.algorithm == "least_connections"
    assert [(s.address, s.weight, s.name, s.host, s.port) for s in api.servers] == [
        ("10.0.0.1:8080", 1, "10.0.0.1:8080", "10.0.0.1", 8080),
        ("10.0.0.2:8080", 4, "big-1", "10.0.0.2", 8080),
    ]
    hc = api.health_check
    assert hc is not None
    assert (hc.type, hc.path, hc.expect_status, hc.interval, hc.timeout) == (
        "http",
        "/health",
        "200-399",
        5.0,
        2.0,
    )
    assert (hc.healthy_threshold, hc.unhealthy_threshold) == (2, 3)
    assert hc.status_ranges == ((200, 399),)
    assert hc.status_ok(204) and not hc.status_ok(404)
    od = api.outlier_detection
    assert od is not None
    assert (od.consecutive_failures, od.base_ejection_time, od.max_ejection_percent) == (
        5,
        30.0,
        50,
    )
    assert api.hash_on == "client_ip" and api.hash_kind == "client_ip" and api.hash_arg is None
    assert api.sticky is not None and (api.sticky.cookie, api.sticky.ttl) == ("SY_SRV", 86400.0)
    assert api.proxy_protocol == "v2"
    assert (api.slow_start, api.drain_timeout, api.retries) == (30.0, 30.0, 2)
    assert (api.timeouts.connect, api.timeouts.response, api.timeouts.idle) == (5.0, 60.0, 60.0)
    assert (api.max_connections_per_server, api.table_size, api.hash_balance_factor) == (
        0,
        65537,
        125,
    )

    assert config.source_path == str(spec_file)
    assert config.source_hash == hashlib.sha256(spec_file.read_bytes()).hexdigest()
    assert config.log.access is None and config.log.format == "json"


def test_spec_example_as_given_reports_only_missing_backends(tmp_path: pathlib.Path) -> None:
    """The SPEC example names backends it does not define; nothing else is wrong with it."""
    (tmp_path / "certs").mkdir()
    ca = trustme.CA()
    cert = ca.issue_cert("example.com")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "certs/example.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "certs/example.key"))
    text = spec_example()
    _c, errors, _w = analyse_text(text, "s.yaml", base_dir=str(tmp_path), env={})
    assert errors
    assert all("unknown backend" in p.message for p in errors), errors


def test_defaults() -> None:
    config = load_config_text(
        """
listeners:
  - name: web
    bind: 127.0.0.1:0
    routes: [{backend: api}]
  - {name: dns, protocol: udp, bind: 127.0.0.1:0, backend: api}
backends:
  api:
    servers: [{address: 127.0.0.1:9000}]
    health_check: {}
    outlier_detection: {}
    sticky: {}
"""
    )
    assert config.version == 1
    assert config.shutdown_timeout == 30.0
    assert config.admin is None
    assert config.log.access is None
    web, dns = config.listeners
    assert web.protocol == "http"
    assert (web.timeouts.request_head, web.timeouts.idle, web.timeouts.tunnel) == (
        10.0,
        75.0,
        3600.0,
    )
    assert web.max_body_size == 0 and web.tls is None and web.redirect_https is False
    assert web.routes[0].match.path_prefix is None
    assert web.routes[0].request_headers.set == {} and web.routes[0].response_headers.remove == ()
    assert (dns.session_idle_timeout, dns.max_sessions) == (30.0, 10000)
    api = config.backends["api"]
    assert api.algorithm == "round_robin"
    assert (api.retries, api.drain_timeout, api.queue_timeout, api.max_queue) == (
        2,
        30.0,
        5.0,
        1000,
    )
    assert (api.timeouts.connect, api.timeouts.response, api.timeouts.idle) == (5.0, 60.0, 60.0)
    assert api.max_connections_per_server == 0 and api.table_size == 65537
    assert api.hash_balance_factor is None and api.slow_start is None and api.tls is None
    assert api.panic_threshold == 50.0 and api.proxy_protocol is None
    assert api.hash_on == "client_ip"
    hc = api.health_check
    assert hc is not None
    assert (hc.type, hc.path, hc.expect_status, hc.expect_body, hc.host) == (
        "http",
        "/",
        "200-399",
        None,
        None,
    )
    assert (hc.interval, hc.timeout, hc.healthy_threshold, hc.unhealthy_threshold) == (
        5.0,
        2.0,
        2,
        3,
    )
    od = api.outlier_detection
    assert od is not None
    assert (od.consecutive_failures, od.base_ejection_time, od.max_ejection_time) == (
        5,
        30.0,
        300.0,
    )
    assert od.max_ejection_percent == 50
    assert api.sticky is not None and (api.sticky.cookie, api.sticky.ttl) == ("SY_SRV", 86400.0)
    (server,) = api.servers
    assert (server.weight, server.name) == (1, "127.0.0.1:9000")


def test_absent_sections_are_none_and_bare_keys_mean_defaults() -> None:
    config = load_config_text("admin:\nbackends:\n  b:\n    servers: []\n    health_check:\n")
    assert config.admin is not None and config.admin.bind == "127.0.0.1:9901"
    assert config.backends["b"].health_check is not None
    assert config.backends["b"].outlier_detection is None
    assert load_config_text("version: 1\n").admin is None


def test_models_are_frozen_and_lists_are_tuples() -> None:
    config = load_config_text(
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, routes: [{backend: b, match: {method: [get, POST]}}]}\n"
        "backends:\n  b:\n    servers: [{address: '[::1]:80'}]\n"
    )
    with pytest.raises(pydantic.ValidationError):
        config.shutdown_timeout = 1.0  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.listeners[0].name = "x"  # type: ignore[misc]
    assert isinstance(config.listeners, tuple)
    assert config.listeners[0].routes[0].match.method == ("GET", "POST")
    server = config.backends["b"].servers[0]
    assert (server.host, server.port, server.name) == ("::1", 80, "[::1]:80")


def test_method_as_a_single_string() -> None:
    config = load_config_text(
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, routes: [{backend: b, match: {method: get}}]}\n"
        "backends:\n  b:\n    servers: [{address: 1.2.3.4:80}]\n"
    )
    assert config.listeners[0].routes[0].match.method == ("GET",)


def test_hash_on_forms() -> None:
    for value, kind, arg in [
        ("client_ip", "client_ip", None),
        ("path", "path", None),
        ("header:X-User", "header", "x-user"),
        ("cookie:session", "cookie", "session"),
        ("query:id", "query", "id"),
    ]:
        config = load_config_text(
            f"backends:\n  b:\n    algorithm: maglev\n    hash_on: '{value}'\n    servers: [{{address: 1.2.3.4:80}}]\n"
        )
        b = config.backends["b"]
        assert (b.hash_kind, b.hash_arg) == (kind, arg)


def test_sizes_and_durations_in_the_file() -> None:
    config = load_config_text(
        "shutdown_timeout: 1m30s\n"
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, max_body_size: 1MiB, routes: [{backend: b}],\n"
        "     timeouts: {request_head: 250ms, idle: 1h}}\n"
        "backends:\n  b:\n    slow_start: 1d\n    servers: [{address: 1.2.3.4:80}]\n"
    )
    assert config.shutdown_timeout == 90.0
    web = config.listeners[0]
    assert web.max_body_size == 1048576
    assert (web.timeouts.request_head, web.timeouts.idle) == (0.25, 3600.0)
    assert config.backends["b"].slow_start == 86400.0


# ---------------------------------------------------------------- environment


def test_env_interpolation() -> None:
    text = (
        "shutdown_timeout: ${GRACE}\n"
        "admin: {bind: '${ADMIN_HOST:-127.0.0.1}:${ADMIN_PORT:-9901}', token: '${TOKEN}'}\n"
        "backends:\n  b:\n    servers:\n"
        "      - {address: '${UP}:80', weight: '${W:-3}'}\n"
        "      - {address: 10.0.0.9:80, name: 'price-$${NOT_ENV}'}\n"
    )
    env = {"GRACE": "45s", "TOKEN": "12345", "UP": "10.0.0.7", "ADMIN_PORT": ""}
    config = load_config_text(text, env=env)
    assert config.shutdown_timeout == 45.0
    assert config.admin is not None
    assert config.admin.bind == "127.0.0.1:9901"  # empty ADMIN_PORT takes the default too
    assert config.admin.token == "12345"  # stays a string
    s1, s2 = config.backends["b"].servers
    assert (s1.address, s1.weight) == ("10.0.0.7:80", 3)
    assert s2.name == "price-${NOT_ENV}"


def test_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SY_TEST_GRACE", "7s")
    assert load_config_text("shutdown_timeout: ${SY_TEST_GRACE}\n").shutdown_timeout == 7.0


def test_env_unset_is_an_error_naming_variable_and_position() -> None:
    text = "version: 1\nadmin:\n  bind: 127.0.0.1:9901\n  token: ${MISSING_TOKEN}\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "c.yaml", env={})
    assert [str(p) for p in info.value.problems] == [
        "c.yaml:4:10: environment variable MISSING_TOKEN is not set "
        "(use ${MISSING_TOKEN:-default} to give a default)"
    ]


def test_env_error_column_inside_a_string() -> None:
    text = 'admin:\n  bind: "127.0.0.1:${NOPE}"\n'
    _c, errors, _w = analyse_text(text, "c.yaml", env={})
    assert [(p.line, p.col) for p in errors] == [(2, 20)]
    assert "NOPE" in errors[0].message


def test_env_malformed_references() -> None:
    _c, errors, _w = analyse_text("admin: {token: '${1BAD}', bind: '${OPEN'}\n", "c.yaml", env={})
    messages = sorted(p.message for p in errors)
    assert messages[0].startswith("invalid variable reference '${1BAD}'")
    assert messages[1].startswith("unterminated '${'")


def test_env_is_not_applied_to_keys_or_numbers() -> None:
    config = load_config_text("backends:\n  b:\n    retries: 3\n    servers: []\n", env={})
    assert config.backends["b"].retries == 3


# ---------------------------------------------------------------- YAML features


def test_anchors_and_merge_keys() -> None:
    text = (
        "x-common: &common\n  retries: 5\n  timeouts: {connect: 1s}\n"
        "backends:\n  a:\n    <<: *common\n    retries: 1\n    servers: [{address: 1.1.1.1:80}]\n"
    )
    # top-level x-* keys hold anchors and are otherwise ignored
    config = load_config_text(text)
    assert config.backends["a"].retries == 1
    assert config.backends["a"].timeouts.connect == 1.0
    text = (
        "backends:\n  a: &a\n    retries: 5\n    timeouts: {connect: 1s}\n    servers: [{address: 1.1.1.1:80}]\n"
        "  b:\n    <<: *a\n    retries: 1\n"
    )
    config = load_config_text(text)
    assert config.backends["b"].retries == 1
    assert config.backends["b"].timeouts.connect == 1.0
    assert config.backends["b"].name == "b"


def test_source_hash_for_text() -> None:
    text = "version: 1\n"
    config = load_config_text(text)
    assert config.source_hash == hashlib.sha256(text.encode()).hexdigest()
    assert config.source_path is None


def test_load_config_relative_paths_resolve_beside_the_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "logs").mkdir()
    path = tmp_path / "c.yaml"
    path.write_text("log: {access: logs/access.log, format: text}\n")
    config = load_config(path)
    assert config.log.access == str(tmp_path / "logs/access.log")
    assert config.log.format == "text"


def test_log_access_stdout() -> None:
    assert load_config_text("log: {access: stdout}\n").log.access is None
    assert load_config_text("log: {access: '-'}\n").log.access is None


def test_http_listener_backend_shorthand() -> None:
    config = load_config_text(
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, backend: b}\n"
        "backends:\n  b:\n    servers: [{address: 1.2.3.4:80}]\n"
    )
    assert config.listeners[0].backend == "b" and config.listeners[0].routes == ()
    assert config.warnings == ()


def test_config_error_is_raised_with_problems() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("version: 3\n", "x.yaml")
    assert (
        str(info.value) == "x.yaml:1:10: version must be 1 (the only config format so far), got 3"
    )
    assert info.value.problems[0].line == 1


def test_hash_on_accepts_sni_for_tls_passthrough() -> None:
    from steelyard.config import load_config_text

    config = load_config_text(
        "version: 1\nlisteners:\n  - name: t\n    protocol: tcp\n    bind: 127.0.0.1:0\n"
        "    sni_routes:\n      - {server_name: a.example.com, backend: b}\n"
        "backends:\n  b:\n    algorithm: maglev\n    hash_on: sni\n"
        "    servers:\n      - {address: 127.0.0.1:9}\n"
    )
    assert config.backends["b"].hash_on == "sni"


def test_access_log_off_is_kept_as_off_not_a_file_path() -> None:
    from steelyard.config import load_config_text

    base = (
        "version: 1\nlisteners:\n  - name: t\n    protocol: tcp\n    bind: 127.0.0.1:0\n"
        "    backend: b\nbackends:\n  b:\n    servers:\n      - {address: 127.0.0.1:9}\n"
    )
    for spelled in ("off", '"off"', "'off'"):
        config = load_config_text(base + f"log:\n  access: {spelled}\n")
        assert config.log.access == "off"
    assert load_config_text(base + "log:\n  access: stdout\n").log.access is None
