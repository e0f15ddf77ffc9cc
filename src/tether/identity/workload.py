"""Verification of external signed tokens: workload tokens (join) and user OIDC tokens (delegation).

A workload proves where it runs with a token its platform signed: a Kubernetes projected
service-account token, a GitHub Actions OIDC token or a SPIFFE JWT-SVID. A user on whose behalf an
agent acts is proven by an ID token of the organisation's OIDC provider. Each trusted issuer is an
``IssuerConfig``; ``verify_workload_token`` / ``verify_user_token`` return who the token names, or
raise ``WorkloadTokenError`` with a reason Tether wrote (never text copied from the token).

This module is the entry point. The checks live in :mod:`tether.identity.workload_jwt`
(encoding, header, issuer, signature and standard claims, in the order it documents),
:mod:`tether.identity.workload_claims` (the platform's shape and the labels) and
:mod:`tether.identity.workload_issuers` (the issuers' configuration).

Order of checks: cheap, attacker-independent checks first; no claim is trusted before the
signature verified, the unverified ``iss`` only selects which issuer's rules and keys apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from tether.identity.workload_claims import (
    github_actions_runtime,
    groups,
    kubernetes_runtime,
    mapped_labels,
    resolve_claim,
    spiffe_runtime,
)
from tether.identity.workload_issuers import (
    DEFAULT_ALGORITHMS,
    DEFAULT_CLAIM_MAPS,
    RESERVED_LABELS,
    WORKLOAD_KINDS,
    IssuerConfig,
    IssuerConfigError,
    Kind,
    TrustedIssuers,
)
from tether.identity.workload_jwt import (
    MAX_TOKEN_BYTES,
    WorkloadTokenError,
    expiry,
    printable,
    verify_signed,
)

__all__ = [
    "DEFAULT_ALGORITHMS",
    "DEFAULT_CLAIM_MAPS",
    "MAX_TOKEN_BYTES",
    "RESERVED_LABELS",
    "WORKLOAD_KINDS",
    "IssuerConfig",
    "IssuerConfigError",
    "Kind",
    "TrustedIssuers",
    "UserIdentity",
    "WorkloadIdentity",
    "WorkloadTokenError",
    "resolve_claim",
    "verify_user_token",
    "verify_workload_token",
]


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    """A verified workload: where it runs (``runtime_id``, ``labels``) per its issuer."""

    issuer_name: str
    subject: str
    runtime_id: str
    labels: Mapping[str, str]
    claims: Mapping[str, Any]
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class UserIdentity:
    """A verified user (for delegation): ``user`` per the issuer's ``user_claim``."""

    issuer_name: str
    subject: str
    user: str
    email: str | None
    groups: tuple[str, ...]
    claims: Mapping[str, Any]
    expires_at: datetime


async def verify_workload_token(
    token: str, issuers: TrustedIssuers, now: datetime
) -> WorkloadIdentity:
    """Verify a Kubernetes, GitHub Actions or SPIFFE token; ``WorkloadTokenError`` if refused."""
    config, claims = await verify_signed(token, issuers, now, WORKLOAD_KINDS)
    subject: str = claims["sub"]
    if config.kind == "kubernetes":
        runtime_id, labels = kubernetes_runtime(claims)
    elif config.kind == "github-actions":
        runtime_id, labels = github_actions_runtime(claims)
    else:
        runtime_id, labels = spiffe_runtime(config, subject)
    labels = {**mapped_labels(config, claims), **labels, "issuer": config.name}
    return WorkloadIdentity(
        issuer_name=config.name,
        subject=subject,
        runtime_id=runtime_id,
        labels=MappingProxyType(labels),
        claims=MappingProxyType(claims),
        expires_at=expiry(claims),
    )


async def verify_user_token(token: str, issuers: TrustedIssuers, now: datetime) -> UserIdentity:
    """Verify a user's OIDC ID token (issuer kind ``oidc``); ``WorkloadTokenError`` if refused."""
    config, claims = await verify_signed(token, issuers, now, frozenset({"oidc"}))
    user = printable(claims.get(config.user_claim))
    if user is None:
        raise WorkloadTokenError(f"claim {config.user_claim} missing or malformed")
    if config.user_claim == "email" and claims.get("email_verified") is not True:
        raise WorkloadTokenError("email is not verified by the issuer")
    email = printable(claims.get("email"))
    return UserIdentity(
        issuer_name=config.name,
        subject=claims["sub"],
        user=user,
        email=email,
        groups=groups(config, claims),
        claims=MappingProxyType(claims),
        expires_at=expiry(claims),
    )
