"""uvicorn's HTTP/1.1 protocol with the ASGI ``tls`` extension: the client certificate.

uvicorn does not report the TLS peer certificate to the application. This protocol adds
``scope["extensions"]["tls"] = {"client_cert_chain": [PEM], "tls_version": ...}`` (the
ASGI TLS extension) to every request of a connection whose client presented a
certificate, so that certificate-bound tokens (RFC 8705) can be checked by the broker.
Use it with ``uvicorn.Config(..., http=TlsH11Protocol, ssl_cert_reqs=ssl.CERT_OPTIONAL,
ssl_ca_certs=<Tether's X.509 CA>)``.

Security decisions: the certificate is read from the TLS connection after the handshake
(which verified it against ``ssl_ca_certs``), once per connection; nothing the client
sends in headers can set or replace it, and a scope that already carries a ``tls``
extension is overwritten, never merged.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol


class TlsH11Protocol(H11Protocol):
    """H11Protocol that reports the client certificate in the ASGI ``tls`` extension."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object: Any = transport.get_extra_info("ssl_object")
        if not isinstance(ssl_object, ssl.SSLObject):
            return
        der = ssl_object.getpeercert(binary_form=True)
        if der:
            extension = {
                "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)],
                "tls_version": ssl_object.version(),
                "cipher_suite": (ssl_object.cipher() or ("",))[0],
            }
            self.app = _with_tls(self.app, extension)


def _with_tls(app: ASGIApp, extension: dict[str, Any]) -> ASGIApp:
    async def with_tls(scope: Scope, receive: Receive, send: Send) -> None:
        scope["extensions"] = {**(scope.get("extensions") or {}), "tls": extension}
        await app(scope, receive, send)

    return with_tls
