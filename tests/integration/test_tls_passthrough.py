"""TLS passthrough by SNI: two real TLS servers with different certificates (trustme), the
client verifies the certificate end to end; no SNI / no match / not TLS -> default or closed.
Also TLS termination on a TCP listener (net.tls: certificate chosen by SNI)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trustme
import uvloop

from steelyard.config import load_config_text
from steelyard.core.records import RequestRecord
from steelyard.engine import Engine
from steelyard.net.tls import TLSConfigError, certificate_names, server_context

# production runs on uvloop; the stdlib loop must work too (see tests/integration/conftest.py)
LOOP_FACTORIES = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def certs(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """name -> (cert path, key path)."""
    out: dict[str, tuple[str, str]] = {}
    base = tmp_path_factory.mktemp("certs")
    for label, names in {
        "a": ["a.example.com"],
        "b": ["*.example.com"],
        "c": ["c.example.org", "alt.example.org"],
    }.items():
        cert = ca.issue_cert(*names)
        cert_path = base / f"{label}.pem"
        key_path = base / f"{label}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(cert_path), append=True)
        cert.private_key_pem.write_to_path(str(key_path))
        out[label] = (str(cert_path), str(key_path))
    return out


class Named(asyncio.Protocol):
    """Answers every connection with its name, then echoes."""

    def __init__(self, name: bytes) -> None:
        self.name = name

    def connection_made(self, transport: Any) -> None:
        self.t = transport
        transport.write(self.name + b"\n")

    def data_received(self, data: bytes) -> None:
        self.t.write(data)


@pytest.fixture
def servers() -> Iterator[Callable[..., Any]]:
    started: list[asyncio.Server] = []

    async def start(name: bytes, ssl_ctx: ssl.SSLContext | None = None) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Named(name), "127.0.0.1", 0, ssl=ssl_ctx)
        started.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in started:
        server.close()


def tls_server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def tls_hello(
    port: int, server_hostname: str | None, ctx: ssl.SSLContext
) -> tuple[bytes, Any]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_hostname or ""),
        5,
    )
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        peer = writer.get_extra_info("peercert")
        return line, peer
    finally:
        writer.close()


def passthrough_config(ports: dict[str, int], default: str | None) -> Any:
    default_line = f"    backend: {default}" if default else ""
    backends = "\n".join(
        f"  {name}:\n    servers: [{{address: 127.0.0.1:{port}}}]" for name, port in ports.items()
    )
    return load_config_text(
        f"""
listeners:
  - name: tls
    protocol: tcp
    bind: 127.0.0.1:0
    timeouts: {{request_head: 500ms}}
    sni_routes:
      - {{server_name: a.example.com, backend: a}}
      - {{server_name: "*.example.com", backend: b}}
{default_line}
backends:
{backends}
"""
    )


async def test_each_loop_is_the_one_named(request: pytest.FixtureRequest) -> None:
    """LOOP_FACTORIES (through the conftest hook) really runs these tests on both loops."""
    loop_id = request.node.callspec.id.split("-")[0]
    assert loop_id in LOOP_FACTORIES
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop) == (loop_id == "uvloop")


async def test_each_name_lands_on_its_server_and_verifies(ca: trustme.CA, servers: Any) -> None:
    port_a = await servers(b"A", tls_server_context(ca, "a.example.com"))
    port_b = await servers(b"B", tls_server_context(ca, "*.example.com"))
    port_d = await servers(b"D")  # plaintext default: sees the raw bytes
    engine = Engine(passthrough_config({"a": port_a, "b": port_b, "d": port_d}, "d"))
    await engine.start()
    records: list[RequestRecord] = []
    engine.recorders.append(records.append)
    try:
        _, port = engine.bound["tls"]
        ctx = client_context(ca)
        line, cert = await tls_hello(port, "a.example.com", ctx)
        assert line == b"A\n"
        assert ("DNS", "a.example.com") in cert["subjectAltName"]
        line, cert = await tls_hello(port, "x.example.com", ctx)
        assert line == b"B\n"
        assert ("DNS", "*.example.com") in cert["subjectAltName"]
        line, _ = await tls_hello(port, "X.Example.Com", ctx)  # case-insensitive
        assert line == b"B\n"
        for _ in range(100):
            if len(records) == 3:
                break
            await asyncio.sleep(0.02)
        assert [r.backend for r in records] == ["a", "b", "b"]
    finally:
        await engine.shutdown(1)


async def test_no_sni_no_match_and_not_tls_go_to_default(ca: trustme.CA, servers: Any) -> None:
    port_a = await servers(b"A", tls_server_context(ca, "a.example.com"))
    port_d = await servers(b"D")
    engine = Engine(passthrough_config({"a": port_a, "b": port_a, "d": port_d}, "d"))
    await engine.start()
    try:
        _, port = engine.bound["tls"]
        # not TLS at all: the default backend gets the bytes untouched
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PING plain text\r\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"D\n"
        assert await asyncio.wait_for(reader.readline(), 5) == b"PING plain text\r\n"
        writer.close()
        # a client that speaks only after the server does: the peek times out -> default
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.readline(), 5) == b"D\n"
        writer.close()
        # a ClientHello with a name no route has, and one with no SNI: the default
        # (a plaintext server: the TLS handshake fails, but the bytes reached it)
        for name in ("other.org", None):
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            hello = _client_hello(name)
            writer.write(hello)
            assert await asyncio.wait_for(reader.readline(), 5) == b"D\n"
            assert await asyncio.wait_for(reader.readexactly(len(hello)), 5) == hello
            writer.close()
    finally:
        await engine.shutdown(1)


async def test_no_default_backend_closes(ca: trustme.CA, servers: Any) -> None:
    port_a = await servers(b"A", tls_server_context(ca, "a.example.com"))
    engine = Engine(passthrough_config({"a": port_a, "b": port_a}, None))
    await engine.start()
    try:
        _, port = engine.bound["tls"]
        for payload in (_client_hello("nomatch.org"), b"\x16\x03\x01\x00\x05hello-not-a-hello"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        # the one that matches still works
        line, _ = await tls_hello(port, "a.example.com", client_context(ca))
        assert line == b"A\n"
    finally:
        await engine.shutdown(1)


async def test_hello_arriving_byte_by_byte(ca: trustme.CA, servers: Any) -> None:
    port_a = await servers(b"A")
    port_b = await servers(b"B")
    engine = Engine(passthrough_config({"a": port_a, "b": port_b}, None))
    await engine.start()
    try:
        _, port = engine.bound["tls"]
        hello = _client_hello("q.example.com")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(0, len(hello), 50):
            writer.write(hello[i : i + 50])
            await writer.drain()
            await asyncio.sleep(0.001)
        assert await asyncio.wait_for(reader.readline(), 5) == b"B\n"
        assert await asyncio.wait_for(reader.readexactly(len(hello)), 5) == hello
        writer.close()
    finally:
        await engine.shutdown(1)


def _client_hello(name: str | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA store to load: only the hello is used
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# ------------------------------------------------------------------ TLS termination (net.tls)


async def test_tcp_listener_terminates_tls_with_sni_certificates(
    ca: trustme.CA, certs: dict[str, tuple[str, str]], servers: Any
) -> None:
    port_plain = await servers(b"P")
    (a_cert, a_key), (c_cert, c_key) = certs["a"], certs["c"]
    cfg = load_config_text(
        f"""
listeners:
  - name: tls
    protocol: tcp
    bind: 127.0.0.1:0
    backend: p
    tls:
      certificates:
        - {{cert: "{a_cert}", key: "{a_key}"}}
        - {{cert: "{c_cert}", key: "{c_key}"}}
backends:
  p:
    servers: [{{address: 127.0.0.1:{port_plain}}}]
"""
    )
    engine = Engine(cfg)
    await engine.start()
    try:
        _, port = engine.bound["tls"]
        ctx = client_context(ca)
        for name, expect in (
            ("a.example.com", "a.example.com"),
            ("alt.example.org", "c.example.org"),
        ):
            line, cert = await tls_hello(port, name, ctx)
            assert line == b"P\n"
            assert ("DNS", expect) in cert["subjectAltName"]
        # no SNI: the first certificate (verification of the name off, chain still checked)
        ctx_nohost = client_context(ca)
        ctx_nohost.check_hostname = False
        line, cert = await tls_hello(port, None, ctx_nohost)
        assert ("DNS", "a.example.com") in cert["subjectAltName"]
        # TLS 1.2 works too; a TCP listener names no ALPN protocol
        tls12 = client_context(ca)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        tls12.set_alpn_protocols(["http/1.1"])
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls12, server_hostname="a.example.com"
        )
        assert await asyncio.wait_for(reader.readline(), 5) == b"P\n"
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.2"
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
        writer.close()
    finally:
        await engine.shutdown(1)


def test_server_context_reads_names_and_rejects_bad_files(
    certs: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    assert certificate_names(certs["b"][0]) == ["*.example.com"]
    assert certificate_names(certs["c"][0]) == ["c.example.org", "alt.example.org"]
    cfg = SimpleNamespace(certificates=[SimpleNamespace(cert=c, key=k) for c, k in certs.values()])
    ctx = server_context(cfg)
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    selector = ctx.sni_callback
    assert selector is not None
    assert selector.context_for("x.example.com") is selector.contexts[1]  # type: ignore[attr-defined]
    assert selector.context_for("a.example.com") is selector.contexts[0]  # type: ignore[attr-defined]
    assert selector.context_for("unknown.net") is selector.contexts[0]  # type: ignore[attr-defined]
    missing = SimpleNamespace(
        certificates=[SimpleNamespace(cert=str(tmp_path / "nope.pem"), key=certs["a"][1])]
    )
    with pytest.raises(TLSConfigError, match="nope.pem"):
        server_context(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    bad = SimpleNamespace(certificates=[SimpleNamespace(cert=str(garbage), key=certs["a"][1])])
    with pytest.raises(TLSConfigError, match="garbage.pem"):
        server_context(bad)
    mismatched = SimpleNamespace(
        certificates=[SimpleNamespace(cert=certs["a"][0], key=certs["b"][1])]
    )
    with pytest.raises(TLSConfigError, match="cannot load certificate"):
        server_context(mismatched)


async def test_hash_on_sni_keeps_a_name_on_one_server(servers: Any) -> None:
    """`hash_on: sni` (extension), from the config file: one server name always reaches the
    same server; different names spread."""
    ports = [await servers(name) for name in (b"S0", b"S1", b"S2")]
    text = f"""
listeners:
  - name: tls
    protocol: tcp
    bind: 127.0.0.1:0
    sni_routes:
      - {{server_name: "*.example.com", backend: h}}
backends:
  h:
    algorithm: consistent_hash
    hash_on: sni
    servers:
{chr(10).join(f"      - {{address: 127.0.0.1:{p}, name: s{i}}}" for i, p in enumerate(ports))}
"""
    cfg = load_config_text(text)
    assert cfg.backends["h"].hash_on == "sni"
    engine = Engine(cfg)
    await engine.start()
    try:
        _, port = engine.bound["tls"]

        async def land(name: str) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_client_hello(name))
            try:
                return await asyncio.wait_for(reader.readline(), 5)
            finally:
                writer.close()

        seen: dict[str, set[bytes]] = {}
        for _ in range(3):
            for i in range(12):
                name = f"host{i}.example.com"
                seen.setdefault(name, set()).add(await land(name))
        assert all(len(v) == 1 for v in seen.values()), seen
        assert len(set().union(*seen.values())) >= 2  # names spread over servers
    finally:
        await engine.shutdown(1)


def _write_cert(ca: trustme.CA, cert_path: Path, key_path: Path, *names: str) -> bytes:
    """Issue a certificate for `names` into the two files; returns the leaf's DER bytes."""
    cert = ca.issue_cert(*names)
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


async def test_tcp_tls_reload_rereads_certificates_and_keeps_connections(
    ca: trustme.CA, servers: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload re-reads a TLS-terminating TCP listener's certificate files: new handshakes
    get the new certificate (rewritten in place, or a new path), an open TLS connection
    through the listener carries on, and a broken file keeps the old certificates."""
    port_plain = await servers(b"P")
    cert_path, key_path = tmp_path / "l.pem", tmp_path / "l.key"
    first = _write_cert(ca, cert_path, key_path, "a.example.com")

    def tls_config(cert: Path, key: Path) -> Any:
        return load_config_text(
            f"""
listeners:
  - name: tls
    protocol: tcp
    bind: 127.0.0.1:0
    backend: p
    tls:
      certificates:
        - {{cert: "{cert}", key: "{key}"}}
backends:
  p:
    servers: [{{address: 127.0.0.1:{port_plain}}}]
"""
        )

    async def served_cert(port: int) -> bytes:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(ca), server_hostname="a.example.com"
            ),
            5,
        )
        try:
            assert await asyncio.wait_for(reader.readline(), 5) == b"P\n"
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            assert isinstance(der, bytes)
            return der
        finally:
            writer.close()

    engine = Engine(tls_config(cert_path, key_path))
    await engine.start()
    try:
        _, port = engine.bound["tls"]
        assert await served_cert(port) == first
        # an open connection through the listener, across every reload below
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(ca), server_hostname="a.example.com"
        )
        assert await asyncio.wait_for(reader.readline(), 5) == b"P\n"

        async def still_open(payload: bytes) -> None:
            writer.write(payload)
            assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload

        # rewritten in place (a renewal): the same config, new file contents
        second = _write_cert(ca, cert_path, key_path, "a.example.com", "www.example.com")
        assert second != first
        await engine.reload(tls_config(cert_path, key_path))
        assert await served_cert(port) == second
        await still_open(b"after renewal")
        # moved to new files
        new_cert, new_key = tmp_path / "n.pem", tmp_path / "n.key"
        third = _write_cert(ca, new_cert, new_key, "a.example.com")
        await engine.reload(tls_config(new_cert, new_key))
        assert await served_cert(port) == third
        await still_open(b"after move")
        # a file that breaks after the config was checked (a renewal half-written): the
        # old certificates stay, and the error names the file
        broken = tls_config(new_cert, new_key)
        new_cert.write_text("-----BEGIN CERTIFICATE-----\ntruncated\n")
        with caplog.at_level("ERROR", logger="steelyard"):
            await engine.reload(broken)
        assert "keeps its certificates" in caplog.text and "n.pem" in caplog.text
        assert await served_cert(port) == third
        await still_open(b"after a bad reload")
        writer.close()
    finally:
        await engine.shutdown(1)
