"""Server-side TLS for listeners: several certificates, chosen by SNI.

How this works: every `{cert, key}` pair of a listener's `tls.certificates` gets its own
SSLContext with the same settings. The names each certificate is valid for are read from the
certificate itself (subjectAltName DNS names; the subject CN when there is no SAN), including
wildcards. A root context is handed to the server; its `sni_callback` (called by OpenSSL on
every ClientHello, with or without SNI) swaps the handshake over to the context of the
certificate that matches the client's server name (exact names first, then a one-label `*.`
wildcard, as in core.sni.SniTable). Clients that send no SNI, or a name no certificate covers,
get the first certificate (the default). On reload, reload_certificates() replaces the
selector's table: the root context stays, so the listening socket and open connections are
untouched.

TLS 1.2 and 1.3 only; for TLS 1.2, ECDHE key exchange with AEAD ciphers only (TLS 1.3 suites
are all AEAD). ALPN offers `http/1.1` on HTTP listeners and nothing on TCP listeners (the
bytes inside are not ours to name).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from steelyard.core.sni import SniTable

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"


class TLSConfigError(ValueError):
    """A certificate or key that cannot be used; the message names the file."""


def certificate_names(cert_path: str) -> list[str]:
    """DNS names (lower case, wildcards kept) the leaf certificate of a PEM file is valid for."""
    try:
        with open(cert_path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise TLSConfigError(f"cannot read certificate {cert_path}: {exc.strerror or exc}") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TLSConfigError(f"{cert_path} holds no PEM certificate: {exc}") from exc
    if not certs:
        raise TLSConfigError(f"{cert_path} holds no PEM certificate")
    leaf = certs[0]
    names: list[str] = []
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    if not names:
        for attr in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            value = attr.value
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            names.append(value.lower().rstrip("."))
    return names


def _base_context(alpn: Sequence[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def _load(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    for path, what in ((cert, "certificate"), (key, "key")):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TLSConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"cannot load certificate {cert} with key {key}: {exc.reason or exc}"
        ) from exc


class CertificateSelector:
    """The SNI callback: server name -> the context holding the matching certificate.

    It runs on every handshake (OpenSSL calls it without SNI too, with None) and always
    switches to the selected context, so `replace()` swaps every certificate, the default
    included, for the handshakes that follow (a reload), while the SSLContext the server
    was created with stays the same object and no connection is dropped."""

    __slots__ = ("contexts", "table", "names", "alpn")

    def __init__(
        self, contexts: list[ssl.SSLContext], names: list[list[str]], alpn: Sequence[str] = ()
    ) -> None:
        self.alpn = tuple(alpn)
        self.contexts = contexts
        self.names = names
        self.table = _table(names)

    def replace(self, contexts: list[ssl.SSLContext], names: list[list[str]]) -> None:
        self.table = _table(names)
        self.names = names
        self.contexts = contexts

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        found = self.table.lookup(server_name)
        return self.contexts[int(found)] if found is not None else self.contexts[0]

    def __call__(self, sslobj: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        chosen = self.context_for(server_name)
        if chosen is not ctx:
            sslobj.context = chosen
        return None

    def __repr__(self) -> str:
        return f"CertificateSelector({self.names})"


def _table(names: list[list[str]]) -> SniTable:
    return SniTable(
        (name, str(index)) for index, cert_names in enumerate(names) for name in cert_names
    )


def _contexts(
    tls_cfg: Any, protocols: tuple[str, ...]
) -> tuple[list[ssl.SSLContext], list[list[str]]]:
    pairs = [(c.cert, c.key) for c in tls_cfg.certificates]
    if not pairs:
        raise TLSConfigError("tls: at least one certificate is required")
    contexts: list[ssl.SSLContext] = []
    names: list[list[str]] = []
    for cert, key in pairs:
        ctx = _base_context(protocols)
        _load(ctx, cert, key)
        contexts.append(ctx)
        names.append(certificate_names(cert))
    return contexts, names


def server_context(tls_cfg: Any, alpn: Iterable[str] | None = ("http/1.1",)) -> ssl.SSLContext:
    """An SSLContext for a listener's `tls:` block (pass alpn=() for TCP listeners).

    The returned context's certificates can be replaced later with reload_certificates()."""
    protocols = tuple(alpn or ())
    contexts, names = _contexts(tls_cfg, protocols)
    root = _base_context(protocols)
    _load(root, tls_cfg.certificates[0].cert, tls_cfg.certificates[0].key)
    root.sni_callback = CertificateSelector(contexts, names, protocols)
    return root


def reload_certificates(root: ssl.SSLContext, tls_cfg: Any) -> None:
    """Re-read a listener's certificate files into a context made by server_context():
    new handshakes get the new certificates, open connections carry on. Raises
    TLSConfigError (naming the file) and leaves the old certificates in place on failure."""
    selector = root.sni_callback
    if not isinstance(selector, CertificateSelector):
        raise TLSConfigError("this TLS context was not made by server_context()")
    contexts, names = _contexts(tls_cfg, selector.alpn)
    selector.replace(contexts, names)
