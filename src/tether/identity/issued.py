"""The values the identity service takes and gives: its settings, a presented credential,
an issued token, and the store record of anything issued."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tether.identity import exchange as ex
from tether.identity.claims import Claims
from tether.store import credentials as cred_store


@dataclass(frozen=True)
class IdentitySettings:
    """The identity part of the configuration (validated by :mod:`tether.identity.config`)."""

    issuer: str = "http://127.0.0.1:8765"
    audience: str = "tether"
    trust_domain: str = "tether.local"
    token_lifetime: int = 600
    max_token_lifetime: int = 3600
    join_token_ttl: int = 900
    max_delegation_depth: int = 2
    certificate_lifetime: int = 600
    max_session_lifetime: int = 86400
    revocation_poll: float = 1.0
    # Seconds an expired credential's or join token's record is kept (0: forever).
    record_retention: int = 30 * 86400
    # Workload identities mapped to agents: {issuer name: {subject: agent id}}.
    workload_agents: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class IssuedToken:
    """An access token just issued, and its claims."""

    token: str
    claims: Claims

    def response(self) -> dict[str, Any]:
        """The RFC 8693 token response."""
        return {
            "access_token": self.token,
            "issued_token_type": ex.ACCESS_TOKEN,
            "token_type": "DPoP" if self.claims.cnf.jkt else "Bearer",
            "expires_in": self.claims.exp - self.claims.iat,
            "scope": " ".join(self.claims.scope),
        }


@dataclass(frozen=True)
class Presented:
    """What an agent presented with one request, for ``IdentityService.authenticate``."""

    token: str
    method: str
    url: str
    dpop: str | None = None
    peer_certificate_der: bytes | None = None


def credential_record(
    claims: Claims,
    kind: cred_store.CredentialKind,
    *,
    key_thumbprint: str | None,
    serial: str | None = None,
    validity: tuple[int, int] | None = None,
) -> cred_store.Credential:
    """The store record of a credential issued under ``claims``.

    A token is recorded under its jti; a certificate under ``<kind>:<serial>`` with its own
    ``validity`` (issued, expires), and the task, runtime and scope of the token it came from
    and that token's jti. Both keep the task purpose and, when delegated, the user's groups
    (and a chain's earlier users with theirs),
    so a front-end that authenticates by certificate (SSH) builds the same policy request,
    and the tokens the token was derived from and its renewal family, so such a front-end
    ends the session when any of them is revoked (and a revocation by jti finds the family).
    """
    chain: list[str] = []
    actor = claims.act
    while actor is not None:
        chain.append(actor.sub)
        actor = actor.act
    issued, expires = validity or (claims.iat, claims.exp)
    return cred_store.Credential(
        jti=claims.jti if serial is None else f"{kind}:{serial}",
        kind=kind,
        agent_id=claims.agent_id,
        subject=claims.sub,
        scope=claims.scope,
        issued_at=_utc(issued),
        expires_at=_utc(expires),
        runtime_id=claims.runtime.id,
        task_id=claims.task.id,
        actor_chain=tuple(chain) or None,
        serial=serial,
        key_thumbprint=key_thumbprint,
        task_purpose=claims.task.purpose,
        groups=claims.groups if claims.agent is not None else None,
        token_jti=None if serial is None else claims.jti,
        derived_from=claims.derived_from or None,
        family=claims.family,
        act_groups=tuple((d.sub, d.groups) for d in claims.act_groups) or None,
    )


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
