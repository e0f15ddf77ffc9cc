"""Errors of Tether's own credentials (access tokens, DPoP proofs, certificate binding).

::

    CredentialError            401, a credential presented to Tether is refused
    ├── TokenInvalid           invalid_token       malformed, bad signature, wrong iss/aud...
    │   ├── TokenExpired       invalid_token       past exp (or not yet nbf: TokenInvalid)
    │   ├── TokenRevoked       invalid_token       revoked; .reason says why
    │   └── BindingMismatch    invalid_token       PoP key or client certificate is not the
    │                                              one the token is bound to (cnf)
    └── DPoPInvalid            invalid_dpop_proof  the DPoP proof itself is refused
        └── ReplayDetected     invalid_dpop_proof  its jti was already used

    IssuanceError (ValueError) a request to issue a credential that Tether refuses
    KeyRingError (ValueError)  signing keys that cannot be loaded or used

Every ``CredentialError`` carries its wire mapping: ``status`` (401), ``code`` (the
``error`` parameter of ``WWW-Authenticate``, RFC 6750 section 3.1 and RFC 9449 section
7.1) and ``reason``, a short fixed text for ``error_description`` and the audit trail.
``challenge()`` formats the header value.

Security decisions:

* **Reasons are written by Tether, never copied from the request.** A reason names the
  check that failed ("unknown signing key", "htm does not match"), not the offending
  value, so nothing an attacker sends is echoed into a response header or a log line.
  ``challenge`` still escapes quotes and backslashes, and drops anything but printable ASCII.
* **Binding failures are ``invalid_token``**, as RFC 9449 (section 7.1) and RFC 8705
  (section 3) ask: the token is not usable by this presenter, whatever the proof.
* **Expired and revoked are distinct classes with the same code**: the client learns no
  more than ``invalid_token`` plus the reason, while the audit trail and metrics can tell
  them apart. Server nonces (``use_dpop_nonce``) are not issued yet; when they are, they
  become one more ``DPoPInvalid`` subclass with that code.
"""

from __future__ import annotations

from typing import ClassVar


class CredentialError(Exception):
    """A presented credential is refused; maps to HTTP 401 with a ``WWW-Authenticate``."""

    status: ClassVar[int] = 401
    code: ClassVar[str] = "invalid_token"
    default_reason: ClassVar[str] = "invalid credential"

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason or self.default_reason
        super().__init__(self.reason)

    def challenge(self, scheme: str = "DPoP", *, algs: str | None = None) -> str:
        """The ``WWW-Authenticate`` value: ``DPoP error="...", error_description="..."``."""
        parts = [f'{scheme} error="{self.code}"', f'error_description="{_quote(self.reason)}"']
        if algs:
            parts.append(f'algs="{_quote(algs)}"')
        return ", ".join(parts)


class TokenInvalid(CredentialError):
    """The access token is malformed, forged, misaddressed or otherwise unacceptable."""

    default_reason = "invalid access token"


class TokenExpired(TokenInvalid):
    """The access token is past its ``exp`` (beyond the verifier's leeway)."""

    default_reason = "access token expired"


class TokenRevoked(TokenInvalid):
    """The access token (or its agent, task or key) was revoked; ``reason`` says why."""

    default_reason = "access token revoked"


class BindingMismatch(TokenInvalid):
    """The proof-of-possession key or client certificate is not the one in ``cnf``."""

    default_reason = "token is bound to another key"


class DPoPInvalid(CredentialError):
    """The DPoP proof is missing, malformed, wrongly signed or does not fit the request."""

    code = "invalid_dpop_proof"
    default_reason = "invalid DPoP proof"


class ReplayDetected(DPoPInvalid):
    """The DPoP proof's ``jti`` was already seen within its validity window."""

    default_reason = "DPoP proof replayed"


class IssuanceError(ValueError):
    """Tether refuses to issue a credential as asked (lifetime above the cap, bad claims)."""


class KeyRingError(ValueError):
    """Signing keys that cannot be loaded or used (bad export, inconsistent key ring)."""


def _quote(text: str) -> str:
    clean = "".join(c for c in text if " " <= c <= "~")
    return clean.replace("\\", "\\\\").replace('"', '\\"')
