"""Property tests: random and mutated tokens, proofs and ciphertexts never crash the
parsers, only raise the documented error, and never verify unless genuinely valid."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tether.crypto.envelope import DecryptionError, EnvelopeCipher
from tether.crypto.masterkey import MasterKey, MasterKeyError, parse_master_key
from tether.identity import jose
from tether.identity.claims import Actor, Claims, Delegator
from tether.identity.dpop import (
    DPoPResult,
    DPoPVerifier,
    access_token_hash,
    make_proof,
    normalize_htu,
)
from tether.identity.errors import CredentialError, DPoPInvalid, TokenInvalid
from tether.identity.keys import KeyRing, jwk_thumbprint
from tether.identity.replay import MemoryReplayCache
from tether.identity.tokens import Confirmation, Runtime, Task, TokenIssuer, TokenVerifier

T0 = 1_700_000_000.0
ISS = "https://tether.example"
AUD = "tether"
URL = "https://api.example.com/v1/orders/17"
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

RING = KeyRing.generate(T0)
AGENT = Ed25519PrivateKey.generate()
AGENT_JKT = jwk_thumbprint(jose.public_jwk(AGENT))
ISSUER = TokenIssuer(RING, issuer=ISS, audience=AUD, clock=lambda: T0)
TOKEN, CLAIMS = ISSUER.issue(
    subject="billing-bot-4",
    task=Task("task-17", "incident-response"),
    scope=["billing-*"],
    runtime=Runtime("r1", {"env": "prod"}),
    cnf=Confirmation(jkt=AGENT_JKT),
)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CIPHER = EnvelopeCipher(MasterKey(bytes(range(32)), source="test"))
ENVELOPE = CIPHER.encrypt(b"secret value", purpose="p", name="n")


def verifier(cache_size: int = 0) -> TokenVerifier:
    return TokenVerifier(RING, issuer=ISS, audience=AUD, clock=lambda: T0, cache_size=cache_size)


def dpop_verifier() -> DPoPVerifier:
    return DPoPVerifier(clock=lambda: T0, replay_cache=MemoryReplayCache(lambda: T0))


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
jwk_values = st.one_of(
    st.sampled_from(["OKP", "EC", "RSA", "oct", "Ed25519", "P-256", "AQAB"]),
    st.text(alphabet=B64, max_size=50),
    json_scalars,
)
b64_segments = st.text(alphabet=B64 + "=.+/ ", max_size=120)


# --- access tokens --------------------------------------------------------------------


@SETTINGS
@given(st.text(max_size=300))
def test_random_text_is_never_a_token(text: str) -> None:
    try:
        verifier().verify(text)
    except TokenInvalid:
        return
    raise AssertionError("random text verified")


@SETTINGS
@given(st.lists(b64_segments, min_size=1, max_size=5))
def test_random_segments_are_never_a_token(segments: list[str]) -> None:
    try:
        verifier().verify(".".join(segments))
    except TokenInvalid:
        return
    raise AssertionError("random segments verified")


@SETTINGS
@given(json_values, json_values, st.binary(min_size=64, max_size=64))
def test_random_json_with_a_random_signature_is_never_a_token(
    header: Any, payload: Any, signature: bytes
) -> None:
    token = (
        ".".join(jose.b64url_encode(json.dumps(part).encode()) for part in (header, payload))
        + "."
        + jose.b64url_encode(signature)
    )
    try:
        verifier().verify(token)
    except TokenInvalid:
        return
    raise AssertionError("unsigned token verified")


@SETTINGS
@given(st.data())
def test_mutated_token_never_verifies(data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(TOKEN) - 1))
    kind = data.draw(st.sampled_from(["replace", "insert", "delete"]))
    char = data.draw(st.characters())
    if kind == "replace":
        mutated = TOKEN[:position] + char + TOKEN[position + 1 :]
    elif kind == "insert":
        mutated = TOKEN[:position] + char + TOKEN[position:]
    else:
        mutated = TOKEN[:position] + TOKEN[position + 1 :]
    assume(mutated != TOKEN)
    cached = verifier(cache_size=10)
    cached.verify(TOKEN)  # the genuine token is cached: a mutation must not hit it
    try:
        cached.verify(mutated)
    except TokenInvalid:
        return
    raise AssertionError(f"mutated token verified: {kind} at {position}")


claim_names = st.sampled_from(
    [
        "iss",
        "aud",
        "sub",
        "jti",
        "iat",
        "nbf",
        "exp",
        "task",
        "scope",
        "runtime",
        "cnf",
        "act",
        "agent",
        "family",
        "act_groups",
    ]
)


@SETTINGS
@given(
    st.dictionaries(st.sampled_from(["alg", "typ", "kid", "jku", "crit"]), json_values, max_size=3),
    st.dictionaries(claim_names, json_values, max_size=4),
)
def test_validly_signed_odd_tokens_only_raise_token_invalid(
    header_changes: dict[str, Any], claim_changes: dict[str, Any]
) -> None:
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": RING.active.kid, **header_changes}
    payload = {**CLAIMS.to_json(), **claim_changes}
    token = jose.encode_compact(header, payload, RING.active.sign)
    try:
        claims = verifier().verify(token)
    except TokenInvalid:
        return
    # Accepted: then the header was exactly right and the claims are what was signed.
    assert header == {"alg": "EdDSA", "typ": "at+jwt", "kid": RING.active.kid}
    assert claims == Claims.from_json(payload)
    assert claims.iss == ISS and claims.aud == AUD


@SETTINGS
@given(json_values)
def test_any_json_as_the_family_claim_parses_or_is_token_invalid(family: Any) -> None:
    """``family`` (the renewal family) is a non-empty string or absent (null reads as
    absent, like every optional claim); anything else is ``TokenInvalid`` naming it, never
    a crash nor a coerced value."""
    payload = {**CLAIMS.to_json(), "family": family}
    try:
        claims = Claims.from_json(payload)
    except TokenInvalid as error:
        assert "family" in str(error)
        assert not (isinstance(family, str) and family) and family is not None
        return
    assert claims.family == family
    assert family is None or (isinstance(family, str) and family)


names = st.sampled_from(["ann", "bob", "cy"])
chains = st.lists(st.tuples(names, st.lists(names, max_size=3)), min_size=1, max_size=4)
well_formed = st.lists(
    st.fixed_dictionaries({"sub": names, "groups": st.lists(names, max_size=2)}), max_size=4
)
act_groups_values = (
    well_formed
    | json_values
    | st.lists(
        st.fixed_dictionaries({"sub": names | json_scalars, "groups": json_values}), max_size=3
    )
)


@SETTINGS
@given(chains, act_groups_values)
def test_any_json_as_act_groups_parses_to_the_act_users_or_is_token_invalid(
    users: list[tuple[str, list[str]]], act_groups: Any
) -> None:
    """``act_groups`` of a delegation chain (``sub`` the first user, then ``act``: the other
    users, then the agent) is accepted only as exactly one ``{sub, groups}`` per user of
    ``act``, in order; anything else is ``TokenInvalid`` naming it, never a crash."""
    (sub, groups), *earlier = users
    act: dict[str, Any] = {"sub": "bot"}
    for user, _ in reversed(earlier):
        act = {"sub": user, "act": act}
    base = {**CLAIMS.to_json(), "sub": sub, "agent": "bot", "groups": groups, "act": act}
    payload = {**base, "act_groups": act_groups}
    try:
        claims = Claims.from_json(payload)
    except TokenInvalid as error:
        assert "act_groups" in str(error)
        return
    if act_groups is None or act_groups == []:
        assert claims.act_groups == ()
        assert [(u.sub, u.groups) for u in claims.delegation_users] == [
            (sub, tuple(groups)),
            *[(user, ()) for user, _ in earlier],  # none recorded: no groups, fail closed
        ]
        return
    assert [(d.sub, list(d.groups)) for d in claims.act_groups] == [
        (e["sub"], e["groups"]) for e in act_groups
    ]
    assert [d.sub for d in claims.act_groups] == [user for user, _ in earlier]
    assert Claims.from_json(claims.to_json()) == claims


@SETTINGS
@given(chains)
def test_a_chain_issued_with_act_groups_verifies_with_every_users_groups(
    users: list[tuple[str, list[str]]],
) -> None:
    (sub, groups), *earlier = users
    act = Actor("bot")
    for user, _ in reversed(earlier):
        act = Actor(user, act)
    given_groups = tuple(Delegator(user, tuple(g)) for user, g in earlier)
    token, issued = ISSUER.issue(
        subject=sub, task=CLAIMS.task, scope=CLAIMS.scope, runtime=CLAIMS.runtime,
        cnf=CLAIMS.cnf, act=act, agent="bot", groups=groups, act_groups=given_groups,
    )  # fmt: skip
    claims = verifier().verify(token)
    assert claims == issued
    assert [(u.sub, list(u.groups)) for u in claims.delegation_users] == users


# --- DPoP proofs ----------------------------------------------------------------------


@SETTINGS
@given(
    st.one_of(st.none(), st.text(max_size=300), st.lists(b64_segments, max_size=5).map(".".join))
)
def test_random_text_is_never_a_proof(text: str | None) -> None:
    try:
        dpop_verifier().verify(text, htm="GET", htu=URL)
    except DPoPInvalid:
        return
    raise AssertionError("random text accepted as a proof")


@SETTINGS
@given(
    st.dictionaries(st.sampled_from(["typ", "alg", "jwk", "crit", "kid"]), json_values, max_size=2),
    st.dictionaries(st.sampled_from(["jti", "htm", "htu", "iat", "ath"]), json_values, max_size=3),
    st.booleans(),
)
def test_validly_signed_odd_proofs_only_raise_credential_errors(
    header_changes: dict[str, Any], claim_changes: dict[str, Any], with_token: bool
) -> None:
    header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jose.public_jwk(AGENT), **header_changes}
    claims: dict[str, Any] = {"jti": "j", "htm": "GET", "htu": URL, "iat": int(T0)}
    if with_token:
        claims["ath"] = access_token_hash(TOKEN)
    claims.update(claim_changes)
    proof = jose.encode_compact(header, claims, AGENT.sign)
    try:
        result = dpop_verifier().verify(
            proof,
            htm="GET",
            htu=URL,
            access_token=TOKEN if with_token else None,
            expected_jkt=AGENT_JKT if with_token else None,
        )
    except CredentialError:
        return
    assert isinstance(result, DPoPResult)
    assert result.jkt == AGENT_JKT
    assert claims["htm"] == "GET" and normalize_htu(str(claims["htu"])) == URL
    assert abs(float(claims["iat"]) - T0) <= 60


@SETTINGS
@given(st.data())
def test_mutated_proof_never_verifies(data: st.DataObject) -> None:
    proof = make_proof(AGENT, "GET", URL, now=T0, access_token=TOKEN, jti="fixed")
    position = data.draw(st.integers(0, len(proof) - 1))
    char = data.draw(st.characters())
    mutated = proof[:position] + char + proof[position + 1 :]
    assume(mutated != proof)
    try:
        dpop_verifier().verify(
            mutated, htm="GET", htu=URL, access_token=TOKEN, expected_jkt=AGENT_JKT
        )
    except CredentialError:
        return
    raise AssertionError("mutated proof accepted")


# --- envelope and master key ----------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_never_decrypt(blob: bytes) -> None:
    try:
        CIPHER.decrypt(blob, purpose="p", name="n")
    except DecryptionError:
        return
    raise AssertionError("random bytes decrypted")


@SETTINGS
@given(st.text(max_size=300))
def test_random_text_never_decrypts(text: str) -> None:
    try:
        CIPHER.decrypt_text(text, purpose="p", name="n")
    except DecryptionError:
        return
    raise AssertionError("random text decrypted")


@SETTINGS
@given(st.integers(0, len(ENVELOPE) * 8 - 1))
def test_every_single_bit_flip_is_detected(bit: int) -> None:
    blob = bytearray(ENVELOPE)
    blob[bit // 8] ^= 1 << (bit % 8)
    try:
        CIPHER.decrypt(bytes(blob), purpose="p", name="n")
    except DecryptionError:
        return
    raise AssertionError(f"bit {bit} flipped undetected")


@SETTINGS
@given(st.text(max_size=100))
def test_master_key_parser_returns_32_bytes_or_a_clear_error(text: str) -> None:
    try:
        assert len(parse_master_key(text, source="TETHER_MASTER_KEY")) == 32
    except MasterKeyError as exc:
        assert "TETHER_MASTER_KEY" in str(exc)
        # Nothing of the key is echoed: the message is the one for any other text of that
        # length (a substring check alone fails on texts like "expe", part of the message).
        other = "".join("A" if c != "A" else "B" for c in text)
        try:
            parse_master_key(other, source="TETHER_MASTER_KEY")
        except MasterKeyError as same_length:
            if len(text.strip()) == len(other.strip()):
                assert str(exc) == str(same_length) or text.strip() not in str(exc)


@SETTINGS
@given(st.binary(min_size=32, max_size=32))
def test_master_key_spellings_round_trip(key: bytes) -> None:
    assert parse_master_key(key.hex(), source="x") == key
    assert parse_master_key(jose.b64url_encode(key), source="x") == key


# --- building blocks ------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=100))
def test_b64url_round_trip(raw: bytes) -> None:
    assert jose.b64url_decode(jose.b64url_encode(raw)) == raw


@SETTINGS
@given(st.text(max_size=100))
def test_b64url_decode_is_strict_and_canonical(text: str) -> None:
    try:
        raw = jose.b64url_decode(text)
    except ValueError:
        return
    assert jose.b64url_encode(raw) == text


@SETTINGS
@given(st.binary(max_size=200))
def test_json_object_returns_a_dict_or_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        assert isinstance(jose.json_object(data), dict)


@SETTINGS
@given(st.integers(1, 20_000))
def test_deeply_nested_json_is_a_value_error(depth: int) -> None:
    data = b'{"a":' * depth + b"1" + b"}" * depth
    try:
        assert isinstance(jose.json_object(data), dict)
    except ValueError:
        assert depth > 100


@SETTINGS
@given(st.text(max_size=100))
def test_normalize_htu_is_idempotent_or_a_value_error(uri: str) -> None:
    try:
        normal = normalize_htu(uri)
    except ValueError:
        return
    assert normalize_htu(normal, strip_query=False) == normal


@SETTINGS
@given(st.dictionaries(st.sampled_from(["kty", "crv", "x", "y", "n", "e", "k", "d"]), jwk_values))
def test_jwk_helpers_only_raise_value_error(jwk: dict[str, Any]) -> None:
    with contextlib.suppress(ValueError):
        assert len(jwk_thumbprint(jwk)) == 43
    for alg in ("EdDSA", "ES256"):
        with contextlib.suppress(ValueError):
            jose.public_key_from_jwk(jwk, alg)
