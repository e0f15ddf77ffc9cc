"""Tether's own cryptography: the master key and envelope encryption under it.

``masterkey`` finds the 32-byte master key (the environment, or a 0600 file in the data
directory); ``envelope`` encrypts values under per-value data keys wrapped by it. Signing
keys (``tether.identity.keys``) and the vault store their secrets through ``envelope``.
"""

from __future__ import annotations

from tether.crypto.envelope import DecryptionError, EnvelopeCipher
from tether.crypto.masterkey import MasterKey, MasterKeyError, load_master_key

__all__ = [
    "DecryptionError",
    "EnvelopeCipher",
    "MasterKey",
    "MasterKeyError",
    "load_master_key",
]
