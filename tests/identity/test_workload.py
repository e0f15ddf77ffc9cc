"""External workload and user tokens: each platform's shape, every known attack, the JWKS cache."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tether.identity.errors import CredentialError
from tether.identity.jwks import (
    JwksCache,
    JwksError,
    JwksSource,
    UnknownKeyId,
    http_fetcher,
    parse_jwks,
)
from tether.identity.workload import (
    IssuerConfig,
    IssuerConfigError,
    TrustedIssuers,
    WorkloadTokenError,
    resolve_claim,
    verify_user_token,
    verify_workload_token,
)

NOW = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)
T = int(NOW.timestamp())
K8S_ISS = "https://oidc.eks.example/id/ABC"
GHA_ISS = "https://token.actions.githubusercontent.com"
SPIRE_ISS = "https://spire.example"
IDP_ISS = "https://idp.example"

# --- keys, key sets and token minting ---------------------------------------------------------

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass
class Signer:
    """One issuer key: mints tokens and publishes its JWK."""

    kid: str
    key: PrivateKey
    alg: str

    def jwk(self, **extra: str) -> dict[str, Any]:
        public = self.key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", **extra}

    def mint(self, claims: Mapping[str, Any], **header: Any) -> str:
        return self.mint_raw(json.dumps(claims).encode(), **header)

    def mint_raw(self, payload: bytes, **header: Any) -> str:
        """Sign any payload bytes (PyJWS does not look at claims)."""
        headers = {"kid": self.kid, **header}
        return jwt.api_jws.PyJWS().encode(payload, self.key, algorithm=self.alg, headers=headers)


_RSA = rsa.generate_private_key(65537, 2048)
_RSA_2 = rsa.generate_private_key(65537, 2048)
K8S = Signer("k8s-1", _RSA, "RS256")
K8S_NEXT = Signer("k8s-2", _RSA_2, "RS256")
GHA = Signer("gha-1", ec.generate_private_key(ec.SECP256R1()), "ES256")
SPIRE = Signer("spire-1", ec.generate_private_key(ec.SECP256R1()), "ES256")
IDP = Signer("idp-1", ed25519.Ed25519PrivateKey.generate(), "EdDSA")
FOREIGN = Signer("k8s-1", rsa.generate_private_key(65537, 2048), "RS256")  # same kid, other key


def jwks(*signers: Signer) -> bytes:
    return json.dumps({"keys": [s.jwk() for s in signers]}).encode()


class FakeClock:
    def __init__(self, at: datetime = NOW) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **kwargs: float) -> None:
        self.at += timedelta(**kwargs)


@dataclass
class MemoryJwks:
    """An in-memory JWKS endpoint: what it serves can change; counts fetches."""

    document: bytes
    fetches: int = 0
    fail: bool = False

    async def __call__(self) -> bytes:
        self.fetches += 1
        if self.fail:
            raise JwksError("issuer down")
        return self.document


def k8s_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": K8S_ISS,
        "aud": ["tether"],
        "sub": "system:serviceaccount:prod:billing",
        "iat": T - 60,
        "nbf": T - 60,
        "exp": T + 540,
        "kubernetes.io": {
            "namespace": "prod",
            "node": {"name": "ip-10-0-1-7", "uid": "n-1"},
            "pod": {"name": "billing-7f9c", "uid": "p-1"},
            "serviceaccount": {"name": "billing", "uid": "sa-1"},
        },
    }
    return {**claims, **overrides}


def gha_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": GHA_ISS,
        "aud": "tether",
        "sub": "repo:octo-org/octo-repo:environment:prod",
        "iat": T - 10,
        "exp": T + 290,
        "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org",
        "repository_visibility": "private",
        "ref": "refs/heads/main",
        "workflow": "deploy",
        "environment": "prod",
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
        "run_id": "6061234567",
        "event_name": "push",
    }
    return {**claims, **overrides}


def svid_claims(**overrides: Any) -> dict[str, Any]:
    claims = {
        "iss": SPIRE_ISS,
        "aud": ["tether"],
        "sub": "spiffe://prod.example/ns/billing/sa/bot",
        "exp": T + 300,
        "iat": T,
    }
    return {**claims, **overrides}


def user_claims(**overrides: Any) -> dict[str, Any]:
    claims = {
        "iss": IDP_ISS,
        "aud": "tether-console",
        "sub": "00u1abcd",
        "preferred_username": "alice",
        "email": "alice@example.com",
        "email_verified": True,
        "groups": ["finance", "sre"],
        "iat": T - 5,
        "exp": T + 600,
    }
    return {**claims, **overrides}


def _source() -> JwksSource:
    return JwksSource(url="https://unused.example/jwks")


CONFIGS = {
    "k8s": IssuerConfig(
        name="cluster-a",
        issuer=K8S_ISS,
        audiences=["tether"],
        jwks=_source(),
        kind="kubernetes",
        claim_map={"kubernetes.io.node.name": "node"},
    ),
    "gha": IssuerConfig(
        name="github",
        issuer=GHA_ISS,
        audiences=["tether"],
        jwks=_source(),
        kind="github-actions",
        claim_map={"repository_visibility": "visibility"},
    ),
    "spire": IssuerConfig(
        name="spire",
        issuer=SPIRE_ISS,
        audiences=["tether"],
        jwks=_source(),
        kind="spiffe",
        trust_domains=["prod.example"],
    ),
    "idp": IssuerConfig(
        name="okta",
        issuer=IDP_ISS,
        audiences=["tether-console"],
        jwks=_source(),
        kind="oidc",
    ),
}


@dataclass
class World:
    """Trusted issuers backed by in-memory JWKS endpoints and a fake clock."""

    clock: FakeClock = field(default_factory=FakeClock)
    endpoints: dict[str, MemoryJwks] = field(default_factory=dict)
    issuers: TrustedIssuers = field(init=False)

    def __post_init__(self) -> None:
        signers = {"k8s": [K8S], "gha": [GHA], "spire": [SPIRE], "idp": [IDP]}
        for name, keys in signers.items():
            self.endpoints[name] = MemoryJwks(jwks(*keys))
        self.issuers = TrustedIssuers(
            (CONFIGS[n], JwksCache(self.endpoints[n], clock=self.clock)) for n in CONFIGS
        )


@pytest.fixture
def world() -> World:
    return World()


async def refused(token: str, world: World, reason: str) -> WorkloadTokenError:
    with pytest.raises(WorkloadTokenError) as caught:
        await verify_workload_token(token, world.issuers, NOW)
    assert caught.value.reason == reason
    return caught.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes) -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(signature)


# --- the shapes -------------------------------------------------------------------------------


async def test_kubernetes_projected_token(world: World) -> None:
    identity = await verify_workload_token(K8S.mint(k8s_claims()), world.issuers, NOW)
    assert identity.issuer_name == "cluster-a"
    assert identity.subject == "system:serviceaccount:prod:billing"
    assert identity.runtime_id == "k8s/prod/billing-7f9c"
    assert dict(identity.labels) == {
        "platform": "kubernetes",
        "issuer": "cluster-a",
        "namespace": "prod",
        "serviceaccount": "billing",
        "pod": "billing-7f9c",
        "node": "ip-10-0-1-7",
    }
    assert identity.expires_at == NOW + timedelta(seconds=540)
    assert identity.claims["kubernetes.io"]["pod"]["uid"] == "p-1"


async def test_github_actions_token(world: World) -> None:
    identity = await verify_workload_token(GHA.mint(gha_claims()), world.issuers, NOW)
    assert identity.runtime_id == "gha/octo-org/octo-repo/6061234567"
    assert dict(identity.labels) == {
        "platform": "github-actions",
        "issuer": "github",
        "repo": "octo-org/octo-repo",
        "owner": "octo-org",
        "ref": "refs/heads/main",
        "workflow": "deploy",
        "environment": "prod",
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
        "event": "push",
        "visibility": "private",
    }


async def test_github_token_without_environment_has_no_environment_label(world: World) -> None:
    claims = gha_claims()
    del claims["environment"]
    identity = await verify_workload_token(GHA.mint(claims), world.issuers, NOW)
    assert "environment" not in identity.labels


async def test_spiffe_jwt_svid(world: World) -> None:
    identity = await verify_workload_token(SPIRE.mint(svid_claims(), typ="JWT"), world.issuers, NOW)
    assert identity.runtime_id == "spiffe://prod.example/ns/billing/sa/bot"
    assert dict(identity.labels) == {
        "platform": "spiffe",
        "issuer": "spire",
        "trust_domain": "prod.example",
    }


async def test_oidc_user_token_for_delegation(world: World) -> None:
    user = await verify_user_token(IDP.mint(user_claims()), world.issuers, NOW)
    assert (user.issuer_name, user.subject, user.user) == ("okta", "00u1abcd", "00u1abcd")
    assert user.groups == ("finance", "sre")
    assert user.email == "alice@example.com"
    assert user.expires_at == NOW + timedelta(seconds=600)


@pytest.mark.parametrize(
    ("user_claim", "claims", "expected"),
    [
        ("preferred_username", user_claims(), "alice"),
        ("email", user_claims(), "alice@example.com"),
    ],
)
async def test_user_claim_is_configurable(
    user_claim: str, claims: dict[str, Any], expected: str
) -> None:
    config = IssuerConfig(
        name="okta",
        issuer=IDP_ISS,
        audiences=["tether-console"],
        jwks=_source(),
        kind="oidc",
        user_claim=user_claim,
        groups_claim=None,
    )
    issuers = TrustedIssuers([(config, JwksCache(MemoryJwks(jwks(IDP)), clock=FakeClock()))])
    user = await verify_user_token(IDP.mint(claims), issuers, NOW)
    assert user.user == expected and user.groups == ()


async def test_unverified_email_is_not_a_user_name() -> None:
    config = IssuerConfig(
        name="okta",
        issuer=IDP_ISS,
        audiences=["tether-console"],
        jwks=_source(),
        kind="oidc",
        user_claim="email",
    )
    issuers = TrustedIssuers([(config, JwksCache(MemoryJwks(jwks(IDP)), clock=FakeClock()))])
    with pytest.raises(WorkloadTokenError, match="email is not verified"):
        await verify_user_token(IDP.mint(user_claims(email_verified="true")), issuers, NOW)


@pytest.mark.parametrize("groups", ["finance", [1, 2], ["ok", {"x": 1}], ["bad\nname"]])
async def test_malformed_groups_refuse_the_user_token(world: World, groups: object) -> None:
    with pytest.raises(WorkloadTokenError, match="not a list of groups"):
        await verify_user_token(IDP.mint(user_claims(groups=groups)), world.issuers, NOW)


async def test_a_user_token_is_not_a_workload_token_and_vice_versa(world: World) -> None:
    await refused(IDP.mint(user_claims()), world, "issuer is not trusted for this use (oidc)")
    with pytest.raises(WorkloadTokenError, match="not trusted for this use"):
        await verify_user_token(K8S.mint(k8s_claims()), world.issuers, NOW)


# --- shape violations -------------------------------------------------------------------------


async def test_kubernetes_sub_must_match_its_namespace(world: World) -> None:
    token = K8S.mint(k8s_claims(sub="system:serviceaccount:kube-system:billing"))
    await refused(token, world, "Kubernetes sub does not match its namespace and account")


async def test_kubernetes_token_not_bound_to_a_pod_names_no_runtime(world: World) -> None:
    claims = k8s_claims()
    del claims["kubernetes.io"]["pod"]
    await refused(K8S.mint(claims), world, "Kubernetes token is not bound to a pod")


async def test_kubernetes_pod_name_cannot_smuggle_a_path(world: World) -> None:
    claims = k8s_claims()
    claims["kubernetes.io"]["pod"]["name"] = "a/../../other"
    await refused(K8S.mint(claims), world, "Kubernetes pod name missing or malformed")


async def test_kubernetes_legacy_token_without_exp_is_refused(world: World) -> None:
    claims = k8s_claims()
    del claims["exp"]
    await refused(K8S.mint(claims), world, "exp missing or not a number")


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        (gha_claims(run_id=123), "GitHub Actions run_id missing or malformed"),
        (gha_claims(run_id="12/../3"), "GitHub Actions run_id missing or malformed"),
        (gha_claims(repository="octo/repo/x"), "GitHub Actions repository missing or malformed"),
        (gha_claims(environment=["prod"]), "claim environment cannot be the label environment"),
        (gha_claims(workflow="x" * 300), "claim workflow cannot be the label workflow"),
    ],
)
async def test_github_shape_violations(world: World, claims: dict[str, Any], reason: str) -> None:
    await refused(GHA.mint(claims), world, reason)


@pytest.mark.parametrize(
    ("sub", "reason"),
    [
        ("spiffe://other.example/ns/x", "SPIFFE trust domain not vouched for by this issuer"),
        ("spiffe://prod.example", "sub is a trust domain, not a workload"),
        ("spiffe://prod.example/a/../b", "sub is not a SPIFFE ID"),
        ("bot", "sub is not a SPIFFE ID"),
    ],
)
async def test_spiffe_subject_violations(world: World, sub: str, reason: str) -> None:
    await refused(SPIRE.mint(svid_claims(sub=sub)), world, reason)


async def test_jwt_svid_without_audience_is_refused(world: World) -> None:
    claims = svid_claims()
    del claims["aud"]
    await refused(SPIRE.mint(claims), world, "audience not accepted")


# --- attacks ----------------------------------------------------------------------------------


async def test_expired_token_is_refused_and_leeway_is_honoured(world: World) -> None:
    late = K8S.mint(k8s_claims(exp=T - 61))
    await refused(late, world, "token expired")
    within = K8S.mint(k8s_claims(exp=T - 59))
    assert (await verify_workload_token(within, world.issuers, NOW)).runtime_id


async def test_not_yet_valid_and_future_tokens_are_refused(world: World) -> None:
    await refused(K8S.mint(k8s_claims(nbf=T + 120)), world, "token not yet valid")
    await refused(K8S.mint(k8s_claims(iat=T + 120, nbf=T)), world, "token issued in the future")


async def test_a_token_minted_to_live_too_long_is_refused_even_while_fresh(world: World) -> None:
    token = K8S.mint(k8s_claims(iat=T - 60, exp=T + 365 * 86400))
    await refused(token, world, "token lifetime exceeds the issuer's maximum")


async def test_alg_none_is_refused(world: World) -> None:
    token = raw_token({"alg": "none", "kid": "k8s-1"}, k8s_claims(), b"")
    await refused(token, world, "algorithm not allowed")
    for alg in ("None", "NONE", "nOnE"):
        unsigned = raw_token({"alg": alg, "kid": "k8s-1"}, k8s_claims(), b"x")
        await refused(unsigned, world, "algorithm not allowed")


async def test_hs256_signed_with_the_rsa_public_key_is_refused(world: World) -> None:
    """The algorithm-confusion forgery: HMAC keyed with the issuer's public key."""
    public_pem = _RSA.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64(json.dumps({"alg": "HS256", "kid": "k8s-1", "typ": "JWT"}).encode())
    body = b64(json.dumps(k8s_claims()).encode())
    mac = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    await refused(f"{head}.{body}.{b64(mac)}", world, "algorithm not allowed")


async def test_an_algorithm_outside_the_issuer_allow_list_is_refused() -> None:
    config = IssuerConfig(
        name="cluster-a",
        issuer=K8S_ISS,
        audiences=["tether"],
        jwks=_source(),
        kind="kubernetes",
        algorithms=["ES256"],
    )
    issuers = TrustedIssuers([(config, JwksCache(MemoryJwks(jwks(K8S)), clock=FakeClock()))])
    with pytest.raises(WorkloadTokenError, match="algorithm not allowed for this issuer"):
        await verify_workload_token(K8S.mint(k8s_claims()), issuers, NOW)


async def test_a_key_used_with_an_algorithm_it_does_not_fit_is_refused(world: World) -> None:
    """An RS256 header pointing at the issuer's EC key: refused before any signature check."""
    token = Signer("gha-1", _RSA, "RS256").mint(gha_claims())
    await refused(token, world, "signing key does not fit the algorithm")


@pytest.mark.parametrize(
    ("aud", "ok"),
    [("tether", True), (["other", "tether"], True), ("other", False), ([], False), (7, False)],
)
async def test_audience(world: World, aud: object, ok: bool) -> None:
    token = K8S.mint(k8s_claims(aud=aud))
    if ok:
        assert await verify_workload_token(token, world.issuers, NOW)
    else:
        await refused(token, world, "audience not accepted")


async def test_unknown_issuer_is_refused_without_echoing_it(world: World) -> None:
    error = await refused(
        K8S.mint(k8s_claims(iss="https://evil.example\r\nX: y")), world, "unknown issuer"
    )
    assert "evil" not in str(error) and "evil" not in error.challenge()
    assert isinstance(error, CredentialError) and error.status == 400
    assert error.code == "invalid_grant"


async def test_wrong_issuer_of_a_known_shape_is_refused(world: World) -> None:
    await refused(K8S.mint(k8s_claims(iss=K8S_ISS + "/")), world, "unknown issuer")
    await refused(K8S.mint(k8s_claims(iss=None)), world, "unknown issuer")
    await refused(K8S.mint(k8s_claims(iss=[K8S_ISS])), world, "unknown issuer")


async def test_tampered_payload_is_refused(world: World) -> None:
    head, _, signature = K8S.mint(k8s_claims()).split(".")
    claims = k8s_claims()
    claims["kubernetes.io"]["namespace"] = "kube-system"
    claims["sub"] = "system:serviceaccount:kube-system:billing"
    forged = f"{head}.{b64(json.dumps(claims).encode())}.{signature}"
    await refused(forged, world, "signature does not verify")


async def test_tampered_signature_is_refused(world: World) -> None:
    head, body, signature = K8S.mint(k8s_claims()).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 1
    await refused(f"{head}.{body}.{b64(bytes(raw))}", world, "signature does not verify")


async def test_unknown_kid_is_refused(world: World) -> None:
    await refused(Signer("nope", _RSA, "RS256").mint(k8s_claims()), world, "unknown signing key")


async def test_missing_kid_and_crit_headers_are_refused(world: World) -> None:
    token = jwt.encode(k8s_claims(), _RSA, algorithm="RS256")
    await refused(token, world, "header must name a kid and hold no crit")
    await refused(
        K8S.mint(k8s_claims(), crit=["exp"]), world, "header must name a kid and hold no crit"
    )


async def test_a_key_of_another_issuer_does_not_verify(world: World) -> None:
    """Same kid as the issuer's, another private key: the issuer's own key decides."""
    await refused(FOREIGN.mint(k8s_claims()), world, "signature does not verify")
    await refused(GHA.mint(k8s_claims()), world, "unknown signing key")  # other issuer's kid


async def test_duplicate_claims_are_refused(world: World) -> None:
    payload = json.dumps(k8s_claims())[:-1] + ', "sub": "system:serviceaccount:prod:admin"}'
    await refused(K8S.mint_raw(payload.encode()), world, "malformed token")


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c.d.e", "x" * 20000, "é.é.é", "e30.e30.e30=", "W10.e30.AA"],
)
async def test_malformed_tokens_are_refused(world: World, token: str) -> None:
    await refused(token, world, "malformed token")


async def test_unreachable_issuer_keys_fail_closed(world: World) -> None:
    world.endpoints["k8s"].fail = True
    await refused(K8S.mint(k8s_claims()), world, "issuer keys unavailable")


# --- issuer configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"algorithms": ["HS256"]}, "'HS256' is never allowed"),
        ({"algorithms": ["none"]}, "'none' is never allowed"),
        ({"algorithms": ["RS1"]}, "'RS1' is not one of"),
        ({"algorithms": []}, "algorithms: must not be empty"),
        ({"audiences": []}, "audiences"),
        ({"audiences": [""]}, "audiences"),
        ({"name": "Bad Name"}, "name"),
        ({"issuer": ""}, "issuer"),
        ({"kind": "jenkins"}, "kind"),
        ({"claim_map": {"x": "platform"}}, "label 'platform' is set by Tether"),
        ({"claim_map": {"x": "Bad Label"}}, "not a valid label name"),
        ({"claim_map": {"": "x"}}, "claim paths"),
        ({"max_lifetime": timedelta(0)}, "max_lifetime"),
        ({"leeway": timedelta(hours=1)}, "leeway"),
        ({"kind": "spiffe"}, "trust_domains: a spiffe issuer must name"),
        ({"kind": "spiffe", "trust_domains": ["td/x"]}, "bare SPIFFE trust domain"),
    ],
)
def test_invalid_issuer_configs_name_the_issuer_and_key(
    overrides: dict[str, Any], message: str
) -> None:
    base: dict[str, Any] = {
        "name": "cluster-a",
        "issuer": K8S_ISS,
        "audiences": ["tether"],
        "jwks": _source(),
        "kind": "kubernetes",
    }
    with pytest.raises(IssuerConfigError, match=message) as caught:
        IssuerConfig(**{**base, **overrides})
    assert str(caught.value).startswith("issuer ")


def test_an_issuer_configured_twice_is_refused() -> None:
    cache = JwksCache(MemoryJwks(jwks(K8S)), clock=FakeClock())
    other = IssuerConfig(
        name="cluster-b", issuer=K8S_ISS, audiences=["t"], jwks=_source(), kind="kubernetes"
    )
    with pytest.raises(IssuerConfigError, match="configured twice"):
        TrustedIssuers([(CONFIGS["k8s"], cache), (other, cache)])


@pytest.mark.parametrize(
    "url", ["http://issuer.example/jwks", "ftp://x/jwks", "https:///jwks", "file:///etc/jwks"]
)
def test_jwks_urls_must_be_https_except_loopback(url: str) -> None:
    with pytest.raises(ValueError, match="https"):
        JwksSource(url=url)
    assert JwksSource(url="http://127.0.0.1:8080/jwks").url
    assert JwksSource(url="http://[::1]/jwks").url


def test_jwks_source_is_exactly_one_of_url_and_path() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        JwksSource()
    with pytest.raises(ValueError, match="exactly one"):
        JwksSource(url="https://x/jwks", path=Path("/x"))


def test_claim_paths_resolve_dotted_member_names() -> None:
    claims = {"kubernetes.io": {"pod": {"name": "p"}}, "a": {"b": 1}, "a.b": 2, "x": "y"}
    assert resolve_claim(claims, "kubernetes.io.pod.name") == "p"
    assert resolve_claim(claims, "a.b") == 2  # the whole member name wins
    assert resolve_claim(claims, "x.y") is None
    assert resolve_claim(claims, "kubernetes.io.pod.uid") is None


# --- JWKS parsing -----------------------------------------------------------------------------


def test_jwks_skips_keys_it_cannot_or_must_not_use() -> None:
    weak = Signer("weak", rsa.generate_private_key(65537, 1024), "RS256")
    document = {
        "keys": [
            K8S.jwk(),
            GHA.jwk(),
            IDP.jwk(),
            weak.jwk(),
            K8S_NEXT.jwk(use="enc"),
            {**SPIRE.jwk(), "kid": "mismatch", "alg": "RS256"},
            {**K8S_NEXT.jwk(), "kid": "rs256-only", "alg": "RS256"},
            {**SPIRE.jwk(), "kid": "off-curve", "y": GHA.jwk()["y"]},
            {**SPIRE.jwk(), "kid": "no-verify", "key_ops": ["encrypt"]},
            {"kty": "oct", "kid": "hmac"},
            {"kid": "no-kty"},
            "not a key",
            {**GHA.jwk(), "kid": "dup"},
            {**SPIRE.jwk(), "kid": "dup"},
        ]
    }
    keys = parse_jwks(json.dumps(document).encode())
    assert set(keys) == {"k8s-1", "gha-1", "idp-1", "rs256-only"}
    assert keys["rs256-only"].fits("RS256") and not keys["rs256-only"].fits("PS256")
    assert keys["k8s-1"].fits("RS256") and keys["k8s-1"].fits("PS256")
    assert not keys["k8s-1"].fits("ES256") and not keys["k8s-1"].fits("HS256")
    assert keys["gha-1"].fits("ES256") and not keys["gha-1"].fits("ES384")
    assert keys["idp-1"].fits("EdDSA")


def test_a_jwks_publishing_a_private_key_is_refused_whole() -> None:
    leaked = {**K8S.jwk(), "kid": "leaked", "d": "AAAA"}
    with pytest.raises(JwksError, match="private key material"):
        parse_jwks(json.dumps({"keys": [K8S.jwk(), leaked]}).encode())


@pytest.mark.parametrize(
    "document",
    [b"", b"[]", b'{"keys": {}}', b'{"keys": []}', b'{"keys": [{"kty": "oct"}]}', b"\xff"],
)
def test_unusable_jwks_documents_are_refused(document: bytes) -> None:
    with pytest.raises(JwksError):
        parse_jwks(document)


# --- JWKS cache -------------------------------------------------------------------------------


async def test_cache_refetches_after_its_ttl_only() -> None:
    endpoint, clock = MemoryJwks(jwks(K8S)), FakeClock()
    cache = JwksCache(endpoint, clock=clock, ttl=timedelta(minutes=5))
    for _ in range(3):
        assert (await cache.get_key("k8s-1")).kid == "k8s-1"
    assert endpoint.fetches == 1
    clock.advance(minutes=5)
    await cache.get_key("k8s-1")
    assert endpoint.fetches == 2


async def test_unknown_kid_refreshes_at_most_once_per_interval() -> None:
    endpoint, clock = MemoryJwks(jwks(K8S)), FakeClock()
    cache = JwksCache(endpoint, clock=clock, min_refresh_interval=timedelta(seconds=30))
    await cache.get_key("k8s-1")
    clock.advance(seconds=30)
    results = await asyncio.gather(
        *(cache.get_key(f"made-up-{i}") for i in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, UnknownKeyId) for r in results)
    assert endpoint.fetches == 2  # the initial fetch and one refresh for the whole flood
    clock.advance(seconds=29)
    with pytest.raises(UnknownKeyId):
        await cache.get_key("made-up-again")
    assert endpoint.fetches == 2


async def test_rotation_is_picked_up_on_the_new_kid_and_withdrawn_keys_stop(world: World) -> None:
    endpoint, clock = MemoryJwks(jwks(K8S)), FakeClock()
    cache = JwksCache(endpoint, clock=clock)
    await cache.get_key("k8s-1")
    endpoint.document = jwks(K8S_NEXT)
    clock.advance(seconds=31)
    assert (await cache.get_key("k8s-2")).kid == "k8s-2"
    with pytest.raises(UnknownKeyId):
        await cache.get_key("k8s-1")


async def test_stale_keys_serve_through_an_outage_then_fail_closed() -> None:
    endpoint, clock = MemoryJwks(jwks(K8S)), FakeClock()
    cache = JwksCache(
        endpoint, clock=clock, ttl=timedelta(minutes=5), max_stale=timedelta(minutes=15)
    )
    await cache.get_key("k8s-1")
    endpoint.fail = True
    clock.advance(minutes=19)
    assert (await cache.get_key("k8s-1")).kid == "k8s-1"
    clock.advance(minutes=1)
    with pytest.raises(JwksError, match="unavailable"):
        await cache.get_key("k8s-1")


async def test_a_failing_issuer_is_not_hammered() -> None:
    endpoint, clock = MemoryJwks(jwks(K8S), fail=True), FakeClock()
    cache = JwksCache(endpoint, clock=clock)
    for _ in range(10):
        with pytest.raises(JwksError):
            await cache.get_key("k8s-1")
    assert endpoint.fetches == 1


async def test_jwks_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(K8S))
    cache = JwksCache(JwksSource(path=path).fetcher(), clock=FakeClock())
    assert (await cache.get_key("k8s-1")).kid == "k8s-1"
    missing = JwksCache(JwksSource(path=tmp_path / "none").fetcher(), clock=FakeClock())
    with pytest.raises(JwksError, match="unavailable"):
        await missing.get_key("k8s-1")


# --- JWKS over real HTTP on loopback ----------------------------------------------------------


@dataclass
class JwksServer:
    """A real HTTP server on 127.0.0.1 serving a JWKS that tests can change."""

    document: bytes
    status: int = 200
    requests: int = 0
    url: str = ""


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    state = JwksServer(jwks(K8S))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests += 1
            self.send_response(state.status)
            if state.status in (301, 302):
                self.send_header("location", "http://127.0.0.1:1/jwks")
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(state.document)))
            self.end_headers()
            self.wfile.write(state.document)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/jwks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


async def test_rotation_over_http_new_kid_appears_at_the_url(jwks_server: JwksServer) -> None:
    clock = FakeClock()
    config = IssuerConfig(
        name="cluster-a",
        issuer=K8S_ISS,
        audiences=["tether"],
        jwks=JwksSource(url=jwks_server.url),
        kind="kubernetes",
    )
    async with httpx.AsyncClient() as client:
        issuers = TrustedIssuers.from_configs([config], clock=clock, http_client=client)
        first = await verify_workload_token(K8S.mint(k8s_claims()), issuers, NOW)
        assert first.runtime_id == "k8s/prod/billing-7f9c" and jwks_server.requests == 1
        jwks_server.document = jwks(K8S, K8S_NEXT)
        clock.advance(seconds=31)
        rotated = await verify_workload_token(K8S_NEXT.mint(k8s_claims()), issuers, NOW)
        assert rotated.runtime_id == "k8s/prod/billing-7f9c" and jwks_server.requests == 2
        for i in range(20):
            with pytest.raises(WorkloadTokenError, match="unknown signing key"):
                token = Signer(f"flood-{i}", _RSA, "RS256").mint(k8s_claims())
                await verify_workload_token(token, issuers, NOW)
        assert jwks_server.requests == 2


async def test_http_fetcher_without_a_client_and_its_refusals(jwks_server: JwksServer) -> None:
    fetch = http_fetcher(jwks_server.url)
    assert parse_jwks(await fetch()).keys() == {"k8s-1"}
    jwks_server.status = 302
    with pytest.raises(JwksError, match="HTTP 302"):
        await fetch()
    async with httpx.AsyncClient(follow_redirects=True) as client:
        with pytest.raises(JwksError, match="HTTP 302"):
            await http_fetcher(jwks_server.url, client)()
    jwks_server.status, jwks_server.document = 200, b" " * ((1 << 20) + 1)
    with pytest.raises(JwksError, match="too large"):
        await fetch()
    dead = http_fetcher("http://127.0.0.1:1/jwks")
    with pytest.raises(JwksError, match="fetch failed"):
        await dead()
