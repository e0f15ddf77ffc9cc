"""Who logs in: the agent-login certificate Tether issued, mapped back to its task's claims.

An agent presents the OpenSSH user certificate that :meth:`IdentityService.ssh_certificate`
issued (key id ``agent=<a> task=<t> jti=<token id>``, a random serial, a ``source-address``
option, the principals the agent asked for). The broker accepts it only when every one of
these holds, in this order, each failure refusing the login:

1. it is an OpenSSH **user** certificate whose signature verifies and whose signing key is
   Tether's own agent-login CA key (a certificate of any other CA, the target-session CA
   included, is refused);
2. now is inside its validity window; its critical options are only ``source-address`` and
   the peer's address is inside it (``force-command`` or an unknown option is refused rather
   than ignored);
3. the requested remote login, or the whole ``<login>@<target>``, is one of its principals;
4. its key id parses, and the store holds the record of this very certificate (kind
   ``ssh_certificate``, same serial, agent, task and key fingerprint): a certificate Tether
   did not record is refused even if the signature verifies;
5. the issuing token was not delegated: the record keeps no user groups, so the policy could
   not decide a delegated session faithfully (fail closed);
6. the identity service's ``check_live`` passes (token, agent, task, runtime not revoked,
   agent active), and the certificate record itself is not revoked.

The session's claims are rebuilt from the record (agent, task id, scope, runtime and its
labels from the store) with the token id from the key id, so revoking the token the
certificate came from ends the session. The task *purpose* is recorded nowhere, so the policy
request of an SSH session carries no ``task.purpose``: a ``when`` that reads it fails, which
makes an allow rule not match and a deny rule match (spec section 4, fail closed).

With ``ssh.allow_plain_keys``, a bare key is accepted when a live certificate record names its
fingerprint (the newest one): the session then runs under that certificate's claims, but the
issuing token's id is unknown, so only revoking the agent, task, runtime or the certificate
itself reaches it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

import asyncssh
from asyncssh.public_key import SSHOpenSSHCertificate, decode_ssh_certificate
from sqlalchemy import select

from tether.identity.claims import Claims, Confirmation, Runtime, Task
from tether.identity.errors import CredentialError
from tether.identity.service import IdentityService
from tether.identity.sshca import describe_certificate
from tether.proxy.ssh.login import Login
from tether.store import agents as agent_store
from tether.store.credentials import Credential, _credential
from tether.store.schema import credentials

_KEY_ID: Final = re.compile(r"agent=(\S+) task=(\S+) jti=(\S+)")
_CERT_KIND: Final = "ssh_certificate"


class AuthRefused(Exception):
    """A login is refused; the message (written by Tether) says which check failed."""


@dataclass(frozen=True, slots=True)
class AgentCertificate:
    """The checked facts of an agent-login certificate."""

    serial: int
    agent: str
    task: str
    jti: str
    principals: tuple[str, ...]
    valid_before: float
    fingerprint: str


@dataclass(frozen=True, slots=True)
class SessionIdentity:
    """Who a session runs as: the claims, the credential record id, and when it must end."""

    claims: Claims
    credential: str  # the record's id, ``ssh_certificate:<serial>``
    serial: str
    not_after: float
    via_certificate: bool


def check_certificate(
    key_data: bytes, *, ca_key: asyncssh.SSHKey, login: Login, peer_ip: str, now: float
) -> AgentCertificate:
    """Checks 1-3 of the module docstring on the wire blob of a presented certificate."""
    try:
        cert = decode_ssh_certificate(key_data)  # verifies the CA signature
    except (asyncssh.KeyImportError, ValueError) as error:
        raise AuthRefused(f"not a valid certificate: {error}") from None
    if not isinstance(cert, SSHOpenSSHCertificate):
        raise AuthRefused("not an OpenSSH certificate")
    if cert.signing_key.public_data != ca_key.public_data:
        raise AuthRefused("the certificate is not signed by Tether's agent-login CA")
    info = describe_certificate(cert.export_certificate("openssh").decode("ascii"))
    if info.cert_type != 1:
        raise AuthRefused("not a user certificate")
    if not info.valid_after.timestamp() <= now < info.valid_before.timestamp():
        raise AuthRefused("the certificate is expired or not yet valid")
    _check_options(info.critical_options, peer_ip)
    if login.remote_user not in info.principals and str(login) not in info.principals:
        raise AuthRefused(f"the certificate does not name the login {login.remote_user!r}")
    match = _KEY_ID.fullmatch(info.key_id)
    if match is None:
        raise AuthRefused("the certificate's key id is not one Tether writes")
    return AgentCertificate(
        serial=info.serial,
        agent=match[1],
        task=match[2],
        jti=match[3],
        principals=info.principals,
        valid_before=info.valid_before.timestamp(),
        fingerprint=cert.key.get_fingerprint("sha256"),
    )


def _check_options(options: dict[str, str], peer_ip: str) -> None:
    unknown = set(options) - {"source-address"}
    if unknown:
        raise AuthRefused(f"critical option(s) not honoured here: {', '.join(sorted(unknown))}")
    if "source-address" not in options:
        return
    try:
        address = ipaddress.ip_address(peer_ip)
        allowed = [ipaddress.ip_network(c.strip()) for c in options["source-address"].split(",")]
    except ValueError:
        raise AuthRefused("the certificate's source-address does not parse") from None
    if not any(address in network for network in allowed):
        raise AuthRefused("the peer address is outside the certificate's source-address")


async def certificate_identity(
    identity: IdentityService, cert: AgentCertificate
) -> SessionIdentity:
    """Checks 4-6: the stored record of ``cert`` and the liveness of its claims."""
    async with identity.engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    select(credentials).where(
                        credentials.c.kind == _CERT_KIND, credentials.c.serial == str(cert.serial)
                    )
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise AuthRefused("Tether has no record of this certificate")
    record = _credential(row)
    if (record.agent_id, record.task_id, record.key_thumbprint) != (
        cert.agent,
        cert.task,
        cert.fingerprint,
    ):
        raise AuthRefused("the certificate does not match Tether's record of it")
    session = await _identity_of(identity, record, jti=cert.jti, not_after=cert.valid_before)
    return SessionIdentity(session.claims, record.jti, str(cert.serial), cert.valid_before, True)


async def plain_key_identity(identity: IdentityService, key: asyncssh.SSHKey) -> SessionIdentity:
    """The identity of a bare key Tether certified, through its newest live record."""
    now = identity.clock()
    async with identity.engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    select(credentials)
                    .where(
                        credentials.c.kind == _CERT_KIND,
                        credentials.c.key_thumbprint == key.get_fingerprint("sha256"),
                        credentials.c.expires_at > now,
                    )
                    .order_by(credentials.c.expires_at.desc())
                    .limit(1)
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise AuthRefused("no live certificate of Tether's names this key")
    record = _credential(row)
    not_after = record.expires_at.timestamp()
    return await _identity_of(identity, record, jti=record.jti, not_after=not_after)


async def _identity_of(
    identity: IdentityService, record: Credential, *, jti: str, not_after: float
) -> SessionIdentity:
    if record.actor_chain or record.subject != record.agent_id:
        raise AuthRefused("delegated credentials cannot open SSH sessions")
    if record.runtime_id is None or record.task_id is None:
        raise AuthRefused("the certificate record names no runtime or task")
    async with identity.engine.connect() as conn:
        runtime = await agent_store.get_runtime(conn, record.runtime_id)
    if runtime is None or runtime.agent_id != record.agent_id:
        raise AuthRefused("the certificate's runtime is unknown")
    claims = Claims(
        iss=identity.settings.issuer,
        aud=identity.settings.audience,
        sub=record.agent_id,
        jti=jti,
        iat=int(record.issued_at.timestamp()),
        nbf=int(record.issued_at.timestamp()),
        exp=int(not_after),
        task=Task(record.task_id, ""),  # the purpose is not recorded: see the module docstring
        scope=record.scope,
        runtime=Runtime(runtime.id, dict(runtime.labels)),
        cnf=Confirmation(jkt=record.key_thumbprint or record.jti),
    )
    session = SessionIdentity(claims, record.jti, record.serial or "", not_after, False)
    await check_live(identity, session)
    return session


async def check_live(identity: IdentityService, session: SessionIdentity) -> None:
    """``AuthRefused`` once the session's credential is revoked, expired or its agent inactive."""
    if identity.clock().timestamp() >= session.not_after:
        raise AuthRefused("the certificate has expired")
    if ("token", session.credential) in identity.revoked:
        raise AuthRefused("the certificate is revoked")
    try:
        await identity.check_live(session.claims)
    except CredentialError as error:
        raise AuthRefused(error.reason) from None
