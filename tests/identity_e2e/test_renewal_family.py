"""Renewal families: revoking any token of a renewal chain ends all of it, on every node.

``bot`` joins (token ``original``); its token is renewed (``first``), the renewal renewed
again (``second``), as a thief holding the token and its DPoP key would. Every exchange of
an agent's own token carries the family of the token presented (the jti of ``original``),
recorded with the credential. Revoking any of them by jti, on another node, ends every one
(this node learns it from the store), what was delegated from them, and nothing else: the
agent's other sessions, and tokens that merely came from a delegated token revoked alone,
live on. A token from before families (no claim) keeps working and is revoked by its jti
as before. Real identity service on the real store, SQLite and PostgreSQL.

Before the fix a renewal of an agent's own token named nothing it came from: revoking the
stolen original left the renewals valid.
"""

from __future__ import annotations

import dataclasses

import asyncssh
import pytest
from alembic import command
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from tests.identity_e2e.conftest import Agent, Stack, build_service, delegate_form, rescope_form
from tether.identity import jose
from tether.identity.claims import Claims
from tether.identity.errors import TokenRevoked
from tether.identity.exchange import ExchangeError
from tether.identity.issued import credential_record
from tether.store import credentials as cred_store
from tether.store.migrate import alembic_config, upgrade


async def renew(stack: Stack, holder: Agent, task: str = "T-1") -> Agent:
    """``holder``'s token exchanged for its task (a renewal) or another (a re-scoping)."""
    issued = await stack.exchange(holder, rescope_form(holder.token, task), ath=holder.token)
    return Agent(holder.id, key=holder.key, token=issued.token, claims=issued.claims)


def family_of(agent: Agent) -> str | None:
    assert agent.claims is not None
    return agent.claims.family


def jti(agent: Agent) -> str:
    assert agent.claims is not None
    return agent.claims.jti


async def test_every_renewal_carries_the_family_of_the_first_token(
    stack: Stack, bot: Agent
) -> None:
    first = await renew(stack, bot)
    second = await renew(stack, first)
    other_task = await renew(stack, second, "T-2")  # a re-scoping joins the family too
    chain = (bot, first, second, other_task)
    assert {family_of(a) for a in chain} == {jti(bot)}
    assert len({jti(a) for a in chain}) == 4
    assert first.claims is not None and first.claims.derived_from == ()  # it does not grow
    async with stack.engine.connect() as conn:
        rows = await cred_store.list_credentials(conn, agent_id="bot")
    assert {row.jti: row.family for row in rows} == {jti(a): jti(bot) for a in chain}
    for agent in chain:
        assert (await stack.present(agent)).family == jti(bot)


@pytest.mark.parametrize("revoked", ["original", "first", "second"])
async def test_revoking_any_token_of_the_family_ends_all_of_it_on_every_node(
    stack: Stack, bot: Agent, revoked: str
) -> None:
    first = await renew(stack, bot)
    second = await renew(stack, first)
    chain = {"original": bot, "first": first, "second": second}
    # Revoked on another node: this one only learns it from the store.
    other = await build_service(stack.store, stack.clock, stack.cipher)
    done = await other.revoke_reporting("token", jti(chain[revoked]), reason="stolen", by="ops")
    assert done.created and done.family == jti(bot)
    assert set(done.ended) == {jti(a) for a in chain.values()}
    await stack.service.refresh_revocations()
    for agent in chain.values():
        with pytest.raises(TokenRevoked):
            await stack.present(agent)
    for agent in chain.values():  # nothing more is renewed from any of them
        with pytest.raises((TokenRevoked, ExchangeError)):
            await renew(stack, agent)
    # The agent joins again: a new family, untouched.
    again = Agent("bot", key=bot.key)
    await stack.join(again)
    assert family_of(again) == jti(again) != jti(bot)
    await stack.present(again)


async def test_revoking_the_family_ends_what_was_delegated_from_it(
    stack: Stack, bot: Agent
) -> None:
    first = await renew(stack, bot)
    delegated = await stack.exchange(
        first, delegate_form(stack.user_token("alice"), first.token), ath=first.token
    )
    assert delegated.claims.family == delegated.claims.jti  # a family of its own
    assert delegated.claims.derived_from == (jti(first), jti(bot))  # names first's family
    holder = Agent("bot", key=bot.key, token=delegated.token)
    done = await stack.service.revoke_reporting("token", jti(bot), reason="stolen", by="ops")
    assert jti(bot) == done.family
    assert delegated.claims.jti in done.ended
    with pytest.raises(TokenRevoked, match="the token it was derived from is revoked"):
        await stack.present(holder)
    with pytest.raises(TokenRevoked, match="a token of its renewal family is revoked"):
        await stack.present(first)


async def test_revoking_a_delegated_token_or_a_certificate_leaves_the_family(
    stack: Stack, bot: Agent
) -> None:
    first = await renew(stack, bot)
    delegated = await stack.exchange(
        first, delegate_form(stack.user_token("alice"), first.token), ath=first.token
    )
    assert first.claims is not None
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
    await stack.service.ssh_certificate(first.claims, key, ["deploy"], None)
    async with stack.engine.connect() as conn:
        rows = await cred_store.list_credentials(conn, agent_id="bot")
    (certificate,) = [row for row in rows if row.kind == "ssh_certificate"]
    assert certificate.family == jti(bot)  # what its session is checked against
    for value in (certificate.jti, delegated.claims.jti):
        done = await stack.service.revoke_reporting("token", value, reason="x", by="ops")
        assert done.family == value and done.ended == (value,)
    for agent in (bot, first):
        await stack.present(agent)


async def test_a_token_from_before_families_works_and_is_revoked_by_its_jti(
    stack: Stack, bot: Agent
) -> None:
    """A token without the claim (signed as an older node did, recorded without a family)
    is accepted and revoked by its jti alone; renewed since, it starts the family."""
    assert bot.claims is not None
    legacy, legacy_claims = await _legacy_token(stack, bot)
    older = Agent("bot", key=bot.key, token=legacy)
    assert (await stack.present(older)).family is None
    renewed = await renew(stack, older)
    assert family_of(renewed) == legacy_claims.jti
    sibling, _ = await _legacy_token(stack, bot)  # an older renewal: no family either
    done = await stack.service.revoke_reporting(
        "token", legacy_claims.jti, reason="stolen", by="ops"
    )
    assert done.family == legacy_claims.jti  # no family recorded: the token's own jti
    for agent in (older, renewed):
        with pytest.raises(TokenRevoked):
            await stack.present(agent)
    await stack.present(Agent("bot", key=bot.key, token=sibling))  # as before: untouched
    await stack.present(bot)
    # Revoking the renewal ends the older token it was renewed from (its recorded family).
    second_legacy, second_claims = await _legacy_token(stack, bot)
    older = Agent("bot", key=bot.key, token=second_legacy)
    renewed = await renew(stack, older)
    await stack.service.revoke("token", jti(renewed), reason="stolen", by="ops")
    with pytest.raises(TokenRevoked, match="the token is revoked"):
        await stack.present(older)
    assert ("token", second_claims.jti) in stack.service.revoked


async def _legacy_token(stack: Stack, bot: Agent) -> tuple[str, Claims]:
    """A token of ``bot``'s as a node before families issued it, and recorded it."""
    assert bot.claims is not None
    _, fresh = stack.service.tokens.issue(
        subject="bot", task=bot.claims.task, scope=bot.claims.scope, runtime=bot.claims.runtime,
        cnf=bot.claims.cnf,
    )  # fmt: skip
    claims = dataclasses.replace(fresh, family=None)
    payload = claims.to_json()
    assert "family" not in payload
    key = stack.service.keys.ring.active
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": key.kid}
    token = jose.encode_compact(header, payload, key.sign)
    await stack.service.record_credential(
        credential_record(claims, "access_token", key_thumbprint=claims.cnf.jkt)
    )
    return token, claims


async def test_migration_0012_round_trip(store_url: str) -> None:
    engine = create_async_engine(store_url)

    async def columns() -> set[str]:
        async with engine.connect() as conn:
            found = await conn.run_sync(lambda sync: inspect(sync).get_columns("credentials"))
        return {column["name"] for column in found}

    try:
        await upgrade(engine, "0011")
        assert "family" not in await columns()
        await upgrade(engine)
        assert "family" in await columns()
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0011"))
        assert "family" not in await columns()
    finally:
        await engine.dispose()
