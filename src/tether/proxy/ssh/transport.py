"""Socket writes of the broker's SSH connections, gathered once per event-loop pass.

asyncssh writes every SSH packet to its transport as soon as it is built (and, unless
:mod:`tether.proxy.ssh.wire` leaves it out, an ``SSH_MSG_IGNORE`` packet before each one), so a
255 KiB SFTP block sent to an OpenSSH peer (whose channels take packets of at most 32 KiB)
became eight to sixteen ``send`` calls on the socket, and as many wake-ups of the peer.
:class:`GatheringTransport` sits between an asyncssh connection and its socket transport: writes
made during one pass of the event loop are joined and handed to the socket once, at the end of
that pass (``loop.call_soon``). Both legs use it: the broker's connection classes
(:mod:`tether.proxy.ssh.wire`) wrap their socket transport with :func:`gather_writes`, and
:class:`GatheringDialer` relays any other protocol through it (asyncssh's ``tunnel`` hook, which
only asks for a ``create_connection``).

Security decisions:

* **Bytes and order are unchanged.** Only the number of ``send`` calls changes; the packets
  are the ones asyncssh encrypted, in its order. Nothing is dropped or reordered.
* **Nothing written is held back past the pass**: ``close`` and ``abort`` hand what is
  pending to the socket transport first, exactly as if each write had reached it at once
  (``abort`` then discards what the socket did not take, as the plain transport does), so a
  ``DISCONNECT`` written before the broker ends a revoked session still goes out.
* Memory stays bounded by asyncssh's SSH channel windows, as before: a pass holds at most
  what asyncssh wrote in it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final, cast

log = logging.getLogger(__name__)

#: A pass that writes more than this hands it to the socket in pieces of about this size.
MAX_GATHER_BYTES: Final = 4 * 1024 * 1024


class GatheringTransport(asyncio.Transport):
    """A socket transport whose writes reach the socket once per event-loop pass."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._scheduled = False

    # --- writing -----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._pending.append(bytes(data) if not isinstance(data, bytes) else data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= MAX_GATHER_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Hand everything written so far to the socket transport."""
        if not self._pending:
            return
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if not self._transport.is_closing():
            # One vectored write on uvloop (and on asyncio from Python 3.12); Python 3.11's
            # asyncio joins the pieces first.
            self._transport.writelines(pending)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._pending_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    # --- the rest is the socket transport's ----------------------------------------------------

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self.flush()
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


def gather_writes(transport: asyncio.BaseTransport) -> GatheringTransport:
    """``transport`` (a TCP transport of asyncio's or uvloop's loop) with gathered writes."""
    return GatheringTransport(cast(asyncio.Transport, transport), asyncio.get_running_loop())


class _Relay(asyncio.Protocol):
    """Hands the wrapped transport to ``protocol``, then passes every event through."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.protocol.connection_made(gather_writes(transport))

    def data_received(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def eof_received(self) -> bool | None:
        return self.protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()


class GatheringDialer:
    """asyncssh ``tunnel`` object: a plain TCP connection whose writes are gathered.

    asyncssh calls :meth:`create_connection` instead of ``loop.create_connection``; the
    connection it gets is an ordinary TCP connection to the same host and port.
    """

    class _Log:
        """asyncssh announces a tunnelled connection at INFO ("via SSH tunnel"): for this
        plain TCP connection that line is misleading, so it goes to the debug log."""

        def info(self, msg: str, *args: object) -> None:
            log.debug(msg, *args)

    logger = _Log()

    async def create_connection(
        self, session_factory: Callable[[], asyncio.Protocol], remote_host: str, remote_port: int
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        return await self.relay(session_factory(), remote_host, remote_port)

    async def relay(
        self, session: asyncio.Protocol, remote_host: str, remote_port: int
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        """Connect ``session`` through a relay protocol that gathers its writes."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(
            lambda: _Relay(session), remote_host, remote_port
        )
        return transport, session

    def close(self) -> None:
        """Nothing to close: the TCP connection belongs to the SSH connection."""

    async def wait_closed(self) -> None:
        """Nothing to wait for (see :meth:`close`)."""
