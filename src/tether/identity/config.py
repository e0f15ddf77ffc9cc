"""The ``identity`` section of the configuration, validated once at load.

It maps to :class:`~tether.identity.service.IdentitySettings` (lifetimes, issuer, audience,
trust domain) and to the trusted external issuers
(:class:`~tether.identity.workload.IssuerConfig`): workload issuers whose tokens attest where
an agent runs, each with the subjects it maps to agents, and user issuers (OIDC) whose ID
tokens start a delegation. Every key is documented in docs/configuration.md.

This module only needs pydantic at import time (``tether.config`` imports it for every
command); the identity modules are imported when an issuer is checked or built.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from tether.identity.names import AGENT_ID_TEXT, is_agent_id

if TYPE_CHECKING:
    from tether.identity.service import IdentitySettings
    from tether.identity.workload import IssuerConfig

Seconds = Annotated[int, Field(gt=0, le=86400)]
NonEmpty = Annotated[str, Field(min_length=1, max_length=1024)]


def _check_issuer_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL, got {value!r}")
    if parts.query or parts.fragment or value.endswith("/"):
        raise ValueError("the issuer URL has no query, fragment or trailing slash")
    return value


class _Issuer(BaseModel):
    """What every trusted external issuer has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    issuer: NonEmpty
    audiences: Annotated[list[NonEmpty], Field(min_length=1)]
    jwks_url: str | None = None
    jwks_file: Path | None = None
    algorithms: list[str] | None = None
    max_lifetime: Seconds = 3600

    @model_validator(mode="after")
    def _one_jwks(self) -> Self:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of jwks_url and jwks_file")
        self.to_issuer_config()  # every rule of IssuerConfig, reported at load
        return self

    @abstractmethod
    def to_issuer_config(self) -> IssuerConfig:
        """The runtime form; ``ValueError`` naming the issuer and the key if invalid."""

    def _build(self, kind: str, **extra: object) -> IssuerConfig:
        from datetime import timedelta

        from tether.identity.jwks import JwksSource
        from tether.identity.workload import DEFAULT_ALGORITHMS, IssuerConfig

        source = JwksSource(url=self.jwks_url, path=self.jwks_file)
        return IssuerConfig(
            name=self.name,
            issuer=self.issuer,
            audiences=tuple(self.audiences),
            jwks=source,
            kind=kind,  # type: ignore[arg-type]  # a Literal checked by each subclass
            algorithms=tuple(self.algorithms or DEFAULT_ALGORITHMS),
            max_lifetime=timedelta(seconds=self.max_lifetime),
            **extra,  # type: ignore[arg-type]
        )


class WorkloadIssuer(_Issuer):
    """An issuer of workload tokens (Kubernetes, GitHub Actions, SPIFFE JWT-SVID)."""

    kind: Literal["kubernetes", "github-actions", "spiffe"]
    claim_map: dict[str, str] = Field(default_factory=dict)
    trust_domains: list[str] = Field(default_factory=list)
    agents: dict[NonEmpty, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _agent_ids(self) -> Self:
        for subject, agent in self.agents.items():
            if not is_agent_id(agent):
                raise ValueError(
                    f"agents: {subject!r} maps to {agent!r}: an agent id is {AGENT_ID_TEXT}"
                )
        return self

    def to_issuer_config(self) -> IssuerConfig:
        return self._build(
            self.kind, claim_map=dict(self.claim_map), trust_domains=tuple(self.trust_domains)
        )


class UserIssuer(_Issuer):
    """An OIDC provider whose users' ID tokens may start a delegation."""

    kind: Literal["oidc"] = "oidc"
    user_claim: NonEmpty = "sub"
    groups_claim: str | None = "groups"

    def to_issuer_config(self) -> IssuerConfig:
        return self._build("oidc", user_claim=self.user_claim, groups_claim=self.groups_claim)


class IdentityConfig(BaseModel):
    """The ``identity`` section: see docs/configuration.md, "identity"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: Annotated[str | None, AfterValidator(_check_issuer_url)] = None
    audience: NonEmpty = "tether"
    trust_domain: str = "tether.local"
    token_lifetime: Seconds = 600
    max_token_lifetime: Seconds = 3600
    join_token_ttl: Seconds = 900
    max_delegation_depth: Annotated[int, Field(ge=1, le=8)] = 2
    certificate_lifetime: Annotated[int, Field(gt=0, le=3600)] = 600
    max_session_lifetime: Annotated[int, Field(gt=0, le=30 * 86400)] = 86400
    revocation_poll: Annotated[float, Field(gt=0, le=60)] = 1.0
    record_retention: Annotated[int, Field(ge=0, le=10 * 366 * 86400)] = 30 * 86400
    workload_issuers: list[WorkloadIssuer] = Field(default_factory=list)
    user_issuers: list[UserIssuer] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        from tether.identity.x509ca import is_trust_domain

        if self.token_lifetime > self.max_token_lifetime:
            raise ValueError("token_lifetime is above max_token_lifetime")
        if 0 < self.record_retention < 3600:
            raise ValueError("record_retention must be 0 (keep every record) or 3600 or more")
        if not is_trust_domain(self.trust_domain):
            raise ValueError(f"trust_domain {self.trust_domain!r} is not a SPIFFE trust domain")
        names = [i.name for i in [*self.workload_issuers, *self.user_issuers]]
        issuers = [i.issuer for i in [*self.workload_issuers, *self.user_issuers]]
        if len(set(names)) != len(names) or len(set(issuers)) != len(issuers):
            raise ValueError("each trusted issuer needs its own name and issuer URL")
        return self

    def identity_settings(self, issuer: str) -> IdentitySettings:
        """The service's settings; ``issuer`` is the URL used when none is configured."""
        from tether.identity.service import IdentitySettings

        return IdentitySettings(
            issuer=self.issuer or issuer,
            audience=self.audience,
            trust_domain=self.trust_domain,
            token_lifetime=self.token_lifetime,
            max_token_lifetime=self.max_token_lifetime,
            join_token_ttl=self.join_token_ttl,
            max_delegation_depth=self.max_delegation_depth,
            certificate_lifetime=self.certificate_lifetime,
            max_session_lifetime=self.max_session_lifetime,
            revocation_poll=self.revocation_poll,
            record_retention=self.record_retention,
            workload_agents={i.name: dict(i.agents) for i in self.workload_issuers},
        )

    def issuer_configs(self) -> list[IssuerConfig]:
        """Every trusted external issuer, workload and user."""
        return [i.to_issuer_config() for i in [*self.workload_issuers, *self.user_issuers]]
