"""Every config error names FILE:LINE:COL at the offending key or value and says what is wrong.

Positions are computed from the YAML text with `at(text, needle)` (1-based line:col of the
first occurrence of needle, or the n-th), so each test states *which token* is blamed.
"""

from __future__ import annotations

import os
import pathlib
import textwrap

import pytest
from tests.helpers.yaml_text import at

from steelyard.config import ConfigError, load_config, load_config_text
from steelyard.config.loader import analyse_text

BACKENDS = """\
backends:
  api:
    servers: [{address: 10.0.0.1:80}]
  static:
    servers: [{address: 10.0.0.2:80}]
"""


def atq(text: str, needle: str, nth: int = 0) -> str:
    """Position of a single-quoted scalar: YAML marks it at the opening quote."""
    return at(text, f"'{needle}'", nth)


def errors(text: str, **kw: object) -> list[str]:
    _config, errs, _warnings = analyse_text(text, "c.yaml", **kw)  # type: ignore[arg-type]
    return [str(p) for p in errs]


def http(routes: str, extra: str = "") -> str:
    return (
        "version: 1\nlisteners:\n  - name: web\n    bind: 127.0.0.1:8080\n"
        + extra
        + "    routes:\n"
        + textwrap.indent(textwrap.dedent(routes), "      ")
        + BACKENDS
    )


# ---------------------------------------------------------------- syntax, top level


def test_yaml_syntax_error_is_one_problem_with_yaml_position() -> None:
    text = "version: 1\nlisteners:\n  - name: web\n   bind: [oops\n"
    errs = errors(text)
    assert len(errs) == 1
    assert errs[0].startswith("c.yaml:4:")
    assert "YAML syntax error" in errs[0]


def test_tab_indentation_is_a_syntax_error() -> None:
    errs = errors("version: 1\nbackends:\n\tapi: {}\n")
    assert len(errs) == 1 and errs[0].startswith("c.yaml:3:1: YAML syntax error")


def test_empty_file() -> None:
    assert errors("") == [
        "c.yaml:1:1: the config is empty: expected a mapping with version, listeners and backends"
    ]
    assert errors("# only a comment\n")[0].startswith("c.yaml:1:1: the config is empty")


def test_top_level_not_a_mapping() -> None:
    errs = errors("- a\n- b\n")
    assert errs == [
        "c.yaml:1:1: the top level must be a mapping (version, listeners, backends, ...), got a list"
    ]
    assert "got str 'hello'" in errors("hello\n")[0] or "got 'hello'" in errors("hello\n")[0]


def test_duplicate_yaml_key() -> None:
    text = "version: 1\nbackends: {}\nversion: 1\n"
    assert (
        f"c.yaml:{at(text, 'version', 1)}: duplicate key 'version' (first given on line 1)"
        in errors(text)
    )


def test_version_must_be_1() -> None:
    text = "version: 2\n"
    assert errors(text) == [
        f"c.yaml:{at(text, '2')}: version must be 1 (the only config format so far), got 2"
    ]


# ---------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_did_you_mean() -> None:
    text = "version: 1\nshutdown_timout: 30s\n"
    assert errors(text) == [
        f"c.yaml:{at(text, 'shutdown_timout')}: unknown key 'shutdown_timout' in the top level "
        "(did you mean 'shutdown_timeout'?)"
    ]


def test_unknown_nested_key_did_you_mean() -> None:
    text = (
        "backends:\n  api:\n    servers: [{address: 10.0.0.1:80}]\n"
        "    health_check:\n      intervall: 5s\n"
    )
    assert errors(text) == [
        f"c.yaml:{at(text, 'intervall')}: unknown key 'intervall' in backends.api.health_check "
        "(did you mean 'interval'?)"
    ]


def test_unknown_key_that_belongs_in_a_subsection() -> None:
    text = "backends:\n  api:\n    servers: [{address: 10.0.0.1:80}]\n    unhealthy_threshold: 3\n"
    (err,) = errors(text)
    assert err.startswith(
        f"c.yaml:{at(text, 'unhealthy_threshold')}: unknown key 'unhealthy_threshold'"
    )
    assert "belongs under 'health_check'" in err


def test_unknown_key_without_close_match_lists_keys() -> None:
    text = "backends:\n  api:\n    servers: [{address: 10.0.0.1:80, zzz: 1}]\n"
    (err,) = errors(text)
    assert err == (
        f"c.yaml:{at(text, 'zzz')}: unknown key 'zzz' in backends.api.servers[0]; "
        "expected one of: address, weight, name"
    )


def test_unknown_key_in_route_match() -> None:
    text = http("- match: {path_prefx: /}\n  backend: api\n")
    (err,) = errors(text)
    assert err.startswith(f"c.yaml:{at(text, 'path_prefx')}: unknown key 'path_prefx'")
    assert "did you mean 'path_prefix'?" in err


def test_backend_name_key_is_refused() -> None:
    text = "backends:\n  api:\n    name: other\n    servers: [{address: 10.0.0.1:80}]\n"
    (err,) = errors(text)
    assert err.startswith(f"c.yaml:{at(text, 'name')}: unknown key 'name' in backends.api")
    assert "its key" in err


# ---------------------------------------------------------------- values


def test_bad_duration() -> None:
    text = "backends:\n  api:\n    servers: [{address: 10.0.0.1:80}]\n    timeouts: {connect: 5x}\n"
    (err,) = errors(text)
    assert err.startswith(f"c.yaml:{at(text, '5x')}: timeouts.connect: invalid duration '5x'")


def test_bad_size() -> None:
    text = http("- backend: api\n", extra="    max_body_size: 12XB\n")
    (err,) = errors(text)
    assert err.startswith(f"c.yaml:{at(text, '12XB')}: max_body_size: invalid size '12XB'")


def test_wrong_type_integer() -> None:
    text = "backends:\n  api:\n    retries: two\n    servers: [{address: 10.0.0.1:80}]\n"
    assert errors(text) == [
        f"c.yaml:{at(text, 'two')}: retries: expected a whole number, got 'two'"
    ]


def test_wrong_type_mapping_and_list() -> None:
    text = "backends:\n  api:\n    servers: 10.0.0.1:80\n    timeouts: [1, 2]\n"
    errs = errors(text)
    assert f"c.yaml:{at(text, '10.0.0.1')}: servers: expected a list, got '10.0.0.1:80'" in errs
    assert f"c.yaml:{at(text, '[1, 2]')}: timeouts: expected a mapping, got a list" in errs


def test_yaml_boolean_where_a_string_is_expected_hints_quoting() -> None:
    text = http("- match: {headers: {x-canary: on}}\n  backend: api\n")
    (err,) = errors(text)
    assert err.startswith(
        f"c.yaml:{at(text, 'on}')}: match.headers.x-canary: expected a string, got True"
    )
    assert "quote the value" in err


def test_unknown_algorithm_did_you_mean() -> None:
    text = "backends:\n  api:\n    algorithm: least_conections\n    servers: [{address: 10.0.0.1:80}]\n"
    (err,) = errors(text)
    assert err.startswith(
        f"c.yaml:{at(text, 'least_conections')}: unknown algorithm 'least_conections' "
        "(did you mean 'least_connections'?)"
    )


def test_unknown_protocol_literal() -> None:
    text = "listeners:\n  - {name: x, protocol: htp, bind: 127.0.0.1:1}\n"
    errs = errors(text)
    assert (
        f"c.yaml:{at(text, 'htp')}: protocol: unknown value 'htp' (did you mean 'http'?); "
        "expected one of: http, tcp, udp"
    ) in errs


def test_missing_required_key() -> None:
    text = "listeners:\n  - name: web\n    routes: []\n"
    errs = errors(text)
    assert f"c.yaml:{at(text, 'name')}: missing required key 'bind' in listeners[0]" in errs


def test_weight_out_of_range() -> None:
    text = "backends:\n  api:\n    servers:\n      - {address: 10.0.0.1:80, weight: 1001}\n"
    assert errors(text) == [f"c.yaml:{at(text, '1001')}: weight: must be at most 1000, got 1001"]
    text = "backends:\n  api:\n    servers:\n      - {address: 10.0.0.1:80, weight: -1}\n"
    assert errors(text) == [f"c.yaml:{at(text, '-1')}: weight: must be at least 0, got -1"]


def test_bad_address() -> None:
    text = "backends:\n  api:\n    servers:\n      - {address: 10.0.0.1}\n"
    (err,) = errors(text)
    assert err.startswith(f"c.yaml:{at(text, '10.0.0.1')}: invalid address '10.0.0.1'")


def test_table_size_not_prime() -> None:
    text = (
        "backends:\n  api:\n    algorithm: maglev\n    table_size: 65536\n"
        "    servers: [{address: 10.0.0.1:80}]\n"
    )
    assert errors(text) == [
        f"c.yaml:{at(text, '65536')}: table_size must be a prime number (e.g. 65537, 655373), got 65536"
    ]


def test_hash_balance_factor_below_100() -> None:
    text = (
        "backends:\n  api:\n    algorithm: consistent_hash\n    hash_balance_factor: 90\n"
        "    servers: [{address: 10.0.0.1:80}]\n"
    )
    (err,) = errors(text)
    assert err.startswith(f"c.yaml:{at(text, '90')}: hash_balance_factor must be at least 100")


def test_bad_hash_on() -> None:
    text = "backends:\n  api:\n    algorithm: maglev\n    hash_on: header\n    servers: [{address: 10.0.0.1:80}]\n"
    (err,) = errors(text)
    assert err.startswith(f"c.yaml:{at(text, 'header')}: invalid hash_on 'header'")


def test_health_check_timeout_not_below_interval() -> None:
    text = (
        "backends:\n  api:\n    servers: [{address: 10.0.0.1:80}]\n"
        "    health_check: {interval: 2s, timeout: 2s}\n"
    )
    assert errors(text) == [
        f"c.yaml:{at(text, '2s', 1)}: health_check timeout (2s) must be shorter than its "
        "interval (2s)"
    ]
    # the default timeout (2s) against a short interval: blamed on the interval
    text = "backends:\n  api:\n    servers: [{address: 10.0.0.1:80}]\n    health_check: {interval: 1s}\n"
    assert errors(text) == [
        f"c.yaml:{at(text, '1s')}: health_check timeout (2s) must be shorter than its interval (1s)"
    ]


def test_health_check_bad_expect_status() -> None:
    text = (
        "backends:\n  api:\n    servers: [{address: 10.0.0.1:80}]\n"
        "    health_check: {expect_status: 2xx}\n"
    )
    (err,) = errors(text)
    assert err.startswith(
        f"c.yaml:{at(text, '2xx')}: health_check.expect_status: invalid status range '2xx'"
    )


def test_bad_path_regex() -> None:
    text = http("- match: {path_regex: '^/(a'}\n  backend: api\n")
    (err,) = errors(text)
    pos = at(text, "'^/(a'")
    assert err.startswith(f"c.yaml:{pos}: match.path_regex: invalid regular expression")


def test_redirect_status_must_be_a_redirect() -> None:
    text = http("- redirect: {to: /x, status: 200}\n")
    (err,) = errors(text)
    assert err.startswith(f"c.yaml:{at(text, '200')}: redirect.status: unknown value 200")
    assert "301, 302, 307, 308" in err


# ---------------------------------------------------------------- references and names


def test_route_unknown_backend_did_you_mean() -> None:
    text = http("- match: {path_prefix: /}\n  backend: apii\n")
    assert errors(text) == [
        f"c.yaml:{at(text, 'apii')}: unknown backend 'apii' (did you mean 'api'?)"
    ]


def test_route_unknown_backend_lists_backends() -> None:
    text = http("- backend: zzz\n")
    assert errors(text) == [
        f"c.yaml:{at(text, 'zzz')}: unknown backend 'zzz'; defined backends: api, static"
    ]


def test_unknown_backend_in_split_sni_routes_and_tcp_listener() -> None:
    text = (
        "listeners:\n"
        "  - name: web\n    bind: 127.0.0.1:8080\n    routes:\n"
        "      - split: [{backend: api, weight: 9}, {backend: statc, weight: 1}]\n"
        "  - name: tls\n    protocol: tcp\n    bind: 127.0.0.1:8443\n"
        "    sni_routes: [{server_name: a.example.com, backend: apu}]\n"
        "    backend: nope\n" + BACKENDS
    )
    errs = errors(text)
    assert errs == [
        f"c.yaml:{at(text, 'statc')}: unknown backend 'statc' (did you mean 'static'?)",
        f"c.yaml:{at(text, 'apu')}: unknown backend 'apu' (did you mean 'api'?)",
        f"c.yaml:{at(text, 'nope')}: unknown backend 'nope'; defined backends: api, static",
    ]


def test_duplicate_listener_names() -> None:
    text = (
        "listeners:\n"
        "  - {name: web, bind: 127.0.0.1:8080, routes: [{backend: api}]}\n"
        "  - {name: web, bind: 127.0.0.1:8081, routes: [{backend: api}]}\n" + BACKENDS
    )
    assert errors(text) == [
        f"c.yaml:{at(text, 'web', 1)}: duplicate listener name 'web' (first used on line 2)"
    ]


def test_duplicate_server_names() -> None:
    text = (
        "backends:\n  api:\n    servers:\n"
        "      - {address: 10.0.0.1:80, name: a}\n"
        "      - {address: 10.0.0.2:80, name: a}\n"
        "      - {address: 10.0.0.3:80}\n"
        "      - {address: 10.0.0.3:80}\n"
    )
    assert errors(text) == [
        f"c.yaml:{at(text, 'a}', 1)}: duplicate server name 'a' in backend 'api' (first on line 4)",
        f"c.yaml:{at(text, '10.0.0.3', 1)}: duplicate server name '10.0.0.3:80' in backend 'api' "
        "(first on line 6); give one of them a distinct `name`",
    ]


def test_same_server_name_in_two_backends_is_fine() -> None:
    text = "backends:\n  a:\n    servers: [{address: 10.0.0.1:80}]\n  b:\n    servers: [{address: 10.0.0.1:80}]\n"
    assert errors(text) == []


# ---------------------------------------------------------------- bind conflicts


def _binds(*rows: tuple[str, str]) -> str:
    lines = ["listeners:"]
    for i, (protocol, bind) in enumerate(rows):
        target = "routes: [{backend: api}]" if protocol == "http" else "backend: api"
        lines.append(f"  - {{name: l{i}, protocol: {protocol}, bind: '{bind}', {target}}}")
    return "\n".join(lines) + "\n" + BACKENDS


def test_bind_conflict_same_address() -> None:
    text = _binds(("http", "127.0.0.1:8080"), ("tcp", "127.0.0.1:8080"))
    assert errors(text) == [
        f"c.yaml:{atq(text, '127.0.0.1:8080', 1)}: bind conflict: listener 'l1' binds 127.0.0.1:8080, "
        "which overlaps listener 'l0' (127.0.0.1:8080, line 2)"
    ]


def test_bind_conflict_wildcard_covers_loopback() -> None:
    text = _binds(("http", "0.0.0.0:8080"), ("http", "127.0.0.1:8080"))
    (err,) = errors(text)
    assert err.startswith(f"c.yaml:{atq(text, '127.0.0.1:8080')}: bind conflict: listener 'l1'")
    text = _binds(("tcp", "127.0.0.1:8080"), ("http", "0.0.0.0:8080"))
    assert len(errors(text)) == 1
    text = _binds(("tcp", "localhost:8080"), ("http", "127.0.0.1:8080"))
    assert len(errors(text)) == 1


@pytest.mark.parametrize(
    "rows",
    [
        (("tcp", "127.0.0.1:5353"), ("udp", "127.0.0.1:5353")),  # tcp and udp do not conflict
        (("http", "127.0.0.1:8080"), ("http", "127.0.0.2:8080")),
        (("http", "127.0.0.1:8080"), ("http", "127.0.0.1:8081")),
        (("http", "127.0.0.1:0"), ("http", "127.0.0.1:0")),  # port 0: the kernel picks
        (("http", "[::]:8080"), ("http", "127.0.0.1:8080")),  # asyncio binds v6 with V6ONLY
    ],
)
def test_no_bind_conflict(rows: tuple[tuple[str, str], ...]) -> None:
    assert errors(_binds(*rows)) == []


def test_bind_conflict_with_admin() -> None:
    text = "admin: {bind: 127.0.0.1:9901}\n" + _binds(("http", "0.0.0.0:9901"))
    (err,) = errors(text)
    assert err.startswith(f"c.yaml:{atq(text, '0.0.0.0:9901')}: bind conflict: listener 'l0'")
    assert "the admin listener" in err


# ---------------------------------------------------------------- routes


def test_route_needs_a_target() -> None:
    text = http("- match: {path_prefix: /}\n")
    assert errors(text) == [
        f"c.yaml:{at(text, 'match')}: a route needs one of backend, split, redirect or respond (found none)"
    ]


def test_route_with_several_targets() -> None:
    text = http("- backend: api\n  redirect: {to: /x}\n")
    assert errors(text) == [
        f"c.yaml:{at(text, 'redirect')}: a route takes only one of backend, split, redirect or "
        "respond (found backend and redirect)"
    ]


def test_split_weights_add_up_to_zero() -> None:
    text = http("- split:\n    - {backend: api, weight: 0}\n    - {backend: static, weight: 0}\n")
    assert errors(text) == [
        f"c.yaml:{at(text, '- {backend')}: "
        "split weights add up to 0: at least one backend needs a weight above 0"
    ]


def test_split_empty_and_negative_weight() -> None:
    text = http("- split: []\n")
    assert errors(text) == [
        f"c.yaml:{at(text, '[]')}: split needs at least one {{backend, weight}}"
    ]
    text = http("- split: [{backend: api, weight: -5}]\n")
    assert errors(text) == [f"c.yaml:{at(text, '-5')}: weight: must be at least 0, got -5"]


def test_rewrite_prefix_needs_a_prefix() -> None:
    text = http("- match: {host: a.example.com}\n  rewrite_prefix: /v2/\n  backend: api\n")
    (err,) = errors(text)
    assert err.startswith(f"c.yaml:{at(text, 'rewrite_prefix')}: rewrite_prefix replaces")
    assert (
        errors(http("- match: {path_prefix: /api/}\n  rewrite_prefix: /v2/\n  backend: api\n"))
        == []
    )


def test_prefixes_must_start_with_slash() -> None:
    text = http("- match: {path_prefix: api}\n  strip_prefix: api\n  backend: api\n")
    errs = errors(text)
    assert errs[0].startswith(
        f"c.yaml:{at(text, 'api}')}: path_prefix must start with '/', got 'api'"
    )
    assert errs[1].startswith(f"c.yaml:{at(text, 'api', 1)}: strip_prefix: must start with '/'")


# ---------------------------------------------------------------- listener protocols


def test_routes_on_tcp_listener() -> None:
    text = (
        "listeners:\n  - name: t\n    protocol: tcp\n    bind: 127.0.0.1:6380\n    backend: api\n    routes: []\n"
        + BACKENDS
    )
    assert errors(text) == [
        f"c.yaml:{at(text, 'routes')}: 'routes' is only for http listeners (listener 't' is tcp)"
    ]


def test_tcp_listener_needs_backend_or_sni_routes() -> None:
    text = "listeners:\n  - name: t\n    protocol: tcp\n    bind: 127.0.0.1:6380\n" + BACKENDS
    assert errors(text) == [
        f"c.yaml:{at(text, 'name: t')}: listener 't' (tcp) needs a 'backend' or 'sni_routes'"
    ]
    ok = (
        "listeners:\n  - name: t\n    protocol: tcp\n    bind: 127.0.0.1:6380\n    sni_routes: [{server_name: '*.example.com', backend: api}]\n"
        + BACKENDS
    )
    assert errors(ok) == []


def test_udp_listener_needs_backend_and_refuses_tls_keys() -> None:
    text = (
        "listeners:\n  - name: u\n    protocol: udp\n    bind: 127.0.0.1:5353\n"
        "    accept_proxy_protocol: true\n    timeouts: {request_head: 5s}\n" + BACKENDS
    )
    assert errors(text) == [
        f"c.yaml:{at(text, 'name: u')}: listener 'u' (udp) needs a 'backend'",
        f"c.yaml:{at(text, 'accept_proxy_protocol')}: 'accept_proxy_protocol' is not available "
        "on udp listeners (listener 'u' is udp)",
        f"c.yaml:{at(text, 'request_head')}: timeouts.request_head is not used by udp listeners "
        "(listener 'u')",
    ]


def test_http_listener_takes_accept_proxy_protocol() -> None:
    text = (
        "listeners:\n  - name: w\n    protocol: http\n    bind: 127.0.0.1:8080\n"
        "    accept_proxy_protocol: true\n    backend: api\n" + BACKENDS
    )
    assert errors(text) == []


def test_tcp_timeouts() -> None:
    text = (
        "listeners:\n  - name: t\n    protocol: tcp\n    bind: 127.0.0.1:1\n    backend: api\n"
        "    timeouts: {request_head: 2s, tunnel: 1h}\n" + BACKENDS
    )
    assert errors(text) == [
        f"c.yaml:{at(text, 'tunnel')}: timeouts.tunnel is not used by tcp listeners (listener 't')"
    ]


def test_http_only_and_udp_only_keys() -> None:
    text = (
        "listeners:\n  - name: t\n    protocol: tcp\n    bind: 127.0.0.1:1\n    backend: api\n"
        "    redirect_https: true\n    max_sessions: 10\n" + BACKENDS
    )
    assert errors(text) == [
        f"c.yaml:{at(text, 'redirect_https')}: 'redirect_https' is only for http listeners (listener 't' is tcp)",
        f"c.yaml:{at(text, 'max_sessions')}: 'max_sessions' is only for udp listeners (listener 't' is tcp)",
    ]


def test_http_listener_with_backend_and_routes_or_sni_routes() -> None:
    text = http("- backend: api\n", extra="    backend: apo\n    sni_routes: []\n")
    assert errors(text) == [
        f"c.yaml:{at(text, 'backend: apo')}: 'backend' on an http listener is a shorthand for a "
        "single catch-all route; listener 'web' has routes: add a last route {backend: NAME} instead",
        f"c.yaml:{at(text, 'apo')}: unknown backend 'apo' (did you mean 'api'?)",
        f"c.yaml:{at(text, 'sni_routes')}: 'sni_routes' is only for tcp listeners (listener 'web' is http)",
    ]


def test_sni_routes_with_tls_termination(tmp_path: object) -> None:
    text = (
        "listeners:\n  - name: t\n    protocol: tcp\n    bind: 127.0.0.1:1\n"
        "    sni_routes: [{server_name: a.example.com, backend: api}]\n"
        "    tls: {certificates: [{cert: /nonexistent.pem, key: /nonexistent.key}]}\n" + BACKENDS
    )
    errs = errors(text)
    assert (
        f"c.yaml:{at(text, 'sni_routes')}: sni_routes pass TLS through untouched and cannot be combined with 'tls' (which terminates it)"
        in errs
    )


def test_bad_sni_server_name() -> None:
    text = (
        "listeners:\n  - name: t\n    protocol: tcp\n    bind: 127.0.0.1:1\n    sni_routes: [{server_name: 'a.*.com', backend: api}]\n"
        + BACKENDS
    )
    (err,) = errors(text)
    pos = at(text, "'a.*.com'")
    assert err.startswith(f"c.yaml:{pos}: invalid server_name 'a.*.com'")


# ---------------------------------------------------------------- admin


def test_admin_not_loopback_needs_token() -> None:
    text = "admin:\n  bind: 0.0.0.0:9901\n"
    assert errors(text) == [
        f"c.yaml:{at(text, '0.0.0.0')}: admin binds 0.0.0.0:9901, which is not loopback: set a "
        "non-empty admin.token (every API call must then carry it)"
    ]
    assert len(errors("admin:\n  bind: 0.0.0.0:9901\n  token: ''\n")) == 1
    assert len(errors("admin:\n  bind: 0.0.0.0:9901\n  token: ${T:-}\n", env={})) == 1
    assert errors("admin:\n  bind: 0.0.0.0:9901\n  token: s3cret\n") == []
    assert errors("admin:\n  bind: '[::1]:9901'\n") == []
    assert errors("admin: {}\n") == []


# ---------------------------------------------------------------- TLS files


def test_missing_tls_files_are_named(tmp_path: object) -> None:
    text = http(
        "- backend: api\n",
        extra="    tls:\n      certificates:\n        - {cert: certs/nope.pem, key: certs/nope.key}\n",
    )
    errs = errors(text, base_dir=str(tmp_path))
    assert errs[0].startswith(
        f"c.yaml:{at(text, 'certs/nope.pem')}: cert: file 'certs/nope.pem' not found"
    )
    assert str(tmp_path) in errs[0]
    assert errs[1].startswith(
        f"c.yaml:{at(text, 'certs/nope.key')}: key: file 'certs/nope.key' not found"
    )


def test_tls_key_not_matching_cert(tmp_path: object) -> None:
    import pathlib

    import trustme

    d = pathlib.Path(str(tmp_path))
    ca = trustme.CA()
    one, two = ca.issue_cert("a.example.com"), ca.issue_cert("b.example.com")
    one.cert_chain_pems[0].write_to_path(str(d / "a.pem"))
    two.private_key_pem.write_to_path(str(d / "b.key"))
    (d / "garbage.pem").write_text("not a certificate\n")
    text = http("- backend: api\n", extra="    tls: {certificates: [{cert: a.pem, key: b.key}]}\n")
    (err,) = errors(text, base_dir=str(d))
    assert err.startswith(
        f"c.yaml:{at(text, 'a.pem')}: cannot load certificate {d / 'a.pem'} with key {d / 'b.key'}"
    )
    text = http(
        "- backend: api\n", extra="    tls: {certificates: [{cert: garbage.pem, key: b.key}]}\n"
    )
    (err,) = errors(text, base_dir=str(d))
    assert "cannot load certificate" in err


def test_upstream_tls_ca_missing(tmp_path: object) -> None:
    text = "backends:\n  api:\n    servers: [{address: 10.0.0.1:443}]\n    tls: {ca: ca.pem}\n"
    (err,) = errors(text, base_dir=str(tmp_path))
    assert err.startswith(f"c.yaml:{at(text, 'ca.pem')}: tls.ca: file 'ca.pem' not found")


def test_unreadable_config_file(tmp_path: object) -> None:
    missing = f"{tmp_path}/nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    (p,) = info.value.problems
    assert str(p).startswith(f"{missing}:1:1: cannot read config file")


def test_invalid_utf8(tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "c.yaml"
    path.write_bytes(b"version: 1\nx: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(p) for p in info.value.problems] == [f"{path}:2:4: the file is not valid UTF-8"]


# ---------------------------------------------------------------- all at once


def test_every_problem_is_reported_at_once() -> None:
    text = (
        "version: 1\n"
        "shutdown_timout: 30s\n"
        "listeners:\n"
        "  - {name: web, bind: 127.0.0.1:8080, routes: [{backend: apii}]}\n"
        "  - {name: web, bind: 127.0.0.1:8080, routes: [{backend: api, respond: {status: 503}}]}\n"
        "backends:\n"
        "  api:\n"
        "    retries: two\n"
        "    health_check: {interval: 1s, timeout: 3s, intervall: 1s}\n"
        "    servers: [{address: 10.0.0.1:80, weight: 5000}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "c.yaml")
    got = [str(p) for p in info.value.problems]
    assert len(got) == 9, got
    lines = [int(p.split(":")[1]) for p in got]
    assert lines == sorted(lines)
    assert str(info.value) == "\n".join(got)


def test_list_entries_of_the_wrong_shape() -> None:
    text = "listeners:\n  - web\nbackends:\n  a:\n    servers: [x]\n"
    assert errors(text) == [
        f"c.yaml:{at(text, 'web')}: listeners[0]: expected a mapping, got 'web'",
        f"c.yaml:{at(text, 'x]')}: servers[0]: expected a mapping, got 'x'",
    ]


def test_booleans_are_not_numbers() -> None:
    text = "backends:\n  a:\n    servers: [{address: 1.1.1.1:80, weight: true}]\n"
    assert errors(text) == [f"c.yaml:{at(text, 'true')}: weight: expected a number, got True"]


def test_unknown_yaml_tag() -> None:
    text = "version: !!python/object:os.system x\n"
    (err,) = errors(text)
    assert err.startswith("c.yaml:1:10: YAML error: could not determine a constructor")


def test_alias_bomb_is_refused_quickly() -> None:
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        rows.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    text = "\n".join(rows) + "\n"
    errs = errors(text)
    assert any("expands to more than" in e for e in errs)


def test_recursive_alias_is_refused() -> None:
    errs = errors("x-loop: &a [*a]\n")
    assert any("nested too deeply" in e for e in errs)


def test_backend_names_must_fit_in_a_url() -> None:
    text = "backends:\n  my api:\n    servers: []\n  a/b:\n    servers: []\n"
    assert errors(text) == [
        f"c.yaml:{at(text, 'my api')}: invalid backend name 'my api': no spaces or '/'",
        f"c.yaml:{at(text, 'a/b')}: invalid backend name 'a/b': no spaces or '/'",
    ]


# ---------------------------------------------------------------- log.access


def test_access_log_in_a_directory_that_does_not_exist(tmp_path: pathlib.Path) -> None:
    text = "version: 1\nlog:\n  access: missing/access.log\n"
    got = errors(text, base_dir=str(tmp_path))
    assert got == [
        f"c.yaml:{at(text, 'missing/')}: log.access: directory "
        f"'{tmp_path}/missing' does not exist (for 'missing/access.log')"
    ]


def test_access_log_that_is_a_directory(tmp_path: pathlib.Path) -> None:
    text = "version: 1\nlog: {access: '.', format: text}\n"
    assert errors(text, base_dir=str(tmp_path)) == [
        f"c.yaml:{atq(text, '.')}: log.access: '.' is a directory, not a file ({tmp_path})"
    ]


def _unwritable_dir(tmp_path: pathlib.Path) -> str:
    """A directory this process cannot create files in: a mode-555 one, or (as root, who may
    write anywhere else) a read-only mount."""
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o555)
        return str(tmp_path / "ro")
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f if "ro" in line.split()[3].split(",")]
    for path in ["/proc/sys", *mounts]:
        if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
            return path
    pytest.skip("no directory here that root cannot write to")


def test_access_log_in_a_directory_that_is_not_writable(tmp_path: pathlib.Path) -> None:
    directory = _unwritable_dir(tmp_path)
    value = f"{directory}/a.log"
    text = f"log: {{access: '{value}'}}\n"
    assert errors(text) == [
        f"c.yaml:{atq(text, value)}: log.access: cannot create '{value}': directory '{directory}' is not "
        "writable"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any file")
def test_access_log_file_not_writable(tmp_path: pathlib.Path) -> None:
    (tmp_path / "ro.log").write_text("")
    (tmp_path / "ro.log").chmod(0o444)
    assert errors("log: {access: ro.log}\n", base_dir=str(tmp_path)) == [
        f"c.yaml:1:16: log.access: file 'ro.log' is not writable ({tmp_path}/ro.log)"
    ]


def test_access_log_paths_that_are_fine(tmp_path: pathlib.Path) -> None:
    (tmp_path / "old.log").write_text("kept\n")
    for value in ("new.log", "old.log", "off", "stdout", "'-'", "/dev/null"):
        assert errors(f"log: {{access: {value}}}\n", base_dir=str(tmp_path)) == [], value
    assert (tmp_path / "old.log").read_text() == "kept\n"  # checking writes nothing
    assert not (tmp_path / "new.log").exists()
