"""Red-team review s19 (identity): numbers too large for a float, a JWKS endpoint that drips."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.identity.test_dpop import T0 as DPOP_T0
from tests.identity.test_dpop import URL, good_parts, raw_proof
from tests.identity.test_workload import (
    IDP,
    K8S,
    K8S_NEXT,
    NOW,
    FakeClock,
    MemoryJwks,
    World,
    jwks,
    k8s_claims,
    user_claims,
)
from tether.identity.dpop import DPoPVerifier
from tether.identity.errors import DPoPInvalid
from tether.identity.exchange import _FIELDS as ALL_FIELDS
from tether.identity.exchange import GRANT_TYPE, ExchangeError, parse_form
from tether.identity.jwks import JwksCache, JwksError, UnknownKeyId, http_fetcher, parse_jwks
from tether.identity.replay import MemoryReplayCache
from tether.identity.revocation_copy import FORMAT, RevocationCopyError, parse_copy
from tether.identity.scope import narrowed
from tether.identity.workload import WorkloadTokenError, verify_user_token, verify_workload_token
from tether.policy.names import compile_name_glob

HUGE = 10**400  # valid JSON; float() of it raises OverflowError


def _verifier() -> DPoPVerifier:
    clock = lambda: DPOP_T0  # noqa: E731 - a fixed clock
    return DPoPVerifier(clock=clock, replay_cache=MemoryReplayCache(clock))


# --- DPoP: an iat too large for a float -------------------------------------------------------


@pytest.mark.parametrize("iat", [HUGE, -HUGE, 2**53, 1e300], ids=["huge", "-huge", "2^53", "1e300"])
def test_a_dpop_iat_too_large_for_a_float_is_refused_not_a_crash(iat: Any) -> None:
    """Anyone can sign a proof with a key of their own: before, ``math.isfinite`` raised
    OverflowError on a 400-digit iat (a 500 and a traceback at the token endpoint)."""
    key = Ed25519PrivateKey.generate()
    header, body = good_parts(key, iat=iat)
    with pytest.raises(DPoPInvalid, match="iat"):
        _verifier().verify(raw_proof(key, header, body), htm="GET", htu=URL)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(iat=st.integers() | st.floats(allow_nan=False))
def test_any_numeric_dpop_iat_is_accepted_or_refused_never_a_crash(iat: float) -> None:
    key = Ed25519PrivateKey.generate()
    header, body = good_parts(key, iat=iat)
    try:
        result = _verifier().verify(raw_proof(key, header, body), htm="GET", htu=URL)
    except DPoPInvalid:
        return
    assert abs(result.iat - DPOP_T0) <= 61  # accepted only inside the window


# --- workload and user tokens: exp, nbf, iat too large for a float ----------------------------


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_a_workload_time_claim_too_large_for_a_float_is_refused(claim: str) -> None:
    """The issuer signed it, but its number must still refuse the token, not raise
    OverflowError out of the verifier."""
    token = K8S.mint(k8s_claims(**{claim: HUGE}))
    with pytest.raises(WorkloadTokenError, match=claim):
        await verify_workload_token(token, World().issuers, NOW)


async def test_a_user_token_exp_too_large_for_a_float_is_refused() -> None:
    token = IDP.mint(user_claims(exp=HUGE))
    with pytest.raises(WorkloadTokenError, match="exp"):
        await verify_user_token(token, World().issuers, NOW)


# --- a JWKS endpoint that sends its document a byte at a time ---------------------------------


class Dripping:
    """A real HTTP server on loopback sending a valid JWKS one byte every ``pause`` seconds:
    every read gets data well within any per-read timeout."""

    def __init__(self, pause: float) -> None:
        self.pause, self.stop, self.document = pause, threading.Event(), jwks(K8S)
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(state.document)))
                self.end_headers()
                try:
                    for byte in state.document:
                        if state.stop.wait(state.pause):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except OSError:
                    return

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def dripping() -> Iterator[Dripping]:
    server = Dripping(pause=0.2)
    yield server
    server.close()


async def test_a_jwks_endpoint_that_drips_fails_closed_within_the_timeout(
    dripping: Dripping,
) -> None:
    """Before, ``timeout`` bounded each read only: a document of a few hundred bytes sent a
    byte every 0.2 s held the fetch (and every token of the issuer, waiting on the cache's
    lock) for minutes; a byte every 4 s, for weeks."""
    fetch = http_fetcher(dripping.url, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(JwksError, match="fetch failed"):
        await asyncio.wait_for(fetch(), 30)
    assert time.monotonic() - started < 3


async def test_a_fast_enough_jwks_endpoint_still_serves() -> None:
    server = Dripping(pause=0.0)
    try:
        keys = parse_jwks(await http_fetcher(server.url, timeout=5.0)())
        assert set(keys) == {"k8s-1"}
    finally:
        server.close()


# --- refusals name only parameter-shaped names -------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(names=st.lists(st.text(min_size=1, max_size=80), max_size=5))
def test_an_unknown_parameter_refusal_copies_no_other_text(names: list[str]) -> None:
    form = {"grant_type": GRANT_TYPE, **{n: "" for n in names if n not in ALL_FIELDS}}
    try:
        parse_form(form)
    except ExchangeError as refused:
        told = refused.description.removeprefix("unknown parameter(s): ")
        for name in set(form) - ALL_FIELDS:
            assert (name in told.split(", ")) == bool(re.fullmatch(r"[a-z_]{1,40}", name))


# --- the node's revocation copy: an expiry too large for a float ------------------------------


def test_a_revocation_copy_with_an_expiry_too_large_for_a_float_is_refused() -> None:
    """Before, ``math.isfinite`` raised OverflowError: a traceback at start instead of the
    one-line refusal every other malformed copy gets."""
    entry = {"kind": "task", "value": "T", "expires_at": HUGE}
    data = json.dumps({"format": FORMAT, "revocations": [entry]}).encode()
    with pytest.raises(RevocationCopyError, match="expires_at must be"):
        parse_copy(data)


# --- scope narrowing never widens ---------------------------------------------------------------

_globs = st.text(alphabet="ab*-", min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(
    held=st.lists(_globs, min_size=1, max_size=3),
    requested=st.lists(_globs, min_size=1, max_size=3),
    names=st.lists(st.text(alphabet="ab-", max_size=6), min_size=1, max_size=20),
)
def test_a_narrowed_scope_reaches_no_name_the_held_one_does_not(
    held: list[str], requested: list[str], names: list[str]
) -> None:
    """What a derived token may reach (its scope, as the policy engine matches it) is
    within what the token it came from may reach, for every scope ``narrowed`` accepts."""
    scope = narrowed(requested, held)
    if scope is None:
        return
    for name in names:
        if any(compile_name_glob(g)(name) for g in scope):
            assert any(compile_name_glob(g)(name) for g in held), (name, scope, held)


# --- the JWKS cache when the clock steps back ---------------------------------------------------


async def test_a_clock_stepped_back_does_not_keep_a_withdrawn_key_fresh() -> None:
    """Before, ``now - fetched_at`` was negative after the node's clock stepped back (an NTP
    step, a VM resumed), and a negative age is under any ttl: the set stayed "fresh", and a
    key the issuer withdrew kept verifying, for as long as the step (an hour here), and no
    refresh was tried (the last attempt was "in the future" too)."""
    endpoint, clock = MemoryJwks(jwks(K8S)), FakeClock()
    cache = JwksCache(endpoint, clock=clock)
    assert (await cache.get_key("k8s-1")).kid == "k8s-1"
    endpoint.document = jwks(K8S_NEXT)  # k8s-1 withdrawn
    clock.advance(hours=-1)
    with pytest.raises(UnknownKeyId):
        await cache.get_key("k8s-1")
    assert (await cache.get_key("k8s-2")).kid == "k8s-2"
    assert endpoint.fetches == 2
