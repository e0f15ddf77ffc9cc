"""Delegation chains: a delegated token used as the actor of a further delegation.

alice delegates to ``bot`` (token ``first``); ``first`` is then the actor token of carol's
delegation (token ``chained``: ``sub`` carol, ``act`` alice acted for by bot). Every user
of the chain and every token it was derived from is recorded, so that disabling either user
or revoking ``first`` (or the agent's own token it came from) ends ``chained`` and what was
derived from it, on this node at once and on another after one poll. Real identity service
on the real store (SQLite and PostgreSQL), and the HTTP API on SQLite.

Before the fix ``chained`` named only the agent (``act`` bot acted for by bot): alice's
delegation lived on through it after she was disabled, and revoking ``first`` left it valid.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import update

from tests.identity_e2e.conftest import (
    RESOURCE,
    Agent,
    Clock,
    Stack,
    build_service,
    delegate_form,
    rescope_form,
)
from tether.api import AppState, PolicyHolder, create_app
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity.admintokens import create_admin_token
from tether.identity.claims import Actor, Delegator
from tether.identity.errors import TokenRevoked
from tether.identity.exchange import ExchangeError
from tether.identity.service import IssuedToken, Presented
from tether.policy import load_policies
from tether.store import Store
from tether.store import credentials as cred_store
from tether.users.schema import users
from tether.users.service import UserService


@dataclass
class Chain:
    users: UserService
    first: IssuedToken  # alice -> bot
    chained: IssuedToken  # carol -> (alice -> bot)

    def holder(self, bot: Agent, issued: IssuedToken) -> Agent:
        return Agent("bot", key=bot.key, token=issued.token, claims=issued.claims)


async def delegate(stack: Stack, bot: Agent, user: str, actor: str, **extra: str) -> IssuedToken:
    form = delegate_form(stack.user_token(user), actor, **extra)
    return await stack.exchange(bot, form, ath=actor)


@pytest.fixture
async def chain(stack: Stack, bot: Agent) -> Chain:
    users = UserService(stack.engine, stack.cipher, clock=stack.clock)
    for user in ("alice", "carol"):
        await users.add(user, password=None)
    first = await delegate(stack, bot, "alice", bot.token)
    chained = await delegate(stack, bot, "carol", first.token)
    return Chain(users, first, chained)


async def test_a_chained_token_names_every_user_and_its_sources(
    stack: Stack, bot: Agent, chain: Chain
) -> None:
    claims = chain.chained.claims
    assert bot.claims is not None
    # RFC 8693 4.1: the actor is who the actor token names (alice), acted for by bot.
    assert (claims.sub, claims.agent) == ("carol", "bot")
    assert claims.act == Actor("alice", Actor("bot"))
    assert claims.delegators == ("carol", "alice")
    assert claims.derived_from == (chain.first.claims.jti, bot.claims.jti)
    assert chain.first.claims.act == Actor("bot")
    assert chain.first.claims.derived_from == (bot.claims.jti,)
    async with stack.engine.connect() as conn:
        rows = await cred_store.list_credentials(conn, agent_id="bot")
    recorded = {row.jti: (row.subject, row.actor_chain, row.derived_from) for row in rows}
    assert recorded[claims.jti] == ("carol", ("alice", "bot"), claims.derived_from)


async def test_disabling_the_first_user_ends_the_chained_token(
    stack: Stack, bot: Agent, chain: Chain
) -> None:
    _, revoked = await chain.users.disable("alice", by="admin")
    assert set(revoked) == {chain.first.claims.jti, chain.chained.claims.jti}
    # Another node learns it from the store (its revocation set starts empty here).
    other = await build_service(stack.store, stack.clock, stack.cipher)
    for service in (stack.service, other):
        await service.refresh_revocations()
        node = Stack(stack.store, stack.clock, stack.cipher, service)
        for issued in (chain.first, chain.chained):
            with pytest.raises(TokenRevoked):
                await node.present(chain.holder(bot, issued))
        await node.present(bot)  # the agent's own token is no user's


async def test_disabling_the_last_user_ends_only_what_she_delegated(
    stack: Stack, bot: Agent, chain: Chain
) -> None:
    _, revoked = await chain.users.disable("carol", by="admin")
    assert revoked == [chain.chained.claims.jti]
    await stack.service.refresh_revocations()
    with pytest.raises(TokenRevoked):
        await stack.present(chain.holder(bot, chain.chained))
    await stack.present(chain.holder(bot, chain.first))  # alice's delegation is alice's


async def test_revoking_the_intermediate_token_ends_what_was_derived_from_it(
    stack: Stack, bot: Agent, chain: Chain
) -> None:
    first = chain.holder(bot, chain.first)
    rescoped = await stack.exchange(first, rescope_form(first.token, "T-2"), ath=first.token)
    chained = chain.holder(bot, chain.chained)
    rechained = await stack.exchange(chained, rescope_form(chained.token, "T-3"), ath=chained.token)
    # Revoked on another node: this one only learns it from the store.
    other = await build_service(stack.store, stack.clock, stack.cipher)
    await other.revoke("token", chain.first.claims.jti, reason="leaked", by="admin")
    await stack.service.refresh_revocations()
    for issued in (chain.first, rescoped, chain.chained, rechained):
        with pytest.raises(TokenRevoked):
            await stack.present(chain.holder(bot, issued))
    with pytest.raises(TokenRevoked):  # nothing more is derived from it either
        await delegate(stack, bot, "dave", rescoped.token)
    await stack.present(bot)


async def test_revoking_the_agents_own_token_ends_the_chain(
    stack: Stack, bot: Agent, chain: Chain
) -> None:
    assert bot.claims is not None
    await stack.service.revoke("token", bot.claims.jti, reason="leaked", by="admin")
    for issued in (chain.first, chain.chained):
        with pytest.raises(TokenRevoked, match="the token it was derived from is revoked"):
            await stack.present(chain.holder(bot, issued))


async def test_a_chained_token_is_not_recorded_once_a_user_of_the_chain_is_disabled(
    stack: Stack, bot: Agent, chain: Chain
) -> None:
    """The store refuses a credential naming a disabled user anywhere in its chain (the
    race of a disabling with an exchange already past its checks)."""
    await chain.users.disable("alice", by="admin")
    record = cred_store.Credential(
        jti="late", kind="access_token", agent_id="bot", subject="carol", scope=("*",),
        issued_at=stack.clock(), expires_at=stack.clock.at.replace(year=2027),
        runtime_id=chain.chained.claims.runtime.id, task_id="T-1",
        actor_chain=("alice", "bot"),
    )  # fmt: skip
    with pytest.raises(TokenRevoked, match="the user is disabled"):
        await stack.service.record_credential(record)


async def test_a_user_enabled_again_behind_tethers_back_delegates_nothing(
    stack: Stack, bot: Agent, chain: Chain
) -> None:
    await chain.users.disable("alice", by="admin")
    async with stack.engine.begin() as conn:  # a database writer sets alice back to active
        await conn.execute(update(users).where(users.c.id == "alice").values(state="active"))
    with pytest.raises(ExchangeError, match="the user's record does not verify"):
        await delegate(stack, bot, "alice", bot.token)
    # Set behind Tether's back into a chain's user: carol is refused as the next delegator.
    async with stack.engine.begin() as conn:
        await conn.execute(update(users).where(users.c.id == "carol").values(password_hash="x"))
    with pytest.raises(ExchangeError, match="the user's record does not verify"):
        await delegate(stack, bot, "carol", bot.token)


async def test_the_depth_limit_holds_for_chains(stack: Stack, bot: Agent) -> None:
    stack.service.settings = replace(stack.service.settings, max_delegation_depth=3)
    tokens = [bot.token]
    for user in ("alice", "bob", "carol"):
        tokens.append((await delegate(stack, bot, user, tokens[-1])).token)
    third = await stack.present(Agent("bot", key=bot.key, token=tokens[-1]))
    assert third.act == Actor("bob", Actor("alice", Actor("bot")))
    assert third.delegators == ("carol", "bob", "alice")
    assert len(third.derived_from) == 3
    with pytest.raises(ExchangeError, match="delegation chain too deep"):
        await delegate(stack, bot, "dave", tokens[-1])


# --- the HTTP API -----------------------------------------------------------------------------


@pytest.fixture
async def api_stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, httpx.AsyncClient, str]]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}")
    clock = Clock()
    cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
    stack = Stack(store, clock, cipher, await build_service(store, clock, cipher))
    users = UserService(store.engine, cipher, clock=clock)
    holder = PolicyHolder(load_policies([]))
    app = create_app(AppState(holder, store, stack.service, users=users))
    admin, _ = await create_admin_token(store.engine, cipher.sealer, name="test", now=clock())
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://tether") as http:
            yield stack, http, admin
    finally:
        await store.close()


async def whoami(stack: Stack, http: httpx.AsyncClient, agent: Agent) -> httpx.Response:
    url = "http://tether/v1/whoami"
    proof = stack.proof(agent, "GET", url, token=agent.token)
    headers = {"Authorization": f"DPoP {agent.token}", "DPoP": proof}
    return await http.get("/v1/whoami", headers=headers)


@pytest.mark.parametrize("user", ["alice", "carol"])
async def test_disabling_a_user_of_the_chain_through_the_api(
    api_stack: tuple[Stack, httpx.AsyncClient, str], user: str
) -> None:
    stack, http, admin = api_stack
    users = UserService(stack.engine, stack.cipher, clock=stack.clock)
    for name in ("alice", "carol"):
        await users.add(name, password=None)
    bot = await stack.new_agent("bot")
    await stack.join(bot)
    first = await delegate(stack, bot, "alice", bot.token)
    chained = Agent(
        "bot", key=bot.key, token=(await delegate(stack, bot, "carol", first.token)).token
    )
    assert (await whoami(stack, http, chained)).status_code == 200
    answer = await http.post(
        f"/v1/users/{user}/disable", headers={"Authorization": f"Bearer {admin}"}
    )
    assert answer.status_code == 200, answer.text
    refused = await whoami(stack, http, chained)
    assert refused.status_code == 401, refused.text
    assert refused.json()["detail"] == "the token is revoked"
    assert (await whoami(stack, http, bot)).status_code == 200


async def test_a_certificate_bound_token_of_a_chain_ends_with_its_first_link(
    stack: Stack, bot: Agent, chain: Chain
) -> None:
    """A token bound to a client certificate (RFC 8705) under the chained token names the
    chained token and everything it came from: revoking alice's token ends it."""
    assert bot.claims is not None
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    claims = chain.chained.claims
    pem = await stack.service.x509_certificate(claims, csr.public_bytes(Encoding.PEM).decode())
    bound = await stack.service.certificate_bound_token(claims, pem)
    assert bound.claims.parent_jti == claims.jti
    assert bound.claims.derived_from == (claims.jti, chain.first.claims.jti, bot.claims.jti)
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
    presented = Presented(bound.token, "GET", RESOURCE, peer_certificate_der=der)
    assert (await stack.service.authenticate(presented)).jti == bound.claims.jti
    await stack.service.revoke("token", chain.first.claims.jti, reason="leaked", by="admin")
    with pytest.raises(TokenRevoked, match="the token it was derived from is revoked"):
        await stack.service.authenticate(presented)


async def test_a_chained_token_carries_each_earlier_users_own_groups(
    stack: Stack, bot: Agent
) -> None:
    """alice's groups (from her ID token) travel in ``act_groups``, carol's in ``groups``;
    a re-scoping, a certificate-bound token and the store's record keep them."""
    form = delegate_form(stack.user_token("alice", groups=["leads"]), bot.token)
    first = await stack.exchange(bot, form, ath=bot.token)
    assert first.claims.act_groups == () and "act_groups" not in first.claims.to_json()
    chained = await delegate(stack, bot, "carol", first.token)
    claims = chained.claims
    assert claims.act_groups == (Delegator("alice", ("leads",)),)
    assert claims.delegation_users == (
        Delegator("carol", ("finance",)),
        Delegator("alice", ("leads",)),
    )
    holder = Agent("bot", key=bot.key, token=chained.token, claims=claims)
    assert (await stack.present(holder)).act_groups == claims.act_groups  # verified as issued
    rescoped = await stack.exchange(holder, rescope_form(chained.token, "T-3"), ath=chained.token)
    assert rescoped.claims.act_groups == claims.act_groups
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    pem = await stack.service.x509_certificate(claims, csr.public_bytes(Encoding.PEM).decode())
    bound = await stack.service.certificate_bound_token(claims, pem)
    assert bound.claims.act_groups == claims.act_groups
    async with stack.engine.connect() as conn:
        rows = {row.jti: row for row in await cred_store.list_credentials(conn, agent_id="bot")}
    assert rows[claims.jti].act_groups == (("alice", ("leads",)),)
    assert rows[first.claims.jti].act_groups is None
