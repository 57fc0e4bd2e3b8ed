"""HTTPS on http listeners and TLS toward servers, with real certificates (trustme).

Listener side: SNI picks among several certificates by the names in the certificates, a client
without SNI gets the first one, TLS 1.0/1.1 clients are refused, ALPN says http/1.1, the
backend sees X-Forwarded-Proto: https, `redirect_https` answers 308, and a reload re-reads the
certificate files while an open keep-alive connection carries on.
Upstream side: `tls: {verify, ca, server_name}` per backend, pooled connections reused, and a
failed verification answered with 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from tests.helpers.http_backends import H11Client, HttpBackend, http_backend, request, steelyard

from steelyard.config import ConfigError, load_config_text


def write_cert(cert: trustme.LeafCert, directory: Path, stem: str) -> tuple[str, str]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


def tls_listener_yaml(pairs: list[tuple[str, str]], name: str = "web", extra: str = "") -> str:
    lines = [
        f"  - name: {name}",
        "    bind: 127.0.0.1:0",
        "    tls:",
        "      certificates:",
    ]
    lines += [f"        - {{cert: '{c}', key: '{k}'}}" for c, k in pairs]
    if extra:
        lines.append(extra.rstrip("\n"))
    lines += ["    routes:", "      - match: {path_prefix: /}", "        backend: api"]
    return "\n".join(lines) + "\n"


def config(listeners: str, backend: HttpBackend, backend_extra: str = "") -> str:
    text = "version: 1\nlisteners:\n" + listeners
    text += "backends:\n  api:\n"
    if backend_extra:
        text += backend_extra.rstrip("\n") + "\n"
    text += f"    servers:\n      - {{address: '{backend.address}', name: {backend.name}}}\n"
    return text


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(ca: trustme.CA, tmp_path: Path) -> dict[str, tuple[str, str]]:
    return {
        "default": write_cert(ca.issue_cert("default.test"), tmp_path, "default"),
        "a": write_cert(ca.issue_cert("a.example.com"), tmp_path, "a"),
        "wild": write_cert(ca.issue_cert("*.example.org"), tmp_path, "wild"),
    }


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def peer_names(writer: asyncio.StreamWriter) -> list[str]:
    cert = writer.get_extra_info("ssl_object").getpeercert()
    return [v for k, v in cert["subjectAltName"] if k == "DNS"]


async def tls_client(
    port: int, ctx: ssl.SSLContext, server_hostname: str | None
) -> tuple[H11Client, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=server_hostname
    )
    return H11Client(reader, writer), writer


async def test_sni_picks_the_certificate_and_backend_sees_https(
    ca: trustme.CA, certs: dict[str, tuple[str, str]]
) -> None:
    pairs = [certs["default"], certs["a"], certs["wild"]]
    async with http_backend("s1") as s1, steelyard(config(tls_listener_yaml(pairs), s1)) as sy:
        ctx = client_context(ca)
        for name, expected in (
            ("a.example.com", ["a.example.com"]),
            ("shop.example.org", ["*.example.org"]),
            ("default.test", ["default.test"]),
        ):
            client, writer = await tls_client(sy.port, ctx, name)  # verifies the name
            assert peer_names(writer) == expected
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
            assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            r = await client.request("GET", "/echo", host=name)
            assert r.status == 200
            assert r.json()["server"] == "s1"
            await client.close()
        seen = s1.requests[-1]
        assert seen.header("x-forwarded-proto") == "https"
        assert seen.header("x-forwarded-host") == "default.test"


async def test_client_without_sni_gets_the_default_certificate(
    ca: trustme.CA, certs: dict[str, tuple[str, str]]
) -> None:
    pairs = [certs["default"], certs["a"], certs["wild"]]
    async with http_backend("s1") as s1, steelyard(config(tls_listener_yaml(pairs), s1)) as sy:
        ctx = client_context(ca)
        ctx.check_hostname = False  # the chain is still verified against the CA
        client, writer = await tls_client(sy.port, ctx, None)
        assert peer_names(writer) == ["default.test"]
        r = await client.request("GET", "/")
        assert r.status == 200 and r.body == b"s1"
        await client.close()
        # a name no certificate covers also gets the default
        ctx2 = client_context(ca)
        ctx2.check_hostname = False
        client, writer = await tls_client(sy.port, ctx2, "other.example.net")
        assert peer_names(writer) == ["default.test"]
        await client.close()


def old_protocol_client(ca: trustme.CA) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


async def test_old_protocol_client_is_refused(
    ca: trustme.CA, certs: dict[str, tuple[str, str]]
) -> None:
    old = old_protocol_client(ca)
    # control: this client does speak TLS 1.1 to a server that allows it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        permissive.load_cert_chain(*certs["default"])
        permissive.minimum_version = ssl.TLSVersion.TLSv1
        permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=permissive)
    try:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=old, server_hostname="default.test"
        )
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.1"
        writer.close()
    finally:
        server.close()
    async with (
        http_backend("s1") as s1,
        steelyard(config(tls_listener_yaml([certs["default"]]), s1)) as sy,
    ):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", sy.port, ssl=old, server_hostname="default.test"
                ),
                10,
            )
        assert s1.requests == []


async def test_redirect_https_answers_308_to_the_tls_listener(
    certs: dict[str, tuple[str, str]],
) -> None:
    listeners = (
        "  - name: plain\n    bind: 127.0.0.1:0\n    redirect_https: true\n"
        "    routes:\n      - match: {path_prefix: /}\n        backend: api\n"
    ) + tls_listener_yaml([certs["default"]], name="secure")
    async with http_backend("s1") as s1, steelyard(config(listeners, s1), "plain") as sy:
        tls_port = sy.engine.bound["secure"][1]
        client = await H11Client.connect(sy.port)
        r = await client.request("GET", "/a/b?x=1&y=2", host="shop.example.com:8080")
        assert r.status == 308
        assert r.header("location") == f"https://shop.example.com:{tls_port}/a/b?x=1&y=2"
        r = await client.request("POST", "/form", host="shop.example.com", body=b"k=v")
        assert r.status == 308  # 308 keeps the method and body
        assert r.header("location") == f"https://shop.example.com:{tls_port}/form"
        await client.close()
        assert s1.requests == []


async def test_reload_rereads_certificates_and_keeps_connections(
    ca: trustme.CA, certs: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    async with (
        http_backend("s1") as s1,
        steelyard(config(tls_listener_yaml([certs["a"]]), s1)) as sy,
    ):
        ctx = client_context(ca)
        ctx.check_hostname = False
        old_client, old_writer = await tls_client(sy.port, ctx, "a.example.com")
        assert peer_names(old_writer) == ["a.example.com"]
        assert (await old_client.request("GET", "/")).status == 200
        # new files, new names: a reload picks them up
        renewed = write_cert(ca.issue_cert("a.example.com", "b.example.com"), tmp_path, "new")
        await sy.engine.reload(load_config_text(config(tls_listener_yaml([renewed]), s1)))
        client, writer = await tls_client(sy.port, ctx, "b.example.com")
        assert peer_names(writer) == ["a.example.com", "b.example.com"]
        assert (await client.request("GET", "/")).status == 200
        await client.close()
        # the connection opened before the reload is still up and still served
        r = await old_client.request("GET", "/echo")
        assert r.status == 200 and r.json()["server"] == "s1"
        assert peer_names(old_writer) == ["a.example.com"]
        await old_client.close()


def test_missing_or_unreadable_certificate_is_a_config_error_naming_the_file(
    certs: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    backend = HttpBackend("s1")
    backend.port = 8080
    missing = str(tmp_path / "gone.pem")
    with pytest.raises(ConfigError, match="gone.pem"):
        load_config_text(config(tls_listener_yaml([(missing, certs["a"][1])]), backend))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="garbage.pem"):
        load_config_text(config(tls_listener_yaml([(str(garbage), certs["a"][1])]), backend))


async def test_reload_with_a_missing_certificate_keeps_the_old_one(
    ca: trustme.CA, certs: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    async with (
        http_backend("s1") as s1,
        steelyard(config(tls_listener_yaml([certs["a"]]), s1)) as sy,
    ):
        path = tmp_path / "steelyard.yaml"
        path.write_text(
            config(tls_listener_yaml([(str(tmp_path / "nope.pem"), certs["a"][1])]), s1)
        )
        sy.engine.config_path = str(path)
        with pytest.raises(ConfigError, match="nope.pem"):
            await sy.engine.reload()
        ctx = client_context(ca)
        client, writer = await tls_client(sy.port, ctx, "a.example.com")
        assert (await client.request("GET", "/")).status == 200
        await client.close()


# -- TLS toward the servers ---------------------------------------------------------------


class TlsBackend(HttpBackend):
    """The shared h11 test backend, served over TLS."""

    def __init__(self, name: str, ctx: ssl.SSLContext) -> None:
        super().__init__(name)
        self.ctx = ctx
        self.handshakes = 0

    async def start(self, host: str = "127.0.0.1") -> None:
        self.server = await asyncio.start_server(self._serve, host, 0, ssl=self.ctx)
        sockname = self.server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]


@contextlib.asynccontextmanager
async def tls_backend(name: str, cert: trustme.LeafCert) -> AsyncIterator[TlsBackend]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    backend = TlsBackend(name, ctx)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()


def plain_listener() -> str:
    return (
        "  - name: web\n    bind: 127.0.0.1:0\n"
        "    routes:\n      - match: {path_prefix: /}\n        backend: api\n"
    )


async def test_upstream_tls_verified_against_a_ca_and_pooled(
    ca: trustme.CA, tmp_path: Path
) -> None:
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    async with tls_backend("s1", ca.issue_cert("127.0.0.1")) as s1:
        tls = f"    tls: {{verify: true, ca: '{ca_path}'}}"
        async with steelyard(config(plain_listener(), s1, tls)) as sy:
            client = await H11Client.connect(sy.port)
            for _ in range(3):
                r = await client.request("GET", "/echo")
                assert r.status == 200 and r.json()["server"] == "s1"
            await client.close()
            assert s1.connections == 1  # one TLS connection, reused from the pool
            key = (s1.host, s1.port)
            assert sy.engine.pools.idle_count(key) == 0  # plain key: never mixed
            assert sy.engine.pools.idle_count() == 1


async def test_upstream_tls_server_name_is_sent_and_verified(
    ca: trustme.CA, tmp_path: Path
) -> None:
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    seen: list[str | None] = []
    async with tls_backend("s1", ca.issue_cert("api.internal")) as s1:
        s1.ctx.sni_callback = lambda obj, name, ctx: seen.append(name)  # type: ignore[assignment,misc,return-value]
        tls = f"    tls: {{ca: '{ca_path}', server_name: api.internal}}"
        async with steelyard(config(plain_listener(), s1, tls)) as sy:
            r = await request(sy.port, "GET", "/echo")
            assert r.status == 200 and r.json()["server"] == "s1"
        assert seen == ["api.internal"]
        # without server_name the certificate (api.internal) does not match 127.0.0.1: 502
        tls = f"    tls: {{ca: '{ca_path}'}}"
        async with steelyard(config(plain_listener(), s1, tls + "\n    retries: 0")) as sy:
            r = await request(sy.port, "GET", "/echo")
            assert r.status == 502
            assert b"TLS" in r.body


async def test_upstream_tls_verification_failure_is_502_and_verify_false_connects(
    ca: trustme.CA, tmp_path: Path
) -> None:
    other_ca = trustme.CA()  # the server's certificate is not signed by the CA we trust
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    async with tls_backend("s1", other_ca.issue_cert("127.0.0.1")) as s1:
        tls = f"    tls: {{verify: true, ca: '{ca_path}'}}"
        async with steelyard(config(plain_listener(), s1, tls)) as sy:
            r = await request(sy.port, "GET", "/echo")
            assert r.status == 502
            assert r.header("retry-after") is None
            assert sy.records[-1].status == 502
        assert s1.requests == []
        async with steelyard(config(plain_listener(), s1, "    tls: {verify: false}")) as sy:
            r = await request(sy.port, "GET", "/echo")
            assert r.status == 200 and r.json()["server"] == "s1"


async def test_reload_adding_tls_to_a_listener_restarts_it_with_tls(
    ca: trustme.CA, certs: dict[str, tuple[str, str]]
) -> None:
    async with http_backend("s1") as s1, steelyard(config(plain_listener(), s1)) as sy:
        assert (await request(sy.port, "GET", "/")).status == 200
        await sy.engine.reload(load_config_text(config(tls_listener_yaml([certs["a"]]), s1)))
        port = sy.engine.bound["web"][1]
        client, writer = await tls_client(port, client_context(ca), "a.example.com")
        assert peer_names(writer) == ["a.example.com"]
        r = await client.request("GET", "/echo")
        assert r.status == 200
        assert s1.requests[-1].header("x-forwarded-proto") == "https"
        await client.close()
