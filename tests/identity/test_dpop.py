"""DPoP proofs (RFC 9449): one test per attack, htu normalisation, the replay cache."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether.identity import jose
from tether.identity.dpop import (
    DPoPVerifier,
    access_token_hash,
    make_proof,
    normalize_htu,
)
from tether.identity.errors import (
    BindingMismatch,
    CredentialError,
    DPoPInvalid,
    ReplayDetected,
)
from tether.identity.keys import KeyRing, jwk_thumbprint
from tether.identity.replay import MemoryReplayCache, ReplayCacheFull
from tether.identity.tokens import Confirmation, Runtime, Task, TokenIssuer, TokenVerifier

T0 = 1_700_000_000.0
URL = "https://api.example.com/v1/orders/17"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(clock: Clock) -> DPoPVerifier:
    return DPoPVerifier(clock=clock, replay_cache=MemoryReplayCache(clock))


@pytest.fixture
def agent_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def jkt(agent_key: Ed25519PrivateKey) -> str:
    return jwk_thumbprint(jose.public_jwk(agent_key))


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate(T0)


@pytest.fixture
def tokens(ring: KeyRing, clock: Clock) -> TokenVerifier:
    return TokenVerifier(ring, issuer="https://tether", audience="tether", clock=clock)


@pytest.fixture
def token(ring: KeyRing, jkt: str, clock: Clock) -> str:
    issuer = TokenIssuer(ring, issuer="https://tether", audience="tether", clock=clock)
    token, _ = issuer.issue(
        subject="bot",
        task=Task("t", "p"),
        scope=["*"],
        runtime=Runtime("r"),
        cnf=Confirmation(jkt=jkt),
    )
    return token


def proof(key: Any, htm: str = "GET", htu: str = URL, **kwargs: Any) -> str:
    kwargs.setdefault("now", T0)
    return make_proof(key, htm, htu, **kwargs)


def raw_proof(key: Any, header: dict[str, Any], claims: dict[str, Any], alg: str = "EdDSA") -> str:
    return jose.encode_compact(header, claims, lambda data: jose.sign(alg, key, data))


def good_parts(key: Any, **claims: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jose.public_jwk(key)}
    body = {"jti": "j-1", "htm": "GET", "htu": URL, "iat": int(T0), **claims}
    return header, {k: v for k, v in body.items() if v is not None}


def reason(info: pytest.ExceptionInfo[CredentialError]) -> str:
    return info.value.reason


# --- accepted proofs ------------------------------------------------------------------


def test_proof_with_its_token_is_accepted(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, jkt: str, token: str
) -> None:
    result = verifier.verify(
        proof(agent_key, access_token=token, jti="abc"),
        htm="GET",
        htu=URL,
        access_token=token,
        expected_jkt=jkt,
    )
    assert (result.jkt, result.jti, result.iat) == (jkt, "abc", int(T0))


def test_proof_without_token_is_accepted_at_the_token_endpoint(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, jkt: str
) -> None:
    result = verifier.verify(
        proof(agent_key, "POST", "https://tether/token"), htm="POST", htu="https://tether/token"
    )
    assert result.jkt == jkt


def test_es256_proof_is_accepted(verifier: DPoPVerifier) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    result = verifier.verify(proof(key), htm="GET", htu=URL)
    assert result.jkt == jwk_thumbprint(jose.public_jwk(key))


def test_token_and_proof_together(
    verifier: DPoPVerifier, tokens: TokenVerifier, agent_key: Ed25519PrivateKey, token: str
) -> None:
    claims = tokens.verify(token)
    result = verifier.verify(
        proof(agent_key, access_token=token),
        htm="GET",
        htu=URL,
        access_token=token,
        expected_jkt=claims.cnf.jkt,
    )
    assert result.jkt == claims.cnf.jkt


# --- missing and malformed ------------------------------------------------------------


@pytest.mark.parametrize("value", [None, ""])
def test_missing_proof_is_refused(verifier: DPoPVerifier, value: str | None) -> None:
    with pytest.raises(DPoPInvalid) as info:
        verifier.verify(value, htm="GET", htu=URL)
    assert reason(info) == "missing DPoP proof"
    assert info.value.code == "invalid_dpop_proof"


@pytest.mark.parametrize(
    "garbage",
    [
        "x",
        "a.b.c",
        "a.b",
        "....",
        "eyJ.eyJ.sig",
        "é.é.é",
        "a" * 9000,
        "Bearer abc",
        "\x00.\x00.\x00",
    ],
)
def test_garbage_proof_is_refused(verifier: DPoPVerifier, garbage: str) -> None:
    with pytest.raises(DPoPInvalid, match="malformed"):
        verifier.verify(garbage, htm="GET", htu=URL)


def test_proof_signed_by_another_key_than_its_jwk_is_refused(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey
) -> None:
    header, claims = good_parts(agent_key)
    forged = raw_proof(Ed25519PrivateKey.generate(), header, claims)
    with pytest.raises(DPoPInvalid) as info:
        verifier.verify(forged, htm="GET", htu=URL)
    assert reason(info) == "bad DPoP proof signature"


@pytest.mark.parametrize("member", ["d", "k", "p"])
def test_jwk_with_a_private_part_is_refused(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, member: str
) -> None:
    header, claims = good_parts(agent_key)
    private = jose.b64url_encode(agent_key.private_bytes_raw())
    header["jwk"] = {**header["jwk"], member: private}
    with pytest.raises(DPoPInvalid) as info:
        verifier.verify(raw_proof(agent_key, header, claims), htm="GET", htu=URL)
    assert reason(info) == "DPoP jwk contains a private key"


@pytest.mark.parametrize("alg", ["none", "HS256", "RS256", "ES384", "EdDSA ", "", None, 1])
def test_alg_outside_the_allow_list_is_refused(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, alg: object
) -> None:
    header, claims = good_parts(agent_key)
    header["alg"] = alg
    with pytest.raises(DPoPInvalid) as info:
        verifier.verify(raw_proof(agent_key, header, claims), htm="GET", htu=URL)
    assert reason(info) == "unsupported DPoP algorithm"


def test_verifier_allow_list_is_honoured(clock: Clock) -> None:
    only_eddsa = DPoPVerifier(clock=clock, replay_cache=MemoryReplayCache(clock), algs={"EdDSA"})
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(DPoPInvalid, match="unsupported DPoP algorithm"):
        only_eddsa.verify(proof(key), htm="GET", htu=URL)
    assert only_eddsa.algs == "EdDSA"


@pytest.mark.parametrize("algs", [set(), {"HS256"}, {"EdDSA", "none"}])
def test_verifier_refuses_unsupported_algs(clock: Clock, algs: set[str]) -> None:
    with pytest.raises(ValueError):
        DPoPVerifier(clock=clock, replay_cache=MemoryReplayCache(clock), algs=algs)


def test_jwk_of_another_type_than_the_alg_is_refused(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey
) -> None:
    header, claims = good_parts(agent_key)
    header["alg"] = "ES256"  # but the jwk is an OKP key
    with pytest.raises(DPoPInvalid, match="invalid DPoP jwk"):
        verifier.verify(raw_proof(agent_key, header, claims, alg="EdDSA"), htm="GET", htu=URL)


@pytest.mark.parametrize(
    "jwk",
    [
        None,
        "key",
        {"kty": "OKP", "crv": "Ed25519"},
        {"kty": "OKP", "crv": "Ed448", "x": "AA"},
        {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},
        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
    ],
)
def test_malformed_jwk_is_refused(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, jwk: object
) -> None:
    header, claims = good_parts(agent_key)
    header["jwk"] = jwk
    with pytest.raises(DPoPInvalid, match="invalid DPoP jwk"):
        verifier.verify(raw_proof(agent_key, header, claims), htm="GET", htu=URL)


def test_ec_point_off_the_curve_is_refused(verifier: DPoPVerifier) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jose.public_jwk(key)
    y = bytearray(jose.b64url_decode(jwk["y"]))
    y[-1] ^= 1
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": {**jwk, "y": jose.b64url_encode(bytes(y))}}
    claims = good_parts(key)[1]
    with pytest.raises(DPoPInvalid, match="invalid DPoP jwk"):
        verifier.verify(raw_proof(key, header, claims, alg="ES256"), htm="GET", htu=URL)


@pytest.mark.parametrize("typ", ["jwt", "JWT", "at+jwt", "DPOP+JWT", None])
def test_wrong_typ_is_refused(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, typ: str | None
) -> None:
    header, claims = good_parts(agent_key)
    header["typ"] = typ
    with pytest.raises(DPoPInvalid, match="wrong DPoP proof type"):
        verifier.verify(raw_proof(agent_key, header, claims), htm="GET", htu=URL)


def test_crit_header_is_refused(verifier: DPoPVerifier, agent_key: Ed25519PrivateKey) -> None:
    header, claims = good_parts(agent_key)
    header["crit"] = ["exp"]
    with pytest.raises(DPoPInvalid, match="critical"):
        verifier.verify(raw_proof(agent_key, header, claims), htm="GET", htu=URL)


def test_duplicate_claim_is_refused(verifier: DPoPVerifier, agent_key: Ed25519PrivateKey) -> None:
    header, claims = good_parts(agent_key, htm="POST")
    head = jose.b64url_encode(jose.json_bytes(header))
    body = jose.b64url_encode(jose.json_bytes(claims)[:-1] + b',"htm":"GET"}')
    sig = jose.b64url_encode(agent_key.sign(f"{head}.{body}".encode()))
    with pytest.raises(DPoPInvalid, match="malformed DPoP proof payload"):
        verifier.verify(f"{head}.{body}.{sig}", htm="GET", htu=URL)


@pytest.mark.parametrize(
    ("claims", "text"),
    [
        ({"jti": None}, "jti"),
        ({"jti": ""}, "jti"),
        ({"jti": 7}, "jti"),
        ({"jti": "j" * 257}, "jti"),
        ({"iat": None}, "iat"),
        ({"iat": "1700000000"}, "iat"),
        ({"iat": True}, "iat"),
        ({"iat": 10**30}, "iat"),
        ({"htm": None}, "htm"),
        ({"htu": None}, "htu"),
        ({"htu": 5}, "htu"),
    ],
)
def test_missing_or_mistyped_claims_are_refused(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, claims: dict[str, Any], text: str
) -> None:
    header, body = good_parts(agent_key, **claims)
    for name, value in claims.items():
        if value is None:
            body.pop(name, None)
    with pytest.raises(DPoPInvalid) as info:
        verifier.verify(raw_proof(agent_key, header, body), htm="GET", htu=URL)
    assert text in reason(info)


# --- the request: htm and htu ---------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "get", "GET ", "HEAD"])
def test_wrong_htm_is_refused(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, method: str
) -> None:
    with pytest.raises(DPoPInvalid) as info:
        verifier.verify(proof(agent_key, "GET"), htm=method, htu=URL)
    assert reason(info) == "htm does not match the request method"


@pytest.mark.parametrize(
    "request_uri",
    [
        "https://api.example.com/v1/orders/18",
        "https://api.example.com/v1/orders/17/",
        "https://api.example.com/v1/orders",
        "http://api.example.com/v1/orders/17",
        "https://api.example.com:8443/v1/orders/17",
        "https://evil.example.com/v1/orders/17",
        "https://api.example.com./v1/orders/17",
        "https://api.example.com/V1/orders/17",
        "https://api.example.com/v1/orders/%31%38",  # /18 once unreserved bytes decode
        "https://api.example.com/v1/orders%2F17",  # an encoded slash is not a slash
    ],
)
def test_wrong_htu_is_refused(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, request_uri: str
) -> None:
    with pytest.raises(DPoPInvalid) as info:
        verifier.verify(proof(agent_key), htm="GET", htu=request_uri)
    assert reason(info) == "htu does not match the request URI"


@pytest.mark.parametrize(
    "proof_htu",
    [
        URL + "?id=17",
        URL + "?",
        URL + "#frag",
        URL + "?a=1#frag",
    ],
)
def test_proof_htu_with_query_or_fragment_is_refused(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, proof_htu: str
) -> None:
    header, claims = good_parts(agent_key, htu=proof_htu)
    with pytest.raises(DPoPInvalid, match="htu"):
        verifier.verify(raw_proof(agent_key, header, claims), htm="GET", htu=proof_htu)


@pytest.mark.parametrize(
    "request_uri",
    [
        URL + "?limit=50",
        URL + "?",
        URL + "#section",
        URL + "?q=caf\u00e9 bar",  # a sloppy query is cut off before any check
        "HTTPS://API.EXAMPLE.COM/v1/orders/17",
        "https://api.example.com:443/v1/orders/17",
        "https://api.example.com/v1/orders/%31%37",
    ],
)
def test_request_uri_variants_that_match(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, request_uri: str
) -> None:
    verifier.verify(proof(agent_key), htm="GET", htu=request_uri)


@pytest.mark.parametrize(
    ("uri", "normal"),
    [
        ("HTTP://Example.COM:80", "http://example.com/"),
        ("https://example.com:443/a%2fb", "https://example.com/a%2Fb"),
        ("https://example.com:8443/a%7Eb", "https://example.com:8443/a~b"),
        ("https://[::1]:443/x", "https://[::1]/x"),
        ("https://[::1]:8443/x", "https://[::1]:8443/x"),
        ("http://example.com:443/", "http://example.com:443/"),
    ],
)
def test_normalize_htu(uri: str, normal: str) -> None:
    assert normalize_htu(uri) == normal


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "/v1/orders",
        "ftp://example.com/x",
        "https://user:pw@example.com/x",
        "https:///x",
        "https://example.com:99999/x",
        "https://exa mple.com/x",
        "https://example.com/a\tb",
        "https://[::1/x",
    ],
)
def test_normalize_htu_refuses_non_http_uris(uri: str) -> None:
    with pytest.raises(ValueError):
        normalize_htu(uri)


# --- time window ----------------------------------------------------------------------


def test_stale_proof_is_refused(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, clock: Clock
) -> None:
    clock.now = T0 + 60
    verifier.verify(proof(agent_key), htm="GET", htu=URL)  # exactly max_age old
    clock.now = T0 + 61
    with pytest.raises(DPoPInvalid) as info:
        verifier.verify(proof(agent_key), htm="GET", htu=URL)
    assert reason(info) == "DPoP proof is stale"


def test_future_proof_is_refused(verifier: DPoPVerifier, agent_key: Ed25519PrivateKey) -> None:
    verifier.verify(proof(agent_key, now=T0 + 5), htm="GET", htu=URL)
    with pytest.raises(DPoPInvalid) as info:
        verifier.verify(proof(agent_key, now=T0 + 6), htm="GET", htu=URL)
    assert reason(info) == "DPoP proof is issued in the future"


# --- replay ---------------------------------------------------------------------------


def test_replayed_jti_is_refused(verifier: DPoPVerifier, agent_key: Ed25519PrivateKey) -> None:
    once = proof(agent_key)
    verifier.verify(once, htm="GET", htu=URL)
    with pytest.raises(ReplayDetected) as info:
        verifier.verify(once, htm="GET", htu=URL)
    assert info.value.code == "invalid_dpop_proof"
    jti = jose.json_object(jose.b64url_decode(once.split(".")[1]))["jti"]
    with pytest.raises(ReplayDetected):  # the same jti in a new proof by the same key
        verifier.verify(proof(agent_key, "POST", jti=jti), htm="POST", htu=URL)


def test_replay_is_refused_until_the_proof_is_stale(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, clock: Clock
) -> None:
    once = proof(agent_key)
    verifier.verify(once, htm="GET", htu=URL)
    clock.now = T0 + 60
    with pytest.raises(ReplayDetected):
        verifier.verify(once, htm="GET", htu=URL)
    clock.now = T0 + 61
    with pytest.raises(DPoPInvalid, match="stale"):
        verifier.verify(once, htm="GET", htu=URL)


def test_same_jti_from_another_key_is_not_a_replay(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey
) -> None:
    verifier.verify(proof(agent_key, jti="shared"), htm="GET", htu=URL)
    verifier.verify(proof(Ed25519PrivateKey.generate(), jti="shared"), htm="GET", htu=URL)


def test_refused_proof_does_not_burn_its_jti(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey
) -> None:
    once = proof(agent_key, "GET")
    with pytest.raises(DPoPInvalid, match="htm"):
        verifier.verify(once, htm="POST", htu=URL)
    verifier.verify(once, htm="GET", htu=URL)


def test_check_does_not_record_the_jti(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey
) -> None:
    once = proof(agent_key)
    first = verifier.check(once, htm="GET", htu=URL)
    assert verifier.check(once, htm="GET", htu=URL) == first
    assert first.replay_expires_at == T0 + 61
    assert first.replay_key.startswith("dpop:")
    verifier.verify(once, htm="GET", htu=URL)
    with pytest.raises(ReplayDetected):
        verifier.verify(once, htm="GET", htu=URL)


# --- the token: ath and binding -------------------------------------------------------


def test_wrong_ath_is_refused(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, jkt: str, token: str
) -> None:
    other_token = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    with pytest.raises(DPoPInvalid) as info:
        verifier.verify(
            proof(agent_key, access_token=other_token),
            htm="GET",
            htu=URL,
            access_token=token,
            expected_jkt=jkt,
        )
    assert reason(info) == "ath does not match the access token"


def test_missing_ath_is_refused(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, jkt: str, token: str
) -> None:
    with pytest.raises(DPoPInvalid, match="ath"):
        verifier.verify(proof(agent_key), htm="GET", htu=URL, access_token=token, expected_jkt=jkt)


def test_non_ascii_ath_is_refused_not_crashed(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, jkt: str, token: str
) -> None:
    header, claims = good_parts(agent_key, ath="\u00e9\ud800")
    with pytest.raises(DPoPInvalid, match="ath"):
        verifier.verify(
            raw_proof(agent_key, header, claims),
            htm="GET",
            htu=URL,
            access_token=token,
            expected_jkt=jkt,
        )


def test_jkt_mismatch_with_the_token_is_refused(
    verifier: DPoPVerifier, jkt: str, token: str
) -> None:
    thief = Ed25519PrivateKey.generate()
    with pytest.raises(BindingMismatch) as info:
        verifier.verify(
            proof(thief, access_token=token),
            htm="GET",
            htu=URL,
            access_token=token,
            expected_jkt=jkt,
        )
    assert info.value.code == "invalid_token"
    assert reason(info) == "DPoP key does not match the token binding"


def test_token_without_jkt_cannot_be_used_with_dpop(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, token: str
) -> None:
    with pytest.raises(BindingMismatch, match="not bound"):
        verifier.verify(
            proof(agent_key, access_token=token), htm="GET", htu=URL, access_token=token
        )


def test_binding_mismatch_does_not_burn_the_jti(
    verifier: DPoPVerifier, agent_key: Ed25519PrivateKey, jkt: str, token: str
) -> None:
    once = proof(agent_key, access_token=token)
    with pytest.raises(BindingMismatch):
        verifier.verify(once, htm="GET", htu=URL, access_token=token, expected_jkt="x" * 43)
    verifier.verify(once, htm="GET", htu=URL, access_token=token, expected_jkt=jkt)


def test_stolen_token_is_useless_without_the_key(
    verifier: DPoPVerifier, tokens: TokenVerifier, token: str
) -> None:
    claims = tokens.verify(token)  # the stolen token itself is perfectly valid
    thief = Ed25519PrivateKey.generate()
    with pytest.raises(BindingMismatch):
        verifier.verify(
            proof(thief, access_token=token),
            htm="GET",
            htu=URL,
            access_token=token,
            expected_jkt=claims.cnf.jkt,
        )


def test_access_token_hash() -> None:
    # RFC 9449 section 7.1 example: token "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
    assert access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU") == (
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    )


def test_make_proof_drops_query_and_fragment(agent_key: Ed25519PrivateKey) -> None:
    made = proof(agent_key, htu=URL + "?a=1#b", access_token="tok")
    claims = jose.json_object(jose.b64url_decode(made.split(".")[1]))
    header = jose.json_object(jose.b64url_decode(made.split(".")[0]))
    assert claims["htu"] == URL
    assert claims["ath"] == access_token_hash("tok")
    assert header == {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jose.public_jwk(agent_key)}


# --- the replay cache -----------------------------------------------------------------


def test_replay_cache_marks_and_reports(clock: Clock) -> None:
    cache = MemoryReplayCache(clock)
    assert cache.seen("k", T0 + 10) is False
    assert cache.seen("k", T0 + 10) is True
    assert cache.seen("other", T0 + 10) is False
    clock.now = T0 + 10
    assert cache.seen("k", T0 + 20) is False  # expired, recorded anew
    assert cache.seen("k", T0 + 20) is True


def test_replay_cache_purges_expired_keys(clock: Clock) -> None:
    cache = MemoryReplayCache(clock)
    for i in range(100):
        cache.seen(f"k{i}", T0 + 1 + i % 10)
    assert len(cache) == 100
    clock.now = T0 + 5
    cache.seen("probe", T0 + 100)
    assert len(cache) == 100 - 50 + 1


def test_replay_cache_refuses_when_full_rather_than_evicting(clock: Clock) -> None:
    cache = MemoryReplayCache(clock, max_entries=2)
    cache.seen("a", T0 + 10)
    cache.seen("b", T0 + 20)
    with pytest.raises(ReplayCacheFull):
        cache.seen("c", T0 + 10)
    assert cache.seen("a", T0 + 10) is True  # nothing was evicted
    clock.now = T0 + 10
    assert cache.seen("c", T0 + 30) is False  # room again once "a" expired


def test_replay_cache_ignores_already_expired_keys(clock: Clock) -> None:
    cache = MemoryReplayCache(clock)
    assert cache.seen("old", T0 - 1) is False
    assert len(cache) == 0


def test_replay_cache_full_propagates_from_the_verifier(
    clock: Clock, agent_key: Ed25519PrivateKey
) -> None:
    verifier = DPoPVerifier(clock=clock, replay_cache=MemoryReplayCache(clock, max_entries=1))
    verifier.verify(proof(agent_key), htm="GET", htu=URL)
    with pytest.raises(ReplayCacheFull):
        verifier.verify(proof(agent_key), htm="GET", htu=URL)
