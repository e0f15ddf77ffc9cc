"""Property tests: garbage never crashes the verifiers and never verifies; time rules hold."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.identity.test_workload import GHA, IDP, K8S, NOW, T, World, b64, gha_claims, k8s_claims
from tether.identity.jwks import Jwk, JwksError, parse_jwks
from tether.identity.workload import (
    WorkloadTokenError,
    resolve_claim,
    verify_user_token,
    verify_workload_token,
)

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


async def _verify_both(token: str) -> None:
    """Both verifiers refuse ``token`` with a WorkloadTokenError and nothing else."""
    world = World()
    with pytest.raises(WorkloadTokenError):
        await verify_workload_token(token, world.issuers, NOW)
    with pytest.raises(WorkloadTokenError):
        await verify_user_token(token, world.issuers, NOW)


@PROPS
@given(
    st.one_of(
        st.text(max_size=200),
        st.lists(st.text(B64_ALPHABET, max_size=60), min_size=1, max_size=5).map(".".join),
    )
)
async def test_garbage_tokens_never_crash_and_never_verify(token: str) -> None:
    await _verify_both(token)


@PROPS
@given(
    header=st.fixed_dictionaries(
        {},
        optional={
            "alg": st.sampled_from(["RS256", "ES256", "EdDSA", "HS256", "none", "PS512"])
            | st.text(),
            "kid": st.sampled_from(["k8s-1", "gha-1", "idp-1"]) | json_values,
            "typ": json_values,
            "crit": json_values,
        },
    ),
    claims=st.fixed_dictionaries(
        {},
        optional={
            "iss": st.sampled_from(
                ["https://oidc.eks.example/id/ABC", "https://token.actions.githubusercontent.com"]
            )
            | json_values,
            "aud": st.just("tether") | json_values,
            "sub": json_values,
            "exp": st.just(T + 60) | json_values,
            "iat": json_values,
            "kubernetes.io": json_values,
        },
    ),
    signature=st.binary(max_size=300),
)
async def test_well_formed_but_unsigned_tokens_never_verify(
    header: dict[str, Any], claims: dict[str, Any], signature: bytes
) -> None:
    token = ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )
    await _verify_both(token)


VALID_GHA = GHA.mint(gha_claims())


@PROPS
@given(st.data())
async def test_any_single_character_change_is_refused(data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(VALID_GHA) - 1))
    replacement = data.draw(st.sampled_from(B64_ALPHABET + "."))
    assume(replacement != VALID_GHA[position])
    forged = VALID_GHA[:position] + replacement + VALID_GHA[position + 1 :]
    await _verify_both(forged)


@PROPS
@given(st.integers(1, len(VALID_GHA) - 1))
async def test_truncated_tokens_are_refused(length: int) -> None:
    await _verify_both(VALID_GHA[:length])


@PROPS
@given(
    st.dictionaries(
        st.sampled_from(
            ["workflow", "ref", "environment", "run_id", "repository", "event_name", "sub"]
        ),
        json_values,
        max_size=4,
    )
)
async def test_signed_tokens_with_odd_claim_values_verify_cleanly_or_are_refused(
    overrides: dict[str, Any],
) -> None:
    token = GHA.mint(gha_claims(**overrides))
    try:
        identity = await verify_workload_token(token, World().issuers, NOW)
    except WorkloadTokenError:
        return
    for name, value in identity.labels.items():
        assert isinstance(value, str) and value.isprintable() and 0 < len(value) <= 256, name
    assert identity.runtime_id.startswith("gha/")
    assert identity.runtime_id.count("/") == 3


@PROPS
@given(
    exp=st.integers(-7200, 7200),
    iat=st.none() | st.integers(-7200, 7200),
    nbf=st.none() | st.integers(-7200, 7200),
)
async def test_time_rules_match_a_model(exp: int, iat: int | None, nbf: int | None) -> None:
    """Accepted exactly when: before exp+60s, after nbf-60s and iat-60s, lifetime <= 1h."""
    claims = k8s_claims(exp=T + exp)
    for name, offset in (("iat", iat), ("nbf", nbf)):
        if offset is None:
            del claims[name]
        else:
            claims[name] = T + offset
    start = iat if iat is not None else nbf if nbf is not None else 0
    expected = (
        exp + 60 > 0
        and (nbf is None or nbf - 60 <= 0)
        and (iat is None or iat - 60 <= 0)
        and exp - start <= 3600
    )
    try:
        await verify_workload_token(K8S.mint(claims), World().issuers, NOW)
        accepted = True
    except WorkloadTokenError:
        accepted = False
    assert accepted == expected


@PROPS
@given(
    st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.lists(json_values, max_size=4).map(lambda ks: json.dumps({"keys": ks}).encode()),
    )
)
def test_jwks_parser_never_crashes(document: bytes) -> None:
    try:
        keys = parse_jwks(document)
    except JwksError:
        return
    assert keys and all(isinstance(k, Jwk) and k.kid == kid for kid, k in keys.items())


@PROPS
@given(
    st.lists(
        st.sampled_from([K8S.jwk(), GHA.jwk(), IDP.jwk()]).flatmap(
            lambda jwk: st.dictionaries(st.sampled_from(sorted(jwk)), json_values, max_size=2).map(
                lambda changes: {**jwk, **changes}
            )
        ),
        max_size=4,
    )
)
def test_mutated_jwks_never_crash(keys: list[dict[str, Any]]) -> None:
    try:
        parsed = parse_jwks(json.dumps({"keys": keys}).encode())
    except JwksError:
        return
    assert all(isinstance(k, Jwk) for k in parsed.values())


@PROPS
@given(
    st.dictionaries(st.text(".ab", max_size=4), json_values, max_size=5), st.text(".ab", max_size=8)
)
def test_claim_resolution_never_crashes(claims: dict[str, Any], path: str) -> None:
    value = resolve_claim(claims, path)
    if path in claims:
        assert value is claims[path]
