"""HTTPS on the node's listener: the server's TLS context, and uvicorn's HTTP/1.1 protocol
with the ASGI ``tls`` extension (the client certificate).

:func:`server_context` builds the listener's context from the ``tls`` section at start,
so a missing or unusable file stops the node with a message naming the key and the file
(``tether serve`` exits 2), never at the first connection.

uvicorn does not report the TLS peer certificate to the application. This protocol adds
``scope["extensions"]["tls"] = {"client_cert_chain": [PEM], "tls_version": ...}`` (the
ASGI TLS extension) to every request of a connection whose client presented a
certificate, so that certificate-bound tokens (RFC 8705) can be checked by the broker.
Use it with ``uvicorn.Config(..., http=TlsH11Protocol, ssl_cert_reqs=ssl.CERT_OPTIONAL,
ssl_ca_certs=<Tether's X.509 CA>)``.

Security decisions: TLS 1.2 at least; client certificates are optional and verified
against Tether's own X.509 CA only (``tls.client_certificates: optional``), so a
certificate-bound token works with the certificate it is bound to and an agent with a
DPoP-bound token needs none; an encrypted key is refused (no passphrase prompt can block
the start). The certificate is read from the TLS connection after the handshake
(which verified it against ``ssl_ca_certs``), once per connection; nothing the client
sends in headers can set or replace it, and a scope that already carries a ``tls``
extension is overwritten, never merged.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from tether.proxy.http.config import ListenerTlsConfig


class ListenerTlsError(Exception):
    """The ``tls`` section cannot serve HTTPS; the message names the key and the file."""


def server_context(config: ListenerTlsConfig, data_dir: Path, client_ca_pem: str) -> ssl.SSLContext:
    """The listener's TLS context (``config.enabled`` must be true)."""
    assert config.cert_file is not None
    cert = data_dir / config.cert_file
    key = data_dir / config.key_file if config.key_file is not None else None
    for name, path in (("tls.cert_file", cert), ("tls.key_file", key)):
        if path is not None and not path.is_file():
            raise ListenerTlsError(f"{name}: {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    files = f"{cert}" if key is None else f"{cert} and {key}"
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except ssl.SSLError as error:
        raise ListenerTlsError(
            f"tls.cert_file, tls.key_file: {files}: not a PEM certificate chain and its "
            f"unencrypted private key ({error.reason or error})"
        ) from None
    except OSError as error:
        raise ListenerTlsError(f"tls: cannot read {files}: {error.strerror or error}") from None
    if config.client_certificates == "optional":
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata=client_ca_pem)
    return context


def _no_passphrase() -> bytes:
    return b""


class TlsH11Protocol(H11Protocol):
    """H11Protocol that reports the client certificate in the ASGI ``tls`` extension."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        extension = tls_extension(transport)
        if extension is not None:
            self.app = _with_tls(self.app, extension)


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI ``tls`` extension of a TLS connection whose client sent a certificate."""
    ssl_object: Any = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return {
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)],
        "tls_version": ssl_object.version(),
        "cipher_suite": (ssl_object.cipher() or ("",))[0],
    }


def _with_tls(app: ASGIApp, extension: dict[str, Any]) -> ASGIApp:
    async def with_tls(scope: Scope, receive: Receive, send: Send) -> None:
        scope["extensions"] = {**(scope.get("extensions") or {}), "tls": extension}
        await app(scope, receive, send)

    return with_tls
