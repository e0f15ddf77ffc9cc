"""asyncssh's per-packet path, made cheaper for the broker's bulk transfers.

Every byte of an SFTP transfer crosses the broker as SSH packets of at most 32 KiB (OpenSSH's
channel packet size), decrypted on one leg and encrypted on the other, and the broker's one
event loop is what limits the transfer (docs/ssh-broker.md). :func:`install` changes two
things asyncssh does for every packet, neither of which changes a byte on the wire:

* **AES-GCM without a new cipher context per packet.** asyncssh's ``GCMCipher`` builds an
  ``AESGCM`` object (the AES key schedule) for every packet and keeps the nonce as bytes it
  slices and rebuilds after each one. :class:`BrokerGCMEncryption` builds the ``AESGCM``
  object once per key and keeps the invocation counter as an integer. The nonce is the same
  (RFC 5647 section 7.1: a 4-byte fixed field and an 8-byte invocation counter, incremented
  after every packet and wrapping at 2**64, exactly as asyncssh does), and so are the inputs
  and outputs: the packet length as associated data, ``(header + ciphertext, tag)`` from
  :meth:`~BrokerGCMEncryption.encrypt_packet` (asyncssh's private-key encryption relies on that
  shape too), ``None`` for a packet whose tag does not verify.
* **No packet log text built when nothing logs it.** asyncssh's packet loggers format a
  description of every packet sent or received (and copy its payload) before its logger
  checks its debug level; the text is only written at asyncssh debug level 3
  (``asyncssh.set_debug_level(3)``). Below that level the formatting is skipped; at level 3
  asyncssh's own logging runs unchanged.

Security decisions:

* Only asyncssh's own entries are replaced: :func:`install` swaps the encryption class of
  ``aes128-gcm@openssh.com`` and ``aes256-gcm@openssh.com`` only while asyncssh still registers
  its own ``GCMEncryption`` for them, and the log methods only while they are asyncssh's own.
  With an asyncssh that changed either, asyncssh's code is kept and a warning is logged.
* Authentication is never weakened: a packet whose tag does not verify is refused exactly as
  before (``decrypt_packet`` returns ``None`` and asyncssh drops the connection with a MAC
  error), and the counter advances on every packet, verified or not, as in asyncssh.
* The tests (tests/proxy_ssh/test_hotpath.py) check the class against asyncssh's own cipher,
  packet by packet, and every end-to-end SSH test speaks AES-GCM with real OpenSSH through it.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from asyncssh import encryption as _encryption
from asyncssh import packet as _packet
from asyncssh.logging import SSHLogger
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

#: asyncssh's AES-GCM algorithms (RFC 5647 as OpenSSH names them).
GCM_ALGS: Final = (b"aes128-gcm@openssh.com", b"aes256-gcm@openssh.com")
_TAG: Final = 16
_COUNTER_MASK: Final = (1 << 64) - 1
#: asyncssh writes packet logs only at this debug level (``SSHLogger.packet``).
_PACKET_LOG_LEVEL: Final = 3


class BrokerGCMEncryption(_encryption.Encryption):
    """SSH packet encryption with AES-GCM (RFC 5647), one ``AESGCM`` object per key."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        if len(iv) != 12:
            raise ValueError("AES-GCM needs a 12-byte initial IV")
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:], "big")

    @classmethod
    def new(
        cls,
        cipher_name: str,
        key: bytes,
        iv: bytes,
        mac_alg: bytes = b"",
        mac_key: bytes = b"",
        etm: bool = False,
    ) -> BrokerGCMEncryption:
        return cls(key, iv)

    @classmethod
    def needs_mac(cls) -> bool:
        return False  # the tag is GCM's own

    @classmethod
    def get_mac_params(cls, mac_alg: bytes) -> tuple[int, int, bool]:
        return 0, _TAG, True

    def _nonce(self) -> bytes:
        nonce = self._fixed + self._counter.to_bytes(8, "big")
        self._counter = (self._counter + 1) & _COUNTER_MASK
        return nonce

    def encrypt_packet(self, seq: int, header: bytes, packet: bytes) -> tuple[bytes, bytes]:
        sealed = self._aead.encrypt(self._nonce(), packet, header)
        return header + memoryview(sealed)[:-_TAG], sealed[-_TAG:]  # one copy of the body

    def decrypt_header(self, seq: int, first_block: bytes, header_len: int) -> tuple[bytes, bytes]:
        return first_block, first_block[:header_len]  # the length travels in the clear (AAD)

    def decrypt_packet(
        self, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes
    ) -> bytes | None:
        nonce = self._nonce()
        sealed = b"".join((memoryview(first)[header_len:], rest, mac))
        try:
            return self._aead.decrypt(nonce, sealed, first[:header_len])
        except InvalidTag:
            return None


def _log_sent_packet(
    self: _packet.SSHPacketLogger, pkttype: int, pktid: int | None, packet: Any, note: str = ""
) -> None:
    if SSHLogger._debug_level >= _PACKET_LOG_LEVEL:
        self._log_packet("Sent", pkttype, pktid, packet, note)


def _log_received_packet(
    self: _packet.SSHPacketLogger, pkttype: int, pktid: int | None, packet: Any, note: str = ""
) -> None:
    if SSHLogger._debug_level >= _PACKET_LOG_LEVEL:
        self._log_packet("Received", pkttype, pktid, packet, note)


_ASYNCSSH_LOG_METHODS: Final = {
    "log_sent_packet": _packet.SSHPacketLogger.log_sent_packet,
    "log_received_packet": _packet.SSHPacketLogger.log_received_packet,
}
_QUIET_LOG_METHODS: Final = {
    "log_sent_packet": _log_sent_packet,
    "log_received_packet": _log_received_packet,
}


def install() -> bool:
    """Put both changes in place (idempotent); False if asyncssh's code was kept."""
    params: dict[bytes, tuple[type[_encryption.Encryption], str]] = getattr(
        _encryption, "_enc_params", {}
    )
    ours = True
    for alg in GCM_ALGS:
        entry = params.get(alg)
        if entry is None or entry[0] not in (_encryption.GCMEncryption, BrokerGCMEncryption):
            log.warning("asyncssh's %s is not its GCMEncryption: kept as it is", alg.decode())
            ours = False
            continue
        params[alg] = (BrokerGCMEncryption, entry[1])
    for name, method in _ASYNCSSH_LOG_METHODS.items():
        current = getattr(_packet.SSHPacketLogger, name)
        if current not in (method, _QUIET_LOG_METHODS[name]):
            log.warning("asyncssh's SSHPacketLogger.%s changed: kept as it is", name)
            ours = False
            continue
        setattr(_packet.SSHPacketLogger, name, _QUIET_LOG_METHODS[name])
    return ours


def installed() -> bool:
    """Whether :func:`install` is in effect for both AES-GCM algorithms and both log methods."""
    params = getattr(_encryption, "_enc_params", {})
    return all(params.get(alg, (None,))[0] is BrokerGCMEncryption for alg in GCM_ALGS) and all(
        getattr(_packet.SSHPacketLogger, name) is method
        for name, method in _QUIET_LOG_METHODS.items()
    )
