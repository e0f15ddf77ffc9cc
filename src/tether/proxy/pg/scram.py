"""Client side of PostgreSQL password authentication: SCRAM-SHA-256 (RFC 5802/7677) and md5.

The broker logs in to a target with the credential from the vault; the agent never sees it.

Security decisions:

* **The server is authenticated too.** The SCRAM exchange ends only when the server's
  final message carries the expected ``ServerSignature`` (compared in constant time); a
  server that does not know the password's verifier cannot complete the login.
* **Bounds on what the server asks.** The server nonce must extend the client's and be
  printable ASCII without commas; the iteration count must be between
  :data:`MIN_ITERATIONS` and :data:`MAX_ITERATIONS`, so a hostile server can neither make
  the broker burn CPU nor weaken the verifier below PostgreSQL's own floor.
* **No channel binding** (``SCRAM-SHA-256-PLUS`` is not offered): the TLS layer verifies
  the server's certificate (``tls_mode``), which is what binds the session to the server.
* **Passwords as UTF-8 bytes** (no SASLprep): the credentials Tether generates are ASCII,
  for which SASLprep is the identity.
* **md5** is PostgreSQL's legacy ``md5(md5(password || user) || salt)``; cleartext
  passwords are sent only over TLS (:mod:`tether.proxy.pg.upstream`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Final

MECHANISM: Final = "SCRAM-SHA-256"
MIN_ITERATIONS: Final = 1000
MAX_ITERATIONS: Final = 1_000_000
_GS2_HEADER: Final = "n,,"


class ScramError(Exception):
    """The server's SCRAM messages are malformed or it failed to prove itself."""


def _attributes(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1 or key in out:
            raise ScramError("malformed SCRAM message")
        out[key] = value
    return out


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


class ScramClient:
    """One SCRAM-SHA-256 exchange: ``first``, ``final(server_first)``, ``verify(server_final)``."""

    def __init__(self, password: str, *, nonce: str | None = None, username: str = "") -> None:
        # PostgreSQL ignores the SCRAM user name (the startup packet names the user).
        self._password = password.encode("utf-8")
        self._nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode("ascii")
        self._first_bare = f"n={username},r={self._nonce}"
        self._server_signature: bytes | None = None

    def first(self) -> bytes:
        return (_GS2_HEADER + self._first_bare).encode("ascii")

    def final(self, server_first: bytes) -> bytes:
        try:
            text = server_first.decode("ascii")
        except UnicodeDecodeError:
            raise ScramError("SCRAM server-first message is not ASCII") from None
        attrs = _attributes(text)
        nonce, salt_b64, count = attrs.get("r", ""), attrs.get("s", ""), attrs.get("i", "")
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise ScramError("the server's nonce does not extend ours")
        if not nonce.isprintable():
            raise ScramError("malformed server nonce")
        if not count.isdigit() or not MIN_ITERATIONS <= int(count) <= MAX_ITERATIONS:
            raise ScramError("SCRAM iteration count out of bounds")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
        except ValueError:
            raise ScramError("malformed SCRAM salt") from None
        salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, int(count))
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c={base64.b64encode(_GS2_HEADER.encode()).decode()},r={nonce}"
        auth_message = f"{self._first_bare},{text},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode("ascii")

    def verify(self, server_final: bytes) -> None:
        if self._server_signature is None:
            raise ScramError("SCRAM final message before the exchange")
        try:
            attrs = _attributes(server_final.decode("ascii"))
        except UnicodeDecodeError:
            raise ScramError("SCRAM server-final message is not ASCII") from None
        if "e" in attrs:
            raise ScramError(f"the server refused the SCRAM proof: {attrs['e']}")
        try:
            claimed = base64.b64decode(attrs.get("v", ""), validate=True)
        except ValueError:
            raise ScramError("malformed SCRAM server signature") from None
        if not hmac.compare_digest(claimed, self._server_signature):
            raise ScramError("the server's SCRAM signature is wrong")


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The md5 ``PasswordMessage`` payload (NUL-terminated)."""
    inner = hashlib.md5(password.encode() + user.encode(), usedforsecurity=False).hexdigest()
    outer = hashlib.md5(inner.encode() + salt, usedforsecurity=False).hexdigest()
    return b"md5" + outer.encode("ascii") + b"\x00"
