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
   ``ssh_certificate``, same serial, agent, task, key fingerprint and issuing token), its
   seal verifying (migration 0019: a record changed or planted in the database, a scope
   widened, another user's groups, is refused and logged): a certificate Tether did not
   record is refused even if the signature verifies;
5. the record holds the issuing token's context (task purpose, issuing token, and the user's
   groups when delegated; recorded since migration 0008): without it the policy request could
   not be built as for the token, so the login is refused (fail closed);
6. the identity service's ``check_live`` passes (token, agent, task, runtime not revoked,
   agent active), and the certificate record itself is not revoked.

The session's claims are rebuilt from the record: subject (the user of a delegated token,
else the agent), agent, actor chain, the user's groups (and for a delegation chain the
earlier users' groups, ``act_groups``, migration 0013: a record without them gives those
users no groups, so they are allowed less, never more), task id and purpose, scope, and the
runtime with its labels from the store (its row's seal verified); their jti is the issuing
token's. The policy request
of an SSH session is therefore the one the token would get over HTTP
(:func:`tether.proxy.core.policy_request`): ``task.purpose`` is there, and a delegated
session carries ``delegation`` (user and groups), so the engine grants it only what both the
agent and the user may do (every user of a chain: :mod:`tether.policychain`). Revoking the
issuing token ends the session.

With ``ssh.allow_plain_keys``, a bare key is accepted when a live certificate record names its
fingerprint (the newest one whose seal verifies, among the newest 20 live ones: a record
planted with a key of the writer's own opens nothing): the session runs under that
certificate's claims, issuing token included, so revoking that token, the agent, task,
runtime or the certificate ends it too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import asyncssh
from asyncssh.public_key import SSHOpenSSHCertificate, decode_ssh_certificate
from sqlalchemy import select

from tether.identity.claims import (
    Actor,
    Claims,
    Confirmation,
    Delegator,
    Runtime,
    Task,
    act_groups_match,
)
from tether.identity.errors import CredentialError
from tether.identity.service import IdentityService
from tether.identity.sshca import describe_certificate
from tether.proxy.ssh.login import Login
from tether.store import agents as agent_store
from tether.store.credentials import Credential, _credential, credential_admitted
from tether.store.schema import credentials

_KEY_ID: Final = re.compile(r"agent=(\S+) task=(\S+) jti=(\S+)")
_CERT_KIND: Final = "ssh_certificate"
# Live records naming one bare key read at most (each is a certificate issued for it).
_PLAIN_KEY_RECORDS: Final = 20


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
    if row is None or not credential_admitted(identity.sealer, row):  # not: logged
        raise AuthRefused("Tether has no record of this certificate")
    record = _credential(row)
    if (record.agent_id, record.task_id, record.key_thumbprint) != (
        cert.agent,
        cert.task,
        cert.fingerprint,
    ) or record.token_jti not in (None, cert.jti):  # None: refused below, as too old
        raise AuthRefused("the certificate does not match Tether's record of it")
    session = await _identity_of(identity, record, not_after=cert.valid_before)
    return SessionIdentity(session.claims, record.jti, str(cert.serial), cert.valid_before, True)


async def plain_key_identity(identity: IdentityService, key: asyncssh.SSHKey) -> SessionIdentity:
    """The identity of a bare key Tether certified, through its newest live record."""
    now = identity.clock()
    async with identity.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(credentials)
                .where(
                    credentials.c.kind == _CERT_KIND,
                    credentials.c.key_thumbprint == key.get_fingerprint("sha256"),
                    credentials.c.expires_at > now,
                )
                .order_by(credentials.c.expires_at.desc())
                .limit(_PLAIN_KEY_RECORDS)
            )
        ).mappings()
        # The newest record Tether wrote: one planted in the database (logged) is skipped,
        # so it opens no session; only more than _PLAIN_KEY_RECORDS newer planted ones
        # could hide the genuine record, and the login is then refused.
        row = next((r for r in rows if credential_admitted(identity.sealer, r)), None)
    if row is None:
        raise AuthRefused("no live certificate of Tether's names this key")
    record = _credential(row)
    not_after = record.expires_at.timestamp()
    return await _identity_of(identity, record, not_after=not_after)


async def _identity_of(
    identity: IdentityService, record: Credential, *, not_after: float
) -> SessionIdentity:
    if record.runtime_id is None or record.task_id is None:
        raise AuthRefused("the certificate record names no runtime or task")
    delegated = bool(record.actor_chain) or record.subject != record.agent_id
    if record.task_purpose is None or record.token_jti is None:
        raise AuthRefused("the certificate predates Tether recording its task: get a new one")
    if delegated and (record.groups is None or not record.actor_chain):
        raise AuthRefused("the certificate's delegation is not recorded: get a new one")
    act = _actor(record.actor_chain or ()) if delegated else None
    act_groups = tuple(Delegator(sub, groups) for sub, groups in record.act_groups or ())
    if act_groups and not act_groups_match(act, act_groups):
        raise AuthRefused("the certificate's delegation chain is not recorded consistently")
    async with identity.engine.connect() as conn:  # None too when its row does not verify
        runtime = await agent_store.verified_runtime(conn, identity.sealer, record.runtime_id)
    if runtime is None or runtime.agent_id != record.agent_id:
        raise AuthRefused("the certificate's runtime is unknown")
    claims = Claims(
        iss=identity.settings.issuer,
        aud=identity.settings.audience,
        sub=record.subject,
        jti=record.token_jti,
        iat=int(record.issued_at.timestamp()),
        nbf=int(record.issued_at.timestamp()),
        exp=int(not_after),
        task=Task(record.task_id, record.task_purpose),
        scope=record.scope,
        runtime=Runtime(runtime.id, dict(runtime.labels)),
        cnf=Confirmation(jkt=record.key_thumbprint or record.jti),
        act=act,
        agent=record.agent_id if delegated else None,
        groups=(record.groups or ()) if delegated else (),
        derived_from=record.derived_from or (),  # revoking any of them ends the session
        family=record.family,  # as does revoking any token of its token's renewal family
        act_groups=act_groups,  # none recorded (before 0013): the earlier users get no groups
    )
    session = SessionIdentity(claims, record.jti, record.serial or "", not_after, False)
    await check_live(identity, session)
    return session


def _actor(chain: Sequence[str]) -> Actor | None:
    """The ``act`` claim of an actor chain recorded outermost first."""
    actor: Actor | None = None
    for sub in reversed(chain):
        actor = Actor(sub, actor)
    return actor


async def check_live(identity: IdentityService, session: SessionIdentity) -> None:
    """``AuthRefused`` once the session's credential is revoked, expired or its agent inactive."""
    if identity.clock().timestamp() >= session.not_after:
        raise AuthRefused("the certificate has expired")
    refused = identity.revoked.refusal("token", session.credential, "the certificate is revoked")
    if refused is not None:
        raise AuthRefused(refused)
    try:
        await identity.check_live(session.claims)
    except CredentialError as error:
        raise AuthRefused(error.reason) from None
