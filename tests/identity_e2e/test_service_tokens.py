"""``IdentityService.authenticate``: every attack on a presented token and its DPoP proof.

Each test runs on SQLite and on PostgreSQL (``store_url``): the token is refused by the one
function every front-end calls, with the error class and the reason an operator reads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.identity_e2e.conftest import RESOURCE, Agent, Stack
from tether.identity import jose
from tether.identity.dpop import access_token_hash
from tether.identity.errors import (
    BindingMismatch,
    CredentialError,
    DPoPInvalid,
    ReplayDetected,
    TokenExpired,
    TokenInvalid,
    TokenRevoked,
)
from tether.identity.keys import SigningKey
from tether.identity.tokens import TokenIssuer


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    stack: Stack,
    agent: Agent,
    *,
    header: dict[str, Any] | None = None,
    key: SigningKey | None = None,
    **claims: Any,
) -> str:
    """A token with ``agent``'s claims changed, signed by ``key`` (default: Tether's)."""
    assert agent.claims is not None
    signer = key or stack.service.keys.ring.active
    head = header or {"alg": "EdDSA", "typ": "at+jwt", "kid": signer.kid}
    payload = {**agent.claims.to_json(), **claims}
    return jose.encode_compact(head, payload, signer.sign)


async def refused(stack: Stack, agent: Agent, token: str | None = None, **proof: Any) -> Any:
    with pytest.raises(CredentialError) as caught:
        await stack.present(agent, token, **proof)
    return caught.value


async def test_a_joined_agent_is_authenticated(stack: Stack, bot: Agent) -> None:
    claims = await stack.present(bot)
    assert (claims.sub, claims.task.id, claims.iss, claims.aud) == (
        "bot",
        "T-1",
        "http://tether",
        "tether",
    )
    assert claims.cnf.jkt is not None
    assert claims.runtime.id.startswith("join/")
    assert claims.exp - claims.iat == 600


# --- the token itself -------------------------------------------------------------------------


async def test_expired(stack: Stack, bot: Agent) -> None:
    stack.clock.advance(600 + 6)
    assert isinstance(await refused(stack, bot), TokenExpired)


async def test_expired_even_when_cached(stack: Stack, bot: Agent) -> None:
    await stack.present(bot)  # now in the verification cache
    stack.clock.advance(606)
    assert isinstance(await refused(stack, bot), TokenExpired)


async def test_not_yet_valid(stack: Stack, bot: Agent) -> None:
    assert bot.claims is not None
    token = forge(stack, bot, nbf=bot.claims.iat + 120)
    error = await refused(stack, bot, token)
    assert (type(error), error.reason) == (TokenInvalid, "token not yet valid")


async def test_issued_in_the_future(stack: Stack, bot: Agent) -> None:
    assert bot.claims is not None
    token = forge(stack, bot, iat=bot.claims.iat + 120, nbf=bot.claims.iat + 120)
    assert (await refused(stack, bot, token)).reason == "token issued in the future"


async def test_alg_none(stack: Stack, bot: Agent) -> None:
    head, payload, _ = bot.token.split(".")
    header = {"alg": "none", "typ": "at+jwt", "kid": stack.service.keys.ring.active.kid}
    token = f"{b64(json.dumps(header).encode())}.{payload}."
    assert (await refused(stack, bot, token)).reason == "unsupported token algorithm"
    assert head != token.split(".")[0]


async def test_hs256_keyed_with_the_public_key(stack: Stack, bot: Agent) -> None:
    """Algorithm confusion: an HMAC 'signature' keyed by Tether's public key."""
    public = stack.service.keys.ring.active.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    kid = stack.service.keys.ring.active.kid
    signing_input = ".".join(
        [
            b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": kid}).encode()),
            bot.token.split(".")[1],
        ]
    )
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(mac)}"
    assert (await refused(stack, bot, token)).reason == "unsupported token algorithm"


async def test_rs256_with_an_attacker_key(stack: Stack, bot: Agent) -> None:
    key = rsa.generate_private_key(65537, 2048)
    kid = stack.service.keys.ring.active.kid
    head = b64(json.dumps({"alg": "RS256", "typ": "at+jwt", "kid": kid}).encode())
    signing_input = f"{head}.{bot.token.split('.')[1]}"
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    token = f"{signing_input}.{b64(signature)}"
    assert (await refused(stack, bot, token)).reason == "unsupported token algorithm"


@pytest.mark.parametrize(
    ("claim", "value", "reason"),
    [("aud", "another-service", "wrong audience"), ("iss", "https://evil", "wrong issuer")],
)
async def test_wrong_audience_or_issuer(
    stack: Stack, bot: Agent, claim: str, value: str, reason: str
) -> None:
    """Signed by Tether's own key: only the claim differs."""
    ring = stack.service.keys.ring
    options = {
        "issuer": "http://tether",
        "audience": "tether",
        claim.replace("iss", "issuer").replace("aud", "audience"): value,
    }
    issuer = TokenIssuer(ring, clock=lambda: stack.clock.now, **options)
    assert bot.claims is not None
    token, _ = issuer.issue(
        subject="bot",
        task=bot.claims.task,
        scope=["*"],
        runtime=bot.claims.runtime,
        cnf=bot.claims.cnf,
    )
    assert (await refused(stack, bot, token)).reason == reason


async def test_tampered_payload(stack: Stack, bot: Agent) -> None:
    head, payload, signature = bot.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = ["prod-*"]
    token = f"{head}.{b64(json.dumps(claims).encode())}.{signature}"
    assert (await refused(stack, bot, token)).reason == "bad signature"


async def test_tampered_signature(stack: Stack, bot: Agent) -> None:
    head, payload, signature = bot.token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[7] ^= 1
    token = f"{head}.{payload}.{b64(bytes(raw))}"
    assert (await refused(stack, bot, token)).reason == "bad signature"


async def test_unknown_kid(stack: Stack, bot: Agent) -> None:
    other = SigningKey.generate(stack.clock.now)
    assert (await refused(stack, bot, forge(stack, bot, key=other))).reason == (
        "unknown signing key"
    )


async def test_signed_by_another_key_under_tethers_kid(stack: Stack, bot: Agent) -> None:
    other = SigningKey.generate(stack.clock.now)
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": stack.service.keys.ring.active.kid}
    token = forge(stack, bot, key=other, header=header)
    assert (await refused(stack, bot, token)).reason == "bad signature"


# --- revocation and the agent's state ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("token", "the token is revoked"),
        ("agent", "the agent is revoked"),
        ("task", "the task is revoked"),
        ("runtime", "the runtime is revoked"),
    ],
)
async def test_revoked(stack: Stack, bot: Agent, kind: str, reason: str) -> None:
    await stack.present(bot)  # accepted, and cached
    assert bot.claims is not None
    value = {
        "token": bot.claims.jti,
        "agent": "bot",
        "task": "T-1",
        "runtime": bot.claims.runtime.id,
    }[kind]
    assert await stack.service.revoke(kind, value, reason="test", by="admin") is True  # type: ignore[arg-type]
    error = await refused(stack, bot)
    assert (type(error), error.reason) == (TokenRevoked, reason)
    assert await stack.service.revoke(kind, value, reason="again", by="admin") is False  # type: ignore[arg-type]


async def test_revocation_reaches_another_node(stack: Stack, bot: Agent) -> None:
    from tests.identity_e2e.conftest import build_service

    other = await build_service(stack.store, stack.clock, stack.cipher)
    other_agent = Agent("bot", key=bot.key, token=bot.token)
    await stack.service.revoke("task", "T-1", reason="incident", by="admin")
    assert await other.refresh_revocations() == 1
    from tether.identity.service import Presented

    proof = stack.proof(other_agent, token=bot.token)
    with pytest.raises(TokenRevoked, match="the task is revoked"):
        await other.authenticate(Presented(bot.token, "GET", RESOURCE, proof))


async def test_disabled_then_enabled_agent(stack: Stack, bot: Agent) -> None:
    await stack.present(bot)
    await stack.service.set_agent_state("bot", "disabled")
    error = await refused(stack, bot)
    assert (type(error), error.reason) == (TokenRevoked, "the agent is disabled")
    await stack.service.set_agent_state("bot", "active")
    assert (await stack.present(bot)).sub == "bot"


async def test_disabled_on_another_node_within_one_poll(stack: Stack, bot: Agent) -> None:
    await stack.present(bot)  # this node has seen the agent active
    async with stack.engine.begin() as conn:
        from tether.store import agents as agent_store

        await agent_store.set_agent_state(
            conn, stack.service.sealer, "bot", "disabled", stack.clock()
        )
    stack.clock.advance(stack.service.settings.revocation_poll)
    assert (await refused(stack, bot)).reason == "the agent is disabled"


async def test_offboarded_agent(stack: Stack, bot: Agent) -> None:
    done = await stack.service.offboard("bot", reason="left", by="admin")
    assert done is not None and done.agent.state == "offboarded"
    assert (await refused(stack, bot)).reason == "the agent is revoked"
    assert await stack.service.set_agent_state("bot", "active") is None  # final


# --- the DPoP proof ---------------------------------------------------------------------------


async def test_dpop_proof_missing(stack: Stack, bot: Agent) -> None:
    from tether.identity.service import Presented

    with pytest.raises(DPoPInvalid, match="missing DPoP proof"):
        await stack.service.authenticate(Presented(bot.token, "GET", RESOURCE, None))


async def test_dpop_proof_signed_by_another_key(stack: Stack, bot: Agent) -> None:
    thief = Agent("bot", key=ed25519.Ed25519PrivateKey.generate(), token=bot.token)
    error = await refused(stack, thief)
    assert (type(error), error.reason) == (
        BindingMismatch,
        "DPoP key does not match the token binding",
    )


async def test_wrong_htm(stack: Stack, bot: Agent) -> None:
    proof = stack.proof(bot, "POST", token=bot.token)
    assert (await refused(stack, bot, dpop=proof)).reason == "htm does not match the request method"


async def test_wrong_htu(stack: Stack, bot: Agent) -> None:
    proof = stack.proof(bot, "GET", "http://tether/v1/agents", token=bot.token)
    assert (await refused(stack, bot, dpop=proof)).reason == "htu does not match the request URI"


@pytest.mark.parametrize(
    ("shift", "reason"), [(-61, "DPoP proof is stale"), (6, "DPoP proof is issued in the future")]
)
async def test_stale_or_future_iat(stack: Stack, bot: Agent, shift: int, reason: str) -> None:
    assert (await refused(stack, bot, now=stack.clock.now + shift)).reason == reason


async def test_replayed_jti(stack: Stack, bot: Agent) -> None:
    proof = stack.proof(bot, token=bot.token)
    await stack.present(bot, dpop=proof)
    error = await refused(stack, bot, dpop=proof)
    assert isinstance(error, ReplayDetected)


async def test_wrong_ath(stack: Stack, bot: Agent) -> None:
    other = await stack.new_agent("other")
    await stack.join(other)
    proof = stack.proof(bot, token=other.token)  # ath of another token
    assert access_token_hash(other.token) != access_token_hash(bot.token)
    assert (await refused(stack, bot, dpop=proof)).reason == "ath does not match the access token"
