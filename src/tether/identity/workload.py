"""Verification of external signed tokens: workload tokens (join) and user OIDC tokens (delegation).

A workload proves where it runs with a token its platform signed: a Kubernetes projected
service-account token, a GitHub Actions OIDC token or a SPIFFE JWT-SVID. A user on whose behalf an
agent acts is proven by an ID token of the organisation's OIDC provider. Each trusted issuer is an
``IssuerConfig``; ``verify_workload_token`` / ``verify_user_token`` return who the token names, or
raise ``WorkloadTokenError`` with a reason Tether wrote (never text copied from the token).

Order of checks (cheap, attacker-independent checks first; no claim is trusted before the
signature verified, the unverified ``iss`` only selects which issuer's rules and keys apply):

1. at most ``MAX_TOKEN_BYTES`` of ASCII, three strict base64url parts, JSON objects without
   duplicate members in header and payload;
2. ``alg`` is one of the asymmetric algorithms Tether implements (``none`` and ``HS*`` are refused
   here, before any key is touched: an HMAC keyed with an issuer's *public* key is the classic
   algorithm-confusion forgery), ``kid`` is present, no ``crit`` extension;
3. ``iss`` names a configured issuer of the right kind (workload vs user), and ``alg`` is in that
   issuer's allow-list;
4. the key is the issuer's key named by ``kid``, from its JWKS (never from the token), and its
   type and curve fit ``alg``; PyJWT then verifies the signature with exactly that algorithm;
5. claims: ``aud`` holds one of the issuer's audiences, ``exp`` is required and not passed,
   ``nbf`` reached and ``iat`` not in the future (each within ``leeway``), and the lifetime
   (``exp`` minus ``iat``, else ``nbf``, else now) is at most ``max_lifetime``, so a token minted
   to live for a year is refused even while fresh;
6. the platform's shape: the claims that make the runtime id must be present and well-formed.

Runtime labels come from the platform shape (``platform`` and ``issuer`` are set by Tether and
cannot be mapped) and from the issuer's ``claim_map``. A mapped claim that is present but is not a
short printable scalar refuses the token: dropping it silently could let a workload slip past a
deny rule written on that label.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal, get_args

import httpx
import jwt

from tether.identity.errors import CredentialError
from tether.identity.jose import b64url_decode, json_object
from tether.identity.jwks import (
    ALGORITHM_KEYS,
    Clock,
    JwksCache,
    JwksError,
    JwksSource,
    UnknownKeyId,
)
from tether.identity.x509ca import X509CaError, is_trust_domain, parse_spiffe_id

Kind = Literal["kubernetes", "github-actions", "spiffe", "oidc"]
WORKLOAD_KINDS: Final = frozenset({"kubernetes", "github-actions", "spiffe"})
DEFAULT_ALGORITHMS: Final = ("RS256", "ES256", "EdDSA")
MAX_TOKEN_BYTES: Final = 16_384
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
_MAX_LABEL_VALUE = 256
_K8S_SUB = re.compile(r"system:serviceaccount:([a-z0-9-]{1,63}):([a-z0-9.-]{1,253})")
_K8S_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
_GH_REPO = re.compile(r"[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}")


class WorkloadTokenError(CredentialError):
    """An external workload or user token is refused.

    It is presented to obtain a Tether credential (a JWT-bearer grant, RFC 7523 section 3.1, or
    the subject token of a token exchange), hence ``400 invalid_grant`` rather than 401.
    """

    status: ClassVar[int] = 400
    code: ClassVar[str] = "invalid_grant"
    default_reason: ClassVar[str] = "token refused"


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
    config, claims = await _verify(token, issuers, now, WORKLOAD_KINDS)
    subject: str = claims["sub"]
    if config.kind == "kubernetes":
        runtime_id, labels = _kubernetes(claims)
    elif config.kind == "github-actions":
        runtime_id, labels = _github_actions(claims)
    else:
        runtime_id, labels = _spiffe(config, subject)
    labels = {**_mapped_labels(config, claims), **labels, "issuer": config.name}
    return WorkloadIdentity(
        issuer_name=config.name,
        subject=subject,
        runtime_id=runtime_id,
        labels=MappingProxyType(labels),
        claims=MappingProxyType(claims),
        expires_at=_expiry(claims),
    )


async def verify_user_token(token: str, issuers: TrustedIssuers, now: datetime) -> UserIdentity:
    """Verify a user's OIDC ID token (issuer kind ``oidc``); ``WorkloadTokenError`` if refused."""
    config, claims = await _verify(token, issuers, now, frozenset({"oidc"}))
    user = _printable(claims.get(config.user_claim))
    if user is None:
        raise WorkloadTokenError(f"claim {config.user_claim} missing or malformed")
    if config.user_claim == "email" and claims.get("email_verified") is not True:
        raise WorkloadTokenError("email is not verified by the issuer")
    email = _printable(claims.get("email"))
    return UserIdentity(
        issuer_name=config.name,
        subject=claims["sub"],
        user=user,
        email=email,
        groups=_groups(config, claims),
        claims=MappingProxyType(claims),
        expires_at=_expiry(claims),
    )


# --- signature and standard claims ------------------------------------------------------------


async def _verify(
    token: str, issuers: TrustedIssuers, now: datetime, kinds: frozenset[str]
) -> tuple[IssuerConfig, dict[str, Any]]:
    header, claims = _decode_unverified(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHM_KEYS:
        raise WorkloadTokenError("algorithm not allowed")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or "crit" in header:
        raise WorkloadTokenError("header must name a kid and hold no crit")
    iss = claims.get("iss")
    found = issuers.lookup(iss) if isinstance(iss, str) else None
    if found is None:
        raise WorkloadTokenError("unknown issuer")
    config, keys = found
    if config.kind not in kinds:
        raise WorkloadTokenError(f"issuer is not trusted for this use ({config.kind})")
    if alg not in config.algorithms:
        raise WorkloadTokenError("algorithm not allowed for this issuer")
    await _check_signature(token, alg, kid, keys)
    _check_claims(config, claims, now)
    return config, claims


def _decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES or not token.isascii():
        raise WorkloadTokenError("malformed token")
    parts = token.split(".")
    if len(parts) != 3:
        raise WorkloadTokenError("malformed token")
    try:
        header, claims = (json_object(b64url_decode(p)) for p in parts[:2])
        b64url_decode(parts[2])
    except (ValueError, UnicodeDecodeError):
        raise WorkloadTokenError("malformed token") from None
    return header, claims


async def _check_signature(token: str, alg: str, kid: str, keys: JwksCache) -> None:
    try:
        jwk = await keys.get_key(kid)
    except UnknownKeyId:
        raise WorkloadTokenError("unknown signing key") from None
    except JwksError:
        raise WorkloadTokenError("issuer keys unavailable") from None
    if not jwk.fits(alg):
        raise WorkloadTokenError("signing key does not fit the algorithm")
    try:
        jwt.PyJWS().decode_complete(token, key=jwk.key, algorithms=[alg])
    except jwt.PyJWTError:
        raise WorkloadTokenError("signature does not verify") from None


def _check_claims(config: IssuerConfig, claims: dict[str, Any], now: datetime) -> None:
    if claims.get("iss") != config.issuer:  # selected by iss; checked again after verification
        raise WorkloadTokenError("unknown issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not set(config.audiences).intersection(
        a for a in audiences if isinstance(a, str)
    ):
        raise WorkloadTokenError("audience not accepted")
    if _printable(claims.get("sub"), limit=2048) is None:  # SPIFFE IDs run to 2048 bytes
        raise WorkloadTokenError("sub missing or malformed")
    at, leeway = now.timestamp(), config.leeway.total_seconds()
    exp = _numeric(claims, "exp", required=True)
    nbf, iat = _numeric(claims, "nbf"), _numeric(claims, "iat")
    if exp is None or at >= exp + leeway:
        raise WorkloadTokenError("token expired")
    if nbf is not None and at < nbf - leeway:
        raise WorkloadTokenError("token not yet valid")
    if iat is not None and at < iat - leeway:
        raise WorkloadTokenError("token issued in the future")
    start = iat if iat is not None else nbf if nbf is not None else at
    if exp - start > config.max_lifetime.total_seconds():
        raise WorkloadTokenError("token lifetime exceeds the issuer's maximum")


def _numeric(claims: Mapping[str, Any], name: str, *, required: bool = False) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WorkloadTokenError(f"{name} missing or not a number")
    if not 0 <= value < 253402300800:  # year 10000: beyond, datetime cannot represent it
        raise WorkloadTokenError(f"{name} out of range")
    return float(value)


def _expiry(claims: Mapping[str, Any]) -> datetime:
    return datetime.fromtimestamp(claims["exp"], UTC)


# --- platform shapes --------------------------------------------------------------------------


def _kubernetes(claims: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """``k8s/<namespace>/<pod>``: only pod-bound projected tokens name a runtime."""
    match = _K8S_SUB.fullmatch(claims["sub"])
    k8s = claims.get("kubernetes.io")
    if match is None or not isinstance(k8s, dict):
        raise WorkloadTokenError("not a Kubernetes service-account token")
    namespace = k8s.get("namespace")
    account, pod = k8s.get("serviceaccount"), k8s.get("pod")
    if not isinstance(account, dict) or not isinstance(pod, dict):
        raise WorkloadTokenError("Kubernetes token is not bound to a pod")
    pod_name = pod.get("name")
    if (namespace, account.get("name")) != match.groups():
        raise WorkloadTokenError("Kubernetes sub does not match its namespace and account")
    if not isinstance(pod_name, str) or not _K8S_NAME.fullmatch(pod_name):
        raise WorkloadTokenError("Kubernetes pod name missing or malformed")
    return f"k8s/{namespace}/{pod_name}", {"platform": "kubernetes"}


def _github_actions(claims: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """``gha/<owner>/<repo>/<run_id>``."""
    repository, run_id = claims.get("repository"), claims.get("run_id")
    if not isinstance(repository, str) or not _GH_REPO.fullmatch(repository):
        raise WorkloadTokenError("GitHub Actions repository missing or malformed")
    if not isinstance(run_id, str) or not run_id.isdecimal() or not run_id.isascii():
        raise WorkloadTokenError("GitHub Actions run_id missing or malformed")
    return f"gha/{repository}/{run_id}", {"platform": "github-actions"}


def _spiffe(config: IssuerConfig, subject: str) -> tuple[str, dict[str, str]]:
    """The SPIFFE ID itself, if in a trust domain this issuer vouches for."""
    try:
        spiffe_id = parse_spiffe_id(subject)
    except X509CaError:
        raise WorkloadTokenError("sub is not a SPIFFE ID") from None
    if not spiffe_id.path:
        raise WorkloadTokenError("sub is a trust domain, not a workload")
    if spiffe_id.trust_domain not in config.trust_domains:
        raise WorkloadTokenError("SPIFFE trust domain not vouched for by this issuer")
    return str(spiffe_id), {"platform": "spiffe", "trust_domain": spiffe_id.trust_domain}


# --- claims to labels -------------------------------------------------------------------------


def _mapped_labels(config: IssuerConfig, claims: Mapping[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for path, label in config.claim_map.items():
        value = resolve_claim(claims, path)
        if value is None:
            continue
        text = _label_value(value)
        if text is None:
            raise WorkloadTokenError(f"claim {path} cannot be the label {label}")
        labels[label] = text
    return labels


def resolve_claim(claims: Mapping[str, Any], path: str) -> object:
    """The claim at a dotted ``path``; a member whose own name holds dots matches whole.

    ``kubernetes.io.namespace`` finds ``claims["kubernetes.io"]["namespace"]``; when two readings
    exist, the longest member name wins. None when absent.
    """
    if path in claims:
        return claims[path]
    candidates = [k for k in claims if isinstance(k, str) and path.startswith(k + ".")]
    for name in sorted(candidates, key=len, reverse=True):
        inner = claims[name]
        if isinstance(inner, Mapping):
            found = resolve_claim(inner, path[len(name) + 1 :])
            if found is not None:
                return found
    return None


def _label_value(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return _printable(value)


def _printable(value: object, limit: int = _MAX_LABEL_VALUE) -> str | None:
    """A non-empty printable string of at most ``limit`` characters, else None."""
    if isinstance(value, str) and 0 < len(value) <= limit and value.isprintable():
        return value
    return None


def _groups(config: IssuerConfig, claims: Mapping[str, Any]) -> tuple[str, ...]:
    if config.groups_claim is None or claims.get(config.groups_claim) is None:
        return ()
    groups = claims[config.groups_claim]
    if not isinstance(groups, list) or len(groups) > 1024:
        raise WorkloadTokenError(f"claim {config.groups_claim} is not a list of groups")
    names = tuple(_printable(g) for g in groups)
    if any(n is None for n in names):
        raise WorkloadTokenError(f"claim {config.groups_claim} is not a list of groups")
    return tuple(n for n in names if n is not None)
