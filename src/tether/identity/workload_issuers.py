"""Trusted external issuers of workload and user tokens, for :mod:`tether.identity.workload`.

Each trusted issuer is an ``IssuerConfig``, validated at construction: an invalid one raises
``IssuerConfigError`` naming the issuer and the key. ``TrustedIssuers`` holds them by ``iss``,
each with the JWKS cache its keys come from (never from a token).

Security decisions:

* ``none`` and every ``HS*`` algorithm are refused in an issuer's allow-list: an HMAC keyed
  with an issuer's *public* key is the classic algorithm-confusion forgery. Only the
  asymmetric algorithms Tether implements can be listed.
* ``max_lifetime`` must be positive and ``leeway`` at most 5 minutes, so that a long-lived or
  stale token cannot be accepted by configuration.
* A ``claim_map`` may not write the labels Tether sets itself (``platform``, ``issuer``,
  ``trust_domain``); a SPIFFE issuer must name the trust domains it vouches for.
* Two issuers with the same name or ``iss`` are refused: which one vouches for a token must
  never depend on configuration order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Final, Literal, get_args

import httpx

from tether.identity.jwks import ALGORITHM_KEYS, Clock, JwksCache, JwksSource
from tether.identity.x509ca import is_trust_domain

Kind = Literal["kubernetes", "github-actions", "spiffe", "oidc"]
WORKLOAD_KINDS: Final = frozenset({"kubernetes", "github-actions", "spiffe"})
DEFAULT_ALGORITHMS: Final = ("RS256", "ES256", "EdDSA")
RESERVED_LABELS: Final = frozenset({"platform", "issuer", "trust_domain"})
#: Labels every issuer of a kind gets; an ``IssuerConfig.claim_map`` adds to (or re-maps) these.
DEFAULT_CLAIM_MAPS: Final[Mapping[str, Mapping[str, str]]] = {
    "kubernetes": {
        "kubernetes.io.namespace": "namespace",
        "kubernetes.io.serviceaccount.name": "serviceaccount",
        "kubernetes.io.pod.name": "pod",
    },
    "github-actions": {
        "repository": "repo",
        "repository_owner": "owner",
        "ref": "ref",
        "workflow": "workflow",
        "environment": "environment",
        "job_workflow_ref": "job_workflow_ref",
        "event_name": "event",
    },
    "spiffe": {},
    "oidc": {},
}
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_LABEL = re.compile(r"[a-z0-9][a-z0-9._/-]{0,62}")


class IssuerConfigError(ValueError):
    """An issuer configuration is invalid; the message names the issuer and the key."""


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """One trusted external issuer. Validated at construction."""

    name: str
    issuer: str
    audiences: Sequence[str]
    jwks: JwksSource
    kind: Kind
    algorithms: Sequence[str] = DEFAULT_ALGORITHMS
    claim_map: Mapping[str, str] = field(default_factory=dict)
    max_lifetime: timedelta = timedelta(hours=1)
    leeway: timedelta = timedelta(seconds=60)
    trust_domains: Sequence[str] = ()  # kind "spiffe": the trust domains this issuer vouches for
    user_claim: str = "sub"  # kind "oidc": the claim naming the user
    groups_claim: str | None = "groups"  # kind "oidc": a list of group names, if any

    def __post_init__(self) -> None:
        for name in ("audiences", "algorithms", "trust_domains"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        merged = {**DEFAULT_CLAIM_MAPS.get(self.kind, {}), **self.claim_map}
        object.__setattr__(self, "claim_map", MappingProxyType(merged))
        _IssuerChecks(self).run()


@dataclass(frozen=True, slots=True)
class _IssuerChecks:
    config: IssuerConfig

    def fail(self, key: str, problem: str) -> IssuerConfigError:
        return IssuerConfigError(f"issuer {self.config.name!r}: {key}: {problem}")

    def run(self) -> None:
        c = self.config
        if not _NAME.fullmatch(c.name):
            raise self.fail("name", "must match [a-z0-9][a-z0-9._-]{0,63}")
        if not c.issuer or len(c.issuer) > 1024 or not c.issuer.isprintable() or " " in c.issuer:
            raise self.fail("issuer", "must be a non-empty string without spaces")
        if c.kind not in get_args(Kind):
            raise self.fail("kind", f"must be one of {', '.join(get_args(Kind))}")
        if not c.audiences or not all(isinstance(a, str) and a for a in c.audiences):
            raise self.fail("audiences", "must be a non-empty list of non-empty strings")
        self._algorithms()
        self._claim_map()
        if c.max_lifetime <= timedelta(0):
            raise self.fail("max_lifetime", "must be positive")
        if not timedelta(0) <= c.leeway <= timedelta(minutes=5):
            raise self.fail("leeway", "must be between 0 and 5 minutes")
        if c.kind == "spiffe":
            if not c.trust_domains:
                raise self.fail("trust_domains", "a spiffe issuer must name its trust domains")
            for domain in c.trust_domains:
                if not is_trust_domain(domain):
                    raise self.fail("trust_domains", "each must be a bare SPIFFE trust domain")

    def _algorithms(self) -> None:
        algorithms = self.config.algorithms
        if not algorithms:
            raise self.fail("algorithms", "must not be empty")
        for alg in algorithms:
            if not isinstance(alg, str) or alg.lower() == "none" or alg.upper().startswith("HS"):
                raise self.fail("algorithms", f"{alg!r} is never allowed for an external issuer")
            if alg not in ALGORITHM_KEYS:
                raise self.fail("algorithms", f"{alg!r} is not one of {sorted(ALGORITHM_KEYS)}")

    def _claim_map(self) -> None:
        for path, label in self.config.claim_map.items():
            if not isinstance(path, str) or not path or len(path) > 256:
                raise self.fail("claim_map", "claim paths must be non-empty strings")
            if not isinstance(label, str) or not _LABEL.fullmatch(label):
                raise self.fail("claim_map", f"label {label!r} is not a valid label name")
            if label in RESERVED_LABELS:
                raise self.fail("claim_map", f"label {label!r} is set by Tether")


class TrustedIssuers:
    """The configured issuers, by ``iss``, each with its JWKS cache."""

    def __init__(self, issuers: Iterable[tuple[IssuerConfig, JwksCache]]) -> None:
        self._by_iss: dict[str, tuple[IssuerConfig, JwksCache]] = {}
        names: set[str] = set()
        for config, cache in issuers:
            if config.issuer in self._by_iss or config.name in names:
                raise IssuerConfigError(f"issuer {config.name!r}: name or issuer configured twice")
            self._by_iss[config.issuer] = (config, cache)
            names.add(config.name)

    @classmethod
    def from_configs(
        cls,
        configs: Iterable[IssuerConfig],
        *,
        clock: Clock,
        http_client: httpx.AsyncClient | None = None,
    ) -> TrustedIssuers:
        """A cache per issuer, fetching from its ``jwks`` source with default timings."""
        return cls((c, JwksCache(c.jwks.fetcher(http_client), clock=clock)) for c in configs)

    def lookup(self, iss: str) -> tuple[IssuerConfig, JwksCache] | None:
        return self._by_iss.get(iss)
