"""Envelope encryption: each value under its own data key, wrapped by the master key.

Format, version 1 (``encrypt`` returns these bytes; ``encrypt_text`` their unpadded
base64url, for text columns)::

    offset  size  field
         0     1  version (0x01)
         1     8  master key id (MasterKey.key_id) that wrapped the data key
         9    12  nonce of the wrap
        21    48  the data key, AES-256-GCM encrypted under the KEK (32 bytes + 16 tag)
        69    12  nonce of the value
        81   n+16 the value, AES-256-GCM encrypted under the data key (n bytes + 16 tag)

Security decisions:

* **A fresh random 256-bit data key per value** (AES-256-GCM), so no two values share a
  key and a nonce, whatever the number of values; the master key only ever encrypts
  32-byte data keys.
* **The wrap is AES-256-GCM, not AES-KW**, because GCM authenticates associated data:
  the wrapped data key is bound to the record as well as the value is. The key-encryption
  key is ``HKDF(master, "tether/envelope/v1/kek")``, not the master key itself, so the
  master key never meets a cipher directly. Random 96-bit wrap nonces are fine for far
  more wraps than a credential store will ever make (NIST SP 800-38D's 2^32 bound).
* **Associated data binds a ciphertext to its record**: the version, the key id, and the
  caller's ``purpose`` ("vault.credential") and ``name`` ("billing-db"), each
  length-prefixed so that no two (purpose, name) pairs encode alike. A ciphertext copied
  to another record, or decrypted under the wrong purpose, fails authentication exactly
  as a flipped bit does.
* **Every failure is one ``DecryptionError``** whose message says what went wrong in
  terms of the cause an operator can act on (not an envelope, unknown version, another
  master key, authentication failed). It never carries plaintext or key material. The
  key id in the header makes "wrong master key" distinguishable from "tampered" (a
  tampered key id still fails authentication, since it is part of the associated data).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tether.crypto.masterkey import MasterKey
from tether.crypto.revisions import RowRevisions
from tether.crypto.seal import RowSealer

VERSION: Final = 1
_KEK_INFO: Final = b"tether/envelope/v1/kek"
_AD_LABEL: Final = b"tether/envelope/v1\x00"
_KEY_ID_SIZE: Final = 8
_NONCE_SIZE: Final = 12
_TAG_SIZE: Final = 16
_DEK_SIZE: Final = 32
_HEADER_SIZE: Final = 1 + _KEY_ID_SIZE
_WRAPPED_SIZE: Final = _DEK_SIZE + _TAG_SIZE
_MIN_SIZE: Final = _HEADER_SIZE + 2 * _NONCE_SIZE + _WRAPPED_SIZE + _TAG_SIZE
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


class DecryptionError(Exception):
    """A ciphertext that cannot be decrypted: malformed, altered, misplaced or foreign."""


class EnvelopeCipher:
    """Encrypts and decrypts values under one master key; safe to share between threads."""

    __slots__ = ("_kek", "_key_id", "sealer")

    def __init__(self, master_key: MasterKey) -> None:
        self._key_id = master_key.key_id
        self._kek = AESGCM(master_key.derive(_KEK_INFO))
        # Row seals under the same master key, with a key of their own (tether.crypto.seal):
        # whatever holds the cipher holds the master key's services, and nothing more.
        self.sealer = RowSealer(master_key)

    def __repr__(self) -> str:
        return f"EnvelopeCipher(key_id={self._key_id.hex()})"

    def witnessed(self, revisions: RowRevisions) -> EnvelopeCipher:
        """The same cipher, its sealer remembering in ``revisions`` the newest revision of
        each row it admits (:meth:`RowSealer.witnessed`): a node's, from its start."""
        cipher = EnvelopeCipher.__new__(EnvelopeCipher)
        cipher._key_id, cipher._kek = self._key_id, self._kek
        cipher.sealer = self.sealer.witnessed(revisions)
        return cipher

    @property
    def key_id(self) -> bytes:
        """The id of the master key that this cipher wraps data keys with."""
        return self._key_id

    def encrypt(self, plaintext: bytes, *, purpose: str, name: str) -> bytes:
        """``plaintext`` as a version-1 envelope bound to ``(purpose, name)``."""
        header = bytes([VERSION]) + self._key_id
        ad = header + _context(purpose, name)
        dek = AESGCM.generate_key(bit_length=256)
        wrap_nonce = secrets.token_bytes(_NONCE_SIZE)
        data_nonce = secrets.token_bytes(_NONCE_SIZE)
        wrapped = self._kek.encrypt(wrap_nonce, dek, ad)
        body = AESGCM(dek).encrypt(data_nonce, plaintext, ad)
        return b"".join((header, wrap_nonce, wrapped, data_nonce, body))

    def decrypt(self, envelope: bytes, *, purpose: str, name: str) -> bytes:
        """The plaintext of ``envelope``; ``DecryptionError`` unless it is intact and ours."""
        if len(envelope) < _MIN_SIZE:
            raise DecryptionError("not an envelope: too short")
        if envelope[0] != VERSION:
            raise DecryptionError(f"unknown envelope version {envelope[0]}")
        key_id = envelope[1:_HEADER_SIZE]
        if key_id != self._key_id:
            raise DecryptionError(
                f"encrypted under another master key (key id {key_id.hex()}, "
                f"current {self._key_id.hex()})"
            )
        ad = envelope[:_HEADER_SIZE] + _context(purpose, name)
        wrap_nonce, wrapped, data_nonce, body = _split(envelope)
        try:
            dek = self._kek.decrypt(wrap_nonce, wrapped, ad)
            return AESGCM(dek).decrypt(data_nonce, body, ad)
        except InvalidTag:
            raise DecryptionError(
                "authentication failed: the ciphertext was altered, or it belongs to "
                f"another record than {purpose!r}/{name!r}"
            ) from None

    def encrypt_text(self, plaintext: bytes, *, purpose: str, name: str) -> str:
        """``encrypt`` as unpadded base64url text."""
        raw = self.encrypt(plaintext, purpose=purpose, name=name)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def decrypt_text(self, envelope: str, *, purpose: str, name: str) -> bytes:
        """``decrypt`` of the text form produced by ``encrypt_text``."""
        if not _B64URL.fullmatch(envelope):
            raise DecryptionError("not an envelope: not base64url text")
        try:
            raw = base64.urlsafe_b64decode(envelope + "=" * (-len(envelope) % 4))
        except (binascii.Error, ValueError):
            raise DecryptionError("not an envelope: not base64url text") from None
        return self.decrypt(raw, purpose=purpose, name=name)


def _split(envelope: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    at = _HEADER_SIZE
    wrap_nonce = envelope[at : at + _NONCE_SIZE]
    at += _NONCE_SIZE
    wrapped = envelope[at : at + _WRAPPED_SIZE]
    at += _WRAPPED_SIZE
    data_nonce = envelope[at : at + _NONCE_SIZE]
    return wrap_nonce, wrapped, data_nonce, envelope[at + _NONCE_SIZE :]


def _context(purpose: str, name: str) -> bytes:
    if not purpose:
        raise ValueError("an envelope needs a purpose")
    p = purpose.encode("utf-8")
    n = name.encode("utf-8")
    if len(p) > 0xFFFF:
        raise ValueError("envelope purpose too long")
    return _AD_LABEL + struct.pack(">H", len(p)) + p + struct.pack(">I", len(n)) + n
