"""Certificate-bound access tokens (RFC 8705): ``cnf["x5t#S256"]`` against the TLS peer.

``x5t_s256(der)`` is the base64url SHA-256 of a certificate's DER encoding, the value
put in a token's ``cnf`` at issuance; ``check_binding`` compares it with the client
certificate of the TLS connection the token arrived on.

Security decisions:

* **The hash covers the whole DER certificate**, as RFC 8705 section 3.1 defines it, so
  a reissued certificate for the same key does not inherit the binding. The bytes are
  those the TLS stack verified; this module does not parse them and does no chain
  validation, which belongs to the TLS layer's client-certificate verification.
* **Fail closed.** No peer certificate, a token bound to a DPoP key instead, or a
  different certificate: each is a ``BindingMismatch`` (``invalid_token``, RFC 8705
  section 3). The comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac

from tether.identity.claims import Claims
from tether.identity.errors import BindingMismatch
from tether.identity.jose import b64url_encode


def x5t_s256(cert_der: bytes) -> str:
    """The RFC 8705 ``x5t#S256`` confirmation value of a DER-encoded certificate."""
    if not cert_der:
        raise ValueError("empty certificate")
    return b64url_encode(hashlib.sha256(cert_der).digest())


def check_binding(claims: Claims, peer_cert_der: bytes | None) -> None:
    """Raise ``BindingMismatch`` unless the token is bound to exactly this certificate."""
    bound = claims.cnf.x5t_s256
    if bound is None:
        raise BindingMismatch("token is not bound to a client certificate")
    if not peer_cert_der:
        raise BindingMismatch("no client certificate presented")
    presented = x5t_s256(peer_cert_der).encode("ascii")
    if not hmac.compare_digest(presented, bound.encode("utf-8", "surrogatepass")):
        raise BindingMismatch("client certificate does not match the token binding")
