"""Lint warnings: valid configs that probably do not do what their author meant."""

from __future__ import annotations

import io
import pathlib

import pytest
from tests.helpers.yaml_text import at

from steelyard.config import check_command, load_config_text
from steelyard.config.loader import analyse_text


def warnings(text: str) -> list[str]:
    _c, errors, warns = analyse_text(text, "c.yaml")
    assert errors == []
    return [str(w) for w in warns]


ONE = "    servers: [{address: 10.0.0.1:80}]\n"


def test_clean_config_has_no_warnings() -> None:
    text = (
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n"
        "      - {match: {path_prefix: /api/}, backend: api}\n"
        "      - {match: {path_prefix: /}, backend: api}\n"
        "backends:\n  api:\n" + ONE
    )
    assert warnings(text) == []


def test_unused_backend() -> None:
    text = (
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, routes: [{backend: api}]}\n"
        "backends:\n  api:\n" + ONE + "  old:\n" + ONE
    )
    assert warnings(text) == [
        f"c.yaml:{at(text, 'old')}: warning: backend 'old' is not used by any listener or route"
    ]


def test_deny_route_by_path_without_normalize_path() -> None:
    routes = (
        "    routes:\n"
        "      - match: {path_prefix: /admin}\n        respond: {status: 403}\n"
        "      - match: {path_prefix: /api/}\n        respond: {status: 503}\n"
        "      - {match: {path_prefix: /}, backend: api}\n"
    )
    text = (
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n" + routes + "backends:\n  api:\n" + ONE
    )
    assert warnings(text) == [
        f"c.yaml:{at(text, 'match')}: warning: this route answers 403 by path, but the listener "
        "routes on the path as received: /%61dmin or //admin would not match it; add "
        "'normalize_path: true' to the listener"
    ]
    normalized = text.replace("    routes:", "    normalize_path: true\n    routes:")
    assert warnings(normalized) == []


def test_route_after_catch_all_never_matches() -> None:
    text = (
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n"
        "      - match: {path_prefix: /}\n        backend: api\n"
        "      - match: {path_prefix: /api/}\n        backend: api\n"
        "backends:\n  api:\n" + ONE
    )
    assert warnings(text) == [
        f"c.yaml:{at(text, 'match', 1)}: warning: this route can never match: the route on line 5 "
        "matches every request"
    ]


def test_route_without_match_is_a_catch_all_and_duplicate_match_is_unreachable() -> None:
    text = (
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n"
        "      - {match: {host: a.example.com}, backend: api}\n"
        "      - {match: {host: a.example.com}, backend: api}\n"
        "      - {backend: api}\n"
        "      - {respond: {status: 404}}\n"
        "backends:\n  api:\n" + ONE
    )
    got = warnings(text)
    assert got == [
        "c.yaml:6:9: warning: this route can never match: the route on line 5 has the same match",
        "c.yaml:8:9: warning: this route can never match: the route on line 7 matches every request",
    ]


def test_several_servers_without_any_health_checking() -> None:
    text = (
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, routes: [{backend: api}]}\n"
        "backends:\n  api:\n    servers: [{address: 10.0.0.1:80}, {address: 10.0.0.2:80}]\n"
    )
    assert warnings(text) == [
        f"c.yaml:{at(text, 'api:')}: warning: backend has 2 servers but neither health_check nor "
        "outlier_detection: a failed server keeps receiving traffic"
    ]
    assert warnings(text.replace("}]\n", "}]\n    outlier_detection: {}\n")) == []


def test_backend_without_servers() -> None:
    text = (
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, routes: [{backend: api}]}\n"
        "backends:\n  api:\n    servers: []\n"
    )
    (w,) = warnings(text)
    assert w.startswith(f"c.yaml:{at(text, 'api:')}: warning: backend has no servers")


def test_settings_for_other_algorithms() -> None:
    text = (
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, routes: [{backend: api}]}\n"
        "backends:\n  api:\n    hash_on: path\n    table_size: 7\n    hash_balance_factor: 150\n"
        + ONE
    )
    assert warnings(text) == [
        f"c.yaml:{at(text, 'hash_on')}: warning: hash_on is used only by consistent_hash and maglev, not round_robin",
        f"c.yaml:{at(text, 'table_size')}: warning: table_size is used only by maglev, not round_robin",
        f"c.yaml:{at(text, 'hash_balance_factor')}: warning: hash_balance_factor is used only by consistent_hash, not round_robin",
    ]


def test_small_maglev_table() -> None:
    text = (
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, routes: [{backend: api}]}\n"
        "backends:\n  api:\n    algorithm: maglev\n    table_size: 97\n" + ONE
    )
    (w,) = warnings(text)
    assert w.startswith(
        f"c.yaml:{at(text, 'table_size')}: warning: maglev table_size 97 is under 100 x"
    )


def test_unitless_duration_is_read_as_seconds() -> None:
    text = (
        "shutdown_timeout: 30\n"
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, routes: [{backend: api}], timeouts: {idle: 0}}\n"
        "backends:\n  api:\n    timeouts: {connect: '1.5'}\n" + ONE
    )
    assert warnings(text) == [
        f"c.yaml:{at(text, '30')}: warning: shutdown_timeout: 30 has no unit and is read as seconds; write 30s to say so",
        f"c.yaml:{at(text, chr(39) + '1.5')}: warning: connect: '1.5' has no unit and is read as seconds; write 1.5s to say so",
    ]
    assert load_config_text(text).shutdown_timeout == 30.0


def test_tcp_health_check_ignores_http_fields() -> None:
    text = (
        "listeners:\n  - {name: t, protocol: tcp, bind: 127.0.0.1:0, backend: api}\n"
        "backends:\n  api:\n    health_check: {type: tcp, path: /health}\n" + ONE
    )
    assert warnings(text) == [
        f"c.yaml:{at(text, 'path')}: warning: health_check.path is ignored by type: tcp checks"
    ]


def test_sticky_on_l4_and_proxy_protocol_on_http() -> None:
    text = (
        "listeners:\n  - {name: t, protocol: tcp, bind: 127.0.0.1:0, backend: db}\n"
        "  - {name: web, bind: 127.0.0.1:0, routes: [{backend: api}]}\n"
        "backends:\n  db:\n    sticky: {cookie: x}\n"
        + ONE
        + "  api:\n    proxy_protocol: v1\n"
        + ONE
    )
    got = warnings(text)
    assert len(got) == 2
    assert got[0].startswith(
        f"c.yaml:{at(text, 'sticky')}: warning: sticky cookies work only for http"
    )
    assert got[1].startswith(
        f"c.yaml:{at(text, 'proxy_protocol')}: warning: proxy_protocol is meant for tcp"
    )


def test_idle_timeout_on_tcp_listener() -> None:
    text = (
        "listeners:\n  - {name: t, protocol: tcp, bind: 127.0.0.1:0, backend: api, timeouts: {idle: 5m}}\n"
        "backends:\n  api:\n" + ONE
    )
    (w,) = warnings(text)
    assert w.startswith(
        f"c.yaml:{at(text, 'idle')}: warning: timeouts.idle is not used by tcp listeners"
    )


def test_redirect_https_on_tls_listener(tmp_path: pathlib.Path) -> None:
    import trustme

    cert = trustme.CA().issue_cert("example.com")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "c.key"))
    text = (
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    redirect_https: true\n"
        f"    tls: {{certificates: [{{cert: {tmp_path}/c.pem, key: {tmp_path}/c.key}}]}}\n"
        "    routes: [{backend: api}]\nbackends:\n  api:\n" + ONE
    )
    (w,) = warnings(text)
    assert w.startswith(
        f"c.yaml:{at(text, 'redirect_https')}: warning: redirect_https on a listener"
    )


def test_http_listener_without_routes_and_redirect_loop() -> None:
    text = "listeners:\n  - {name: web, bind: 127.0.0.1:0}\n"
    assert warnings(text) == [
        f"c.yaml:{at(text, '{name')}: warning: http listener has no routes: every request gets 404"
    ]


def test_warnings_are_kept_on_the_config() -> None:
    text = "backends:\n  old:\n" + ONE
    config = load_config_text(text, "c.yaml")
    assert [str(w) for w in config.warnings] == [
        "c.yaml:2:3: warning: backend 'old' is not used by any listener or route"
    ]


# ---------------------------------------------------------------- check_command


def _write(tmp_path: pathlib.Path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_check_command_ok(tmp_path: pathlib.Path) -> None:
    path = _write(
        tmp_path,
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, routes: [{backend: api}]}\nbackends:\n  api:\n"
        + ONE,
    )
    out = io.StringIO()
    assert check_command(path, False, out=out) == 0
    assert out.getvalue() == f"{path}: ok\n"


def test_check_command_errors(tmp_path: pathlib.Path) -> None:
    path = _write(
        tmp_path, "version: 1\nshutdown_timout: 3s\nbackends:\n  api:\n    retries: x\n" + ONE
    )
    out = io.StringIO()
    assert check_command(path, False, out=out) == 1
    assert out.getvalue().splitlines() == [
        f"{path}:2:1: unknown key 'shutdown_timout' in the top level (did you mean 'shutdown_timeout'?)",
        f"{path}:5:14: retries: expected a whole number, got 'x'",
    ]


@pytest.mark.parametrize(("strict", "code"), [(False, 0), (True, 1)])
def test_check_command_warnings_fail_only_when_strict(
    tmp_path: pathlib.Path, strict: bool, code: int
) -> None:
    path = _write(tmp_path, "backends:\n  old:\n" + ONE)
    out = io.StringIO()
    assert check_command(path, strict, out=out) == code
    assert (
        out.getvalue()
        == f"{path}:2:3: warning: backend 'old' is not used by any listener or route\n"
    )


def test_check_command_prints_file_as_given(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, "version: 9\n")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    assert check_command("c.yaml", False, out=out) == 1
    assert out.getvalue().startswith("c.yaml:1:10: version must be 1")
    out = io.StringIO()
    assert check_command("missing.yaml", False, out=out) == 1
    assert out.getvalue().startswith("missing.yaml:1:1: cannot read config file")
