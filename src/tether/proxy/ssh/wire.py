"""The broker's SSH connections on the wire: asyncssh's classes, tuned for bulk transfers.

Both legs of a session are :class:`BrokerServerConnection` (agent side, subclassed again by
the server for its public-key check) and :class:`BrokerClientConnection` (target side).
They are asyncssh's own connections with these changes, measured on SFTP transfers (see
docs/ssh-broker.md):

* **Socket writes are gathered** once per event-loop pass (:mod:`tether.proxy.ssh.transport`).
* **No empty ``SSH_MSG_IGNORE`` before every packet.** asyncssh sends one ahead of each packet
  once encryption is on: the countermeasure of RFC 4251 section 9.3.1 against the chosen
  plaintext attack on CBC, whose next IV is the last ciphertext block. It costs one more
  packet built, encrypted and logged for every packet sent (a tenth of the broker's CPU on
  SFTP transfers).
  The modes the broker accepts (AES-GCM, ChaCha20-Poly1305, AES-CTR; ``ssh.ciphers`` and
  the target leg's list) have no such IV, and OpenSSH sends no such packets. They are left
  out only while the cipher in use to send is one of :data:`NO_IGNORE_CIPHERS`: with any
  other (a CBC cipher, or one added to asyncssh later) asyncssh's behaviour is unchanged.
  Only asyncssh's automatic empty one is left out; any other ``SSH_MSG_IGNORE`` is sent.

* **Large socket reads are handed to asyncssh in pieces** of at most :data:`FEED_BYTES`.
  asyncssh keeps its input as ``bytes`` and, for every packet it takes off the front, copies
  the rest of the buffer twice; a 256 KiB read (what uvloop hands over during a transfer)
  holding eight 32 KiB packets was copied about ten times over. Fed in pieces of about one
  packet, what is left to copy is under one packet. Splitting is always valid input (TCP
  may deliver the bytes cut anywhere, and asyncssh parses incrementally); no piece is fed
  once asyncssh has closed the connection while taking an earlier one, as if the rest had
  never arrived.

The target leg's connection is made by ``asyncssh.connect``, which takes no connection
class: :class:`BrokerDialer`, the ``tunnel`` it dials through, receives the new
``SSHClientConnection`` before its socket exists and makes it a
:class:`BrokerClientConnection` (no state of its own, so nothing else changes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import asyncssh
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_IGNORE
from asyncssh.packet import String

from tether.proxy.ssh.config import CIPHERS
from tether.proxy.ssh.transport import GatheringDialer, gather_writes

#: Send ciphers for which asyncssh's empty ``SSH_MSG_IGNORE`` before each packet is left out:
#: those the broker accepts (``ssh.ciphers``), none of them CBC; a CBC cipher added there
#: would keep asyncssh's IGNOREs.
NO_IGNORE_CIPHERS: Final = frozenset(name for name in CIPHERS if "-cbc" not in name)

_EMPTY: Final = (String(b""),)

#: The largest piece of a socket read handed to asyncssh at once: one 32 KiB SSH packet (the
#: most OpenSSH sends) with its header, padding and MAC.
FEED_BYTES: Final = 32 * 1024 + 64


def feed_in_pieces(
    data: bytes, feed: Callable[[memoryview], None], closed: Callable[[], bool]
) -> None:
    """Hand ``data`` to ``feed`` in order, :data:`FEED_BYTES` at a time, until ``closed()``."""
    view = memoryview(data)
    for start in range(0, len(data), FEED_BYTES):
        if closed():
            return
        feed(view[start : start + FEED_BYTES])


class _Wire(SSHConnection):
    """The changes above, for a client or a server connection."""

    #: Whether the cipher asyncssh now sends with is one of :data:`NO_IGNORE_CIPHERS`.
    _quiet_ignores = False

    def set_extra_info(self, **kwargs: Any) -> None:
        # asyncssh names its new send cipher here, in the same step as it starts using it.
        if "send_cipher" in kwargs:
            self._quiet_ignores = kwargs["send_cipher"] in NO_IGNORE_CIPHERS
        super().set_extra_info(**kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(gather_writes(transport))

    def data_received(self, data: bytes, datatype: Any = None) -> None:
        if len(data) <= FEED_BYTES:
            super().data_received(data, datatype)
            return
        receive = super().data_received

        def feed(piece: memoryview) -> None:
            receive(piece, datatype)  # type: ignore[arg-type]  # asyncssh appends it to bytes

        # asyncssh drops its transport when it closes the connection (``_force_close``).
        feed_in_pieces(data, feed, lambda: self._transport is None)

    def send_packet(self, pkttype: int, *args: bytes, handler: object = None) -> None:
        if pkttype == MSG_IGNORE and self._quiet_ignores and args == _EMPTY:
            return
        super().send_packet(pkttype, *args, handler=handler)  # type: ignore[arg-type]


class BrokerServerConnection(_Wire, asyncssh.SSHServerConnection):
    """asyncssh's server connection, tuned (see the module docstring)."""


class BrokerClientConnection(_Wire, asyncssh.SSHClientConnection):
    """asyncssh's client connection, tuned (see the module docstring)."""


class BrokerDialer(GatheringDialer):
    """asyncssh ``tunnel`` object: a plain TCP connection to the target, made by a
    :class:`BrokerClientConnection`.

    If asyncssh hands over anything but its own ``SSHClientConnection`` (another version),
    the connection is left as it is, its writes gathered (:class:`GatheringDialer`).
    """

    connection_class: type[asyncssh.SSHClientConnection] = BrokerClientConnection

    async def create_connection(
        self, session_factory: Callable[[], asyncio.Protocol], remote_host: str, remote_port: int
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        session = session_factory()
        if type(session) is not asyncssh.SSHClientConnection:
            return await self.relay(session, remote_host, remote_port)
        session.__class__ = self.connection_class  # no state of its own: see the docstring
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: session, remote_host, remote_port)
        return transport, session
