"""The login phase of one client connection: startup packets, TLS, and the agent's proof.

:class:`Handshake` reads the startup packets (``SSLRequest`` answered ``S`` and TLS
started; ``GSSENCRequest`` answered ``N``; a ``CancelRequest`` handed to the broker's cancel
keys, :mod:`tether.proxy.pg.cancel`) up to the startup message, then asks for a cleartext
password and checks the agent's proof in it (:mod:`tether.proxy.pg.auth`,
``IdentityService.authenticate``). :class:`Fatal` ends a connection before its session.

Security decisions:

* **TLS first** when ``require_tls`` (the default): a startup message without TLS gets
  ``FATAL 28000``; bytes sent after ``SSLRequest`` but before the handshake are a protocol
  violation (they could be injected by a man in the middle), as is any message sent before
  the broker asked for it (after the startup message, or with the password).
* **Replication is not brokered** (``FATAL 28000``), and a ``client_encoding`` other than
  UTF8 is refused (``22023``): the policy parses UTF-8 text only.
* **A refused login** is audited (``token.refused``) before the client hears of it, and the
  client hears only ``28P01`` "authentication failed" (or the refusal's own SQLSTATE):
  which check failed is not said. The TLS client certificate, when there is one, goes with
  the proof (a certificate-bound token is accepted only with it).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Final

from tether.audit.subject import Subject
from tether.identity.errors import CredentialError
from tether.proxy.core import Services, subject_of
from tether.proxy.pg import backend as be
from tether.proxy.pg import codec as c
from tether.proxy.pg import framing
from tether.proxy.pg.auth import LoginRefused, parse_password
from tether.proxy.pg.config import PgProxyConfig

if TYPE_CHECKING:
    from tether.identity.claims import Claims

log = logging.getLogger(__name__)

_SAFE_CLIENT_ENCODINGS: Final = frozenset({"UTF8", "UNICODE", "SQLASCII"})


class Fatal(Exception):
    """End the connection before a session with ``FATAL sqlstate message``."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class Handshake:
    """One connection's login phase (see the module docstring)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        config: PgProxyConfig,
        services: Services,
        tls_context: ssl.SSLContext | None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.config = config
        self.services = services
        self.tls_context = tls_context
        self.decoder = framing.FrontendDecoder(max_message=config.max_message_bytes)
        self.secure = False

    async def _read_packets(self) -> list[tuple[c.StartupPacket | c.FrontendMessage, bytes]]:
        while True:
            data = await self.reader.read(16384)
            if not data:
                raise ConnectionError("client closed")
            items = self.decoder.feed(data)
            if items:
                return items

    async def startup(
        self, cancel: Callable[[c.CancelRequest], Awaitable[None]]
    ) -> c.StartupMessage | None:
        """The checked startup message, or ``None`` after a cancel request (then hang up)."""
        writer, decoder = self.writer, self.decoder
        while True:
            items = await self._read_packets()
            packet = items[0][0]
            if isinstance(packet, c.SSLRequest) and not self.secure:
                if len(items) > 1 or decoder.buffered:
                    raise c.ProtocolViolation("data after SSLRequest before the TLS handshake")
                writer.write(b"S")
                await writer.drain()
                assert self.tls_context is not None
                await writer.start_tls(self.tls_context)
                self.secure = True
                decoder.expect_startup()
            elif isinstance(packet, c.GSSENCRequest):
                writer.write(b"N")
                await writer.drain()
                decoder.expect_startup()
            elif isinstance(packet, c.CancelRequest):
                await cancel(packet)
                return None
            elif isinstance(packet, c.StartupMessage):
                if len(items) > 1:
                    raise c.ProtocolViolation("a message before the authentication request")
                self._check_startup(packet)
                return packet
            else:
                raise c.ProtocolViolation("unexpected startup packet")

    def _check_startup(self, startup: c.StartupMessage) -> None:
        if self.config.require_tls and not self.secure:
            raise Fatal("28000", "the Tether broker requires TLS (sslmode=require or stronger)")
        replication = (startup.get("replication") or "false").lower()
        if replication not in ("false", "off", "no", "0"):
            raise Fatal("28000", "replication connections are not brokered")
        encoding = startup.get("client_encoding")
        if encoding is not None:
            # asyncpg quotes the value ('utf-8'), as the server's GUC parser accepts.
            normal = encoding.strip().strip("'").upper().replace("-", "").replace("_", "")
            if normal not in _SAFE_CLIENT_ENCODINGS:
                raise Fatal("22023", "the broker speaks client_encoding UTF8 only")

    async def authenticate(self, database: str, source_ip: str | None) -> Claims:
        """The agent's claims from its password message, or :class:`Fatal` (audited)."""
        writer = self.writer
        writer.write(be.Authentication(be.AUTH_CLEARTEXT).encode())
        await writer.drain()
        items = await self._read_packets()
        message = items[0][0]
        if len(items) > 1 or not isinstance(message, c.PasswordMessage):
            raise c.ProtocolViolation("expected a password message")
        peer_der = _peer_certificate(writer) if self.secure else None
        try:
            presented = parse_password(
                message.data, database=database, public_address=self.config.advertised,
                peer_der=peer_der,
            )  # fmt: skip
            return await self.services.identity.authenticate(presented)
        except LoginRefused as refused:
            await self._refused(str(refused), database, source_ip)
            raise Fatal(refused.sqlstate, "authentication failed") from None
        except CredentialError as error:
            await self._refused(str(error), database, source_ip)
            raise Fatal("28P01", "authentication failed") from None
        except Exception as error:  # the store failed: the login is refused, and audited
            log.error("postgres login could not be checked", exc_info=error)
            await self._refused(f"the login could not be checked: internal error "
                                f"({type(error).__name__})", database, source_ip)  # fmt: skip
            raise Fatal("XX000", "internal error in the broker") from None

    async def refused_target(
        self, reason: str, database: str, claims: Claims, source_ip: str | None
    ) -> None:
        """A login refused after the agent authenticated (no such target, or one that cannot
        be read), audited with the agent's subject."""
        await self._refused(reason, database, source_ip, subject_of(claims, source_ip=source_ip))

    async def _refused(
        self, reason: str, database: str, source_ip: str | None, who: Subject | None = None
    ) -> None:
        """A refused login is audited (``token.refused``) before the client hears of it."""
        log.info("postgres login refused: %s", reason)
        if self.services.auditor is not None:
            await self.services.auditor.token_refused(
                who or Subject(source_ip=source_ip), reason=reason,
                grant_type="postgres-login", audience=database,
            )  # fmt: skip


def _peer_certificate(writer: asyncio.StreamWriter) -> bytes | None:
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der: bytes | None = ssl_object.getpeercert(binary_form=True)
    return der


def client_parameters(startup: c.StartupMessage) -> Mapping[str, str]:
    """The startup parameters offered to the server (``user`` and ``database`` are Tether's)."""
    return {k: v for k, v in startup.params if k not in ("user", "database")}


def write_fatal(writer: asyncio.StreamWriter, sqlstate: str, message: str) -> None:
    """``FATAL sqlstate message`` to the client, unless the connection is already closing."""
    if not writer.is_closing():
        writer.write(be.error(sqlstate, message, severity="FATAL").encode())
