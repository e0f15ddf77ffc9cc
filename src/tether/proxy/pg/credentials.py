"""The upstream credential of a session: the vaulted password, or a session role.

:func:`obtain` returns the :class:`Credential` to log in with and the session's deadline:
the token's expiry, and for a dynamic target also ``validity_seconds`` from now (the role's
``VALID UNTIL``). :func:`release` drops a session role; :func:`reap_all` drops the expired
roles of every dynamic target (:mod:`tether.vault.pg_roles` explains why no lease table is
needed). Secret values stay in this process: they are never logged or put in errors.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from tether.proxy.pg import tls
from tether.proxy.pg.upstream import Login
from tether.vault import pg_roles
from tether.vault.secrets import SecretError, SecretNotFound

if TYPE_CHECKING:
    from tether.identity.claims import Claims
    from tether.proxy.core import Services
    from tether.vault.target_specs import PgDynamicCredential, PostgresTargetSpec
    from tether.vault.targets import Target

log = logging.getLogger(__name__)


class CredentialUnavailable(Exception):
    """No credential for the target: its secret is missing or the role was not created."""


@dataclass
class Credential:
    login: Login
    deadline: float
    lease: pg_roles.Lease | None = None
    admin: pg_roles.AdminLogin | None = None
    parent_role: str = ""


def _admin(
    spec: PostgresTargetSpec, cred: PgDynamicCredential, password: str, timeout: float
) -> pg_roles.AdminLogin:
    context = tls.upstream_context(spec.tls_mode, spec.ca_bundle)
    return pg_roles.AdminLogin(
        spec.host, spec.port, spec.database, cred.admin_username, password, context, timeout
    )


async def _secret(services: Services, name: str) -> str:
    try:
        return (await services.secrets.get(name)).decode("utf-8")
    except (SecretNotFound, UnicodeDecodeError):
        raise CredentialUnavailable(f"secret {name!r} is missing or not text") from None
    except SecretError as error:  # undecryptable: one target's, never every target's problem
        raise CredentialUnavailable(str(error)) from None


async def obtain(services: Services, target: Target, claims: Claims, timeout: float) -> Credential:
    """The login for one session on ``target``; raises :class:`CredentialUnavailable`."""
    spec: PostgresTargetSpec = target.spec  # type: ignore[assignment]
    context = tls.upstream_context(spec.tls_mode, spec.ca_bundle)
    deadline = float(claims.exp)
    cred = spec.credential
    if cred.type == "password":
        password = await _secret(services, cred.secret)
        login = Login(spec.host, spec.port, spec.database, cred.username, password, context)
        return Credential(login, deadline)
    admin = _admin(spec, cred, await _secret(services, cred.admin_secret), timeout)
    deadline = min(deadline, time.time() + cred.validity_seconds)
    until = datetime.fromtimestamp(deadline, UTC)
    try:
        lease = await pg_roles.create_role(
            admin, prefix=cred.role_prefix, parent_role=cred.parent_role, valid_until=until
        )
    except pg_roles.RoleError as error:
        raise CredentialUnavailable(str(error)) from None
    login = Login(spec.host, spec.port, spec.database, lease.role, lease.password, context)
    return Credential(login, deadline, lease, admin, cred.parent_role)


async def release(credential: Credential) -> None:
    """Drop the session role, if any (a failure leaves it to the reaper)."""
    if credential.lease is None or credential.admin is None:
        return
    try:
        await pg_roles.drop_role(
            credential.admin, credential.lease.role, parent_role=credential.parent_role
        )
    except pg_roles.RoleError as error:
        log.warning("session role %s left for the reaper: %s", credential.lease.role, error)


async def reap_all(services: Services, timeout: float) -> list[str]:
    """Drop the expired session roles of every dynamic target; the names dropped."""
    dropped: list[str] = []
    # usable(): a target refused (invalid, or its seal does not verify) is skipped, never
    # sent the admin credential, and does not stop the reaping of the others.
    for target in await services.targets.usable("postgres"):
        spec: PostgresTargetSpec = target.spec  # type: ignore[assignment]
        cred = spec.credential
        if cred.type != "dynamic":
            continue
        try:
            admin = _admin(spec, cred, await _secret(services, cred.admin_secret), timeout)
            now = datetime.now(UTC) - timedelta(seconds=5)
            dropped += await pg_roles.reap(
                admin, prefix=cred.role_prefix, parent_role=cred.parent_role, now=now
            )
        except (pg_roles.RoleError, CredentialUnavailable) as error:
            log.warning("reaping session roles of %s failed: %s", target.name, error)
    return dropped
