"""Password hashing with argon2id (RFC 9106), through argon2-cffi.

Security decisions:

* argon2id with the library's defaults (RFC 9106's second recommended profile: 64 MiB,
  3 passes): the hash string carries its parameters, so raising them later only makes new
  hashes stronger, and :func:`needs_rehash` tells the login path to upgrade an old one.
* A verification that fails for any reason (a wrong password, a malformed or foreign hash)
  is ``False``: it never raises into the login path and never reveals which it was.
* Passwords are at least ``MIN_LENGTH`` characters and at most ``MAX_LENGTH`` (a very long
  password costs nothing more with argon2, but a bound keeps request bodies small).
"""

from __future__ import annotations

from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH: Final = 12
MAX_LENGTH: Final = 1024
_HASHER: Final = PasswordHasher()


class WeakPassword(ValueError):
    """The password is too short or too long."""


def check_strength(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"a password has at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"a password has at most {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    """The argon2id hash string of ``password`` (checked for strength first)."""
    check_strength(password)
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """True only when ``password`` matches the stored hash."""
    if stored is None or len(password) > MAX_LENGTH:
        return False
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with weaker parameters than today's."""
    try:
        return _HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True
