"""How an agent proves itself in the PostgreSQL password exchange.

The broker asks for a cleartext password (inside TLS) and reads one of two forms:

* ``<access token>``: a **certificate-bound** token (RFC 8705). The TLS client certificate
  of the connection, which the handshake verified against Tether's client CA, must be the
  one the token is bound to (``IdentityService.authenticate`` with
  ``peer_certificate_der``).
* ``<access token> <DPoP proof>`` (one space): a **DPoP-bound** token with a proof (RFC 9449)
  made for this login: ``htm`` is :data:`DPOP_METHOD` (``POSTGRES``) and ``htu`` is
  ``https://<public address>/postgres/<database>`` (:func:`dpop_htu`), ``ath`` the token's
  hash. The proof's ``jti`` is recorded in the identity service's replay cache, so a proof
  works once, within its ``iat`` window, for this broker address and this database only.

Security decisions:

* **A bare bearer never works** (DESIGN invariant 3): a token alone is accepted only with
  the client certificate it is bound to; a DPoP-bound token only with a fresh proof by its
  key. Anything else (no TLS certificate, a proof for another database or address, a
  replayed proof, extra fields) is ``28P01``.
* The password message is at most 16 KiB (:data:`~tether.proxy.pg.codec.MAX_PASSWORD_MESSAGE`)
  and must be ASCII (tokens and proofs are base64url and dots).
* Failures are reported to the client without saying which check failed; the audit trail
  (``token.refused``) and the debug log say why.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

from tether.identity.dpop import make_proof
from tether.identity.issued import Presented

if TYPE_CHECKING:
    from tether.identity import jose

DPOP_METHOD: Final = "POSTGRES"


class LoginRefused(Exception):
    """The password does not prove an agent; ``sqlstate`` is what the client is told."""

    def __init__(self, message: str, sqlstate: str = "28P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def dpop_htu(public_address: str, database: str) -> str:
    """The ``htu`` a DPoP proof for a login to ``database`` names."""
    return f"https://{public_address}/postgres/{quote(database, safe='')}"


def parse_password(
    password: bytes, *, database: str, public_address: str, peer_der: bytes | None
) -> Presented:
    """The :class:`Presented` for a password message body (NUL-terminated)."""
    if not password.endswith(b"\x00") or b"\x00" in password[:-1]:
        raise LoginRefused("malformed password message", "08P01")
    try:
        text = password[:-1].decode("ascii")
    except UnicodeDecodeError:
        raise LoginRefused("the password is not an access token") from None
    parts = text.split(" ")
    if len(parts) == 1 and parts[0]:
        return Presented(parts[0], DPOP_METHOD, dpop_htu(public_address, database), None, peer_der)
    if len(parts) == 2 and parts[0] and parts[1]:
        htu = dpop_htu(public_address, database)
        return Presented(parts[0], DPOP_METHOD, htu, parts[1], peer_der)
    raise LoginRefused("the password is not an access token")


def dpop_password(
    token: str,
    key: jose.PrivateKey,
    *,
    public_address: str,
    database: str,
    now: float | None = None,
) -> str:
    """The password a DPoP-bound agent sends: its token and a fresh proof for this login."""
    proof = make_proof(
        key,
        DPOP_METHOD,
        dpop_htu(public_address, database),
        now=time.time() if now is None else now,
        access_token=token,
    )
    return f"{token} {proof}"
