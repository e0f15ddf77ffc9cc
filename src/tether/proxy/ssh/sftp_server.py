"""The SFTP protocol side of the broker: asyncssh's SFTP server handler, offering only the
extensions the broker carries out under policy.

asyncssh's handler advertises in its version packet every extension it can answer for a
local filesystem, and answers some from the file object itself. Behind the broker there
is no local file (:class:`~tether.proxy.ssh.sftp.BrokerSftp` relays each operation to
the target after deciding it), so each extension is offered only when its every effect
goes through a decided operation:

============================  =======  ==============================================
extension                     offered  why
============================  =======  ==============================================
``posix-rename@openssh.com``  yes      decided as ``rename``
``statvfs@openssh.com``       yes      decided as ``list``
``fstatvfs@openssh.com``,     yes      on a handle whose ``open`` was decided
``fsync@openssh.com``
``lsetstat@openssh.com``      yes      decided as ``write``
``copy-data``                 yes      read and written through the handles'
                                       ``read``/``write``: a handle opened for reading
                                       to one opened for writing, bytes audited as
                                       transfers at ``close``
``limits@openssh.com``        yes      the broker's own packet and read/write sizes;
                                       touches no file
``newline``                   yes      informational
``ranges@asyncssh.com``       no       answered from a local file (``SEEK_DATA``): it
                                       failed on every broker handle, and asyncssh
                                       clients ask for it before each download
``hardlink@openssh.com``      no       links are always refused
``vendor-id``                 no       would tell which asyncssh version runs here
============================  =======  ==============================================

A request for an extension not offered is answered ``SSH_FX_OP_UNSUPPORTED`` whatever the
client sends: the handler's table holds only the offered ones.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncssh
from asyncssh.packet import PacketDecodeError, SSHPacket
from asyncssh.sftp import SFTPServerHandler

from tether.proxy.ssh.sftp import BrokerSftp

log = logging.getLogger(__name__)

_Handler = Callable[[SFTPServerHandler, SSHPacket], Awaitable[Any]]

OFFERED: Final = frozenset(
    {
        b"posix-rename@openssh.com", b"statvfs@openssh.com", b"fstatvfs@openssh.com",
        b"fsync@openssh.com", b"lsetstat@openssh.com", b"copy-data", b"limits@openssh.com",
        b"newline",
    }
)  # fmt: skip


def _contained(handler: _Handler) -> _Handler:
    """``handler`` answering an unexpected exception as ``Tether: internal error (<type>)``.

    asyncssh answers one it does not know with ``Uncaught exception: <its text>``: the audit
    trail's failure (which names the database and its error) then reached the agent. The
    errors asyncssh maps itself (SFTP statuses, ``OSError``, unsupported, malformed) pass.
    """

    @functools.wraps(handler)
    async def run(self: SFTPServerHandler, packet: SSHPacket) -> Any:
        try:
            return await handler(self, packet)
        except (asyncssh.SFTPError, OSError, NotImplementedError, PacketDecodeError):
            raise
        except Exception as error:
            log.exception("sftp: request failed")
            raise asyncssh.SFTPFailure(f"Tether: internal error ({type(error).__name__})") from None

    return run


class BrokerSftpHandler(SFTPServerHandler):
    """asyncssh's SFTP server handler without the extensions the broker does not offer, each
    request's unexpected failure answered without its text."""

    # asyncssh's handler reads both as class attributes (never changed): RUF012 does not apply.
    _extensions = [  # noqa: RUF012
        (name, value) for name, value in SFTPServerHandler._extensions if name in OFFERED
    ]
    _packet_handlers = {  # noqa: RUF012
        kind: None if handler is None else _contained(handler)
        for kind, handler in SFTPServerHandler._packet_handlers.items()
        if not isinstance(kind, bytes) or kind in OFFERED
    }

    async def _cleanup(self, exc: Exception | None) -> None:
        # asyncssh closes each file left open and then calls the server's exit(); a close
        # that raised (writes the target refused) stopped it there, and the error ended the
        # agent's whole connection. The broker closes and audits those files itself, each
        # failure contained, before asyncssh's clean-up runs with none left.
        if isinstance(self._server, BrokerSftp):
            await self._server.abandon()
            self._file_handles = {}
        await super()._cleanup(exc)


async def run_sftp(
    server: asyncssh.SFTPServer,
    reader: asyncssh.SSHReader[bytes],
    writer: asyncssh.SSHWriter[bytes],
    version: int,
) -> None:
    """Serve one SFTP channel with ``server`` (a ``BrokerSftp``) until it ends."""
    await BrokerSftpHandler(server, reader, writer, version).run()


class BrokerProcess(asyncssh.SSHServerProcess[bytes]):
    """A session channel: the ``sftp`` subsystem runs :class:`BrokerSftpHandler`, anything
    else (exec, shell, other subsystems) is asyncssh's process, as before."""

    def session_started(self) -> None:
        chan = self._chan
        if chan is None or chan.get_subsystem() != "sftp":
            super().session_started()
            return
        server = self._init_sftp_server()
        assert isinstance(server, asyncssh.SFTPServer)  # the broker's factory is synchronous
        reader = asyncssh.SSHReader[bytes](self, chan)
        writer = asyncssh.SSHWriter[bytes](self, chan)
        assert self._conn is not None
        self._conn.create_task(run_sftp(server, reader, writer, self._sftp_version), reader.logger)
