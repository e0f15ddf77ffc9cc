"""Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP), with the standard library.

Parameters are the ones every authenticator app uses: HMAC-SHA1, 30-second steps, 6
digits, a 160-bit secret shown as base32 (and as an ``otpauth://`` URI for QR codes).

Security decisions:

* One step of clock drift either way is accepted, no more.
* **A code is used once.** :func:`verify` returns the step that matched; the caller stores
  it and passes it back as ``last_step``, and no step at or before it is accepted again, so
  a code seen over a shoulder or in a log cannot be replayed within its window.
* Codes are compared with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from typing import Final
from urllib.parse import quote

STEP_SECONDS: Final = 30
DIGITS: Final = 6
DRIFT_STEPS: Final = 1
SECRET_BYTES: Final = 20


def new_secret() -> str:
    """A fresh base32 secret (no padding), as authenticator apps take it."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def _key(secret: str) -> bytes:
    text = secret.strip().replace(" ", "").upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def hotp(secret: str, counter: int) -> str:
    """RFC 4226 HOTP value of ``counter``."""
    mac = hmac.new(_key(secret), struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**DIGITS).zfill(DIGITS)


def code_at(secret: str, unix_time: float) -> str:
    """The code valid at ``unix_time``."""
    return hotp(secret, int(unix_time) // STEP_SECONDS)


def verify(secret: str, code: str, unix_time: float, last_step: int | None = None) -> int | None:
    """The step ``code`` is valid for (within the drift, after ``last_step``), else None."""
    code = code.strip()
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return None
    now_step = int(unix_time) // STEP_SECONDS
    for step in range(now_step - DRIFT_STEPS, now_step + DRIFT_STEPS + 1):
        if last_step is not None and step <= last_step:
            continue
        if hmac.compare_digest(hotp(secret, step), code):
            return step
    return None


def provisioning_uri(secret: str, user: str, issuer: str = "Tether") -> str:
    """The ``otpauth://totp/...`` URI authenticator apps read (usually from a QR code)."""
    label = quote(f"{issuer}:{user}", safe=":@")
    return f"otpauth://totp/{label}?secret={secret}&issuer={quote(issuer)}&digits={DIGITS}&period={STEP_SECONDS}"
