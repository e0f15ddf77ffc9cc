"""Connecting to a target: TCP, TLS per ``tls_mode``, startup and password login as a client.

:func:`connect` returns an :class:`Upstream` that has completed the login and read the
server's ``ParameterStatus`` messages, its ``BackendKeyData`` and the first
``ReadyForQuery``. :func:`send_cancel` delivers a cancel request for a backend.

Security decisions:

* **The broker chooses the startup parameters**: ``user`` and ``database`` from the target,
  ``client_encoding=UTF8``, and only the harmless client parameters of
  :data:`FORWARDED_PARAMETERS` (never ``options``, ``replication`` or arbitrary settings).
* **The session starts on the schema the policy assumes.** The broker resolves unqualified
  names under the target's ``default_schema`` until a ``SET search_path``; the server would
  otherwise start on the role's or database's ``search_path`` (``ALTER ROLE ... SET
  search_path = vault``) or on ``"$user"``'s schema, and read another table than the one
  decided. The startup message sets ``search_path`` to that schema alone (a startup
  setting overrides role and database settings, and is what ``RESET`` returns to).
* **TLS before credentials.** With any ``tls_mode`` but ``disable`` a server that refuses
  TLS is an error; a cleartext password is only ever sent inside TLS. SCRAM verifies the
  server's signature (:mod:`tether.proxy.pg.scram`).
* **Errors carry no secret**: :class:`UpstreamError` holds the server's SQLSTATE and message,
  or the broker's own description, never the password.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from tether.proxy.pg import backend as be
from tether.proxy.pg import codec as c
from tether.proxy.pg import framing
from tether.proxy.pg.fields import cstr
from tether.proxy.pg.scram import MECHANISM, ScramClient, ScramError, md5_password

FORWARDED_PARAMETERS: Final = frozenset(
    {"application_name", "datestyle", "timezone", "extra_float_digits", "intervalstyle"}
)
_READ_SIZE: Final = 65536


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (``"`` doubled), as a setting's value reads it."""
    return '"' + name.replace('"', '""') + '"'


class UpstreamError(Exception):
    """The target could not be reached or refused the login."""

    def __init__(self, message: str, sqlstate: str = "08006") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass(frozen=True, slots=True)
class Login:
    """Where and as whom to log in (the password is never in a repr)."""

    host: str
    port: int
    database: str
    user: str
    password: str = field(repr=False)
    tls: ssl.SSLContext | None = None


@dataclass
class Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    framer: framing.BackendFramer
    parameters: dict[str, str]
    key: be.BackendKeyData | None
    status: str
    leftover: list[tuple[int, bytes, bytes]]

    def close(self) -> None:
        self.writer.close()


async def _open(login: Login, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(login.host, login.port), timeout
        )
    except (OSError, TimeoutError) as error:
        raise UpstreamError(f"cannot connect to {login.host}:{login.port}: {error}") from None
    if login.tls is None:
        return reader, writer
    try:
        writer.write(c.SSLRequest().encode())
        answer = await asyncio.wait_for(reader.readexactly(1), timeout)
        if answer != b"S":
            writer.close()
            raise UpstreamError("the target does not accept TLS (its tls_mode requires it)")
        await asyncio.wait_for(writer.start_tls(login.tls, server_hostname=login.host), timeout)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as error:
        writer.close()
        raise UpstreamError(f"TLS with {login.host}:{login.port} failed: {error}") from None
    return reader, writer


async def connect(
    login: Login, client_parameters: Mapping[str, str], *, timeout: float = 10.0,
    max_message: int = 1 << 30, search_path: str | None = None,
) -> Upstream:  # fmt: skip
    """A logged-in connection to the target; raises :class:`UpstreamError`. With
    ``search_path`` (a schema name) the session starts with that schema alone on its path."""
    reader, writer = await _open(login, timeout)
    params = [("user", login.user), ("database", login.database), ("client_encoding", "UTF8")]
    if search_path is not None:
        params.append(("search_path", quote_ident(search_path)))
    params += [(k, v) for k, v in client_parameters.items() if k.lower() in FORWARDED_PARAMETERS]
    writer.write(c.StartupMessage(c.PROTOCOL_3_0, tuple(params)).encode())
    upstream = Upstream(
        reader, writer, framing.BackendFramer(max_message=max_message), {}, None, "", []
    )
    try:
        await asyncio.wait_for(_login(upstream, login), timeout)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as error:
        writer.close()
        raise UpstreamError(
            f"login to the target failed: {error or type(error).__name__}"
        ) from None
    except (UpstreamError, c.ProtocolViolation, ScramError):
        writer.close()
        raise
    return upstream


async def _frames(upstream: Upstream) -> list[tuple[int, bytes, bytes]]:
    while True:
        data = await upstream.reader.read(_READ_SIZE)
        if not data:
            raise UpstreamError("the target closed the connection during login")
        frames = upstream.framer.feed(data)
        if frames:
            return frames


async def _login(upstream: Upstream, login: Login) -> None:
    scram: ScramClient | None = None
    tls = login.tls is not None
    while True:
        frames = await _frames(upstream)
        for index, (kind, body, _raw) in enumerate(frames):
            message = be.decode_backend(kind, body)
            if isinstance(message, be.ErrorResponse) and not message.notice:
                code = message.sqlstate or "08006"
                raise UpstreamError(f"the target refused: {message.get('M')}", code)
            if isinstance(message, be.Authentication):
                scram = _answer_auth(upstream, login, message, scram, tls)
            elif isinstance(message, be.ParameterStatus):
                upstream.parameters[message.name] = message.value
            elif isinstance(message, be.BackendKeyData):
                upstream.key = message
            elif isinstance(message, be.ReadyForQuery):
                upstream.status = message.status
                upstream.leftover = frames[index + 1 :]
                return
            elif kind == be.T_NEGOTIATE:
                raise UpstreamError("the target asked to negotiate the protocol version")


def _answer_auth(
    upstream: Upstream,
    login: Login,
    message: be.Authentication,
    scram: ScramClient | None,
    tls: bool,
) -> ScramClient | None:
    code, write = message.code, upstream.writer.write
    if code == be.AUTH_OK:
        return scram
    if code == be.AUTH_SASL:
        if MECHANISM not in be.sasl_mechanisms(message.data):
            raise UpstreamError("the target offers no SCRAM-SHA-256")
        scram = ScramClient(login.password)
        write(be.sasl_initial_response(MECHANISM, scram.first()))
        return scram
    if code == be.AUTH_SASL_CONTINUE and scram is not None:
        write(c.PasswordMessage(scram.final(message.data)).encode())
        return scram
    if code == be.AUTH_SASL_FINAL and scram is not None:
        scram.verify(message.data)
        return scram
    if code == be.AUTH_MD5 and len(message.data) == 4:
        write(c.PasswordMessage(md5_password(login.user, login.password, message.data)).encode())
        return scram
    if code == be.AUTH_CLEARTEXT and tls:
        write(c.PasswordMessage(cstr(login.password)).encode())
        return scram
    raise UpstreamError(f"unsupported or unsafe authentication request {code} from the target")


async def send_cancel(
    host: str, port: int, tls: ssl.SSLContext | None, key: be.BackendKeyData, timeout: float
) -> None:
    """Ask the target to cancel what ``key``'s backend runs (best effort, like libpq)."""
    login = Login(host, port, "", "", "", tls)
    try:
        _reader, writer = await _open(login, timeout)
    except UpstreamError:
        return
    try:
        writer.write(c.CancelRequest(key.process_id, key.secret_key).encode())
        await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
