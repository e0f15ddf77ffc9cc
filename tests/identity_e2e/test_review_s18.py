"""Probes of a red-team review of identity, on both store backends: an expired token is
never renewed, whatever the verifier's leeway (it was, within it); a task revocation ends
that task's credentials and a token revocation everything derived from the token; one join
token gives one token however many exchanges race for it."""

from __future__ import annotations

import asyncio

import pytest

from tests.identity_e2e.conftest import (
    Agent,
    Stack,
    delegate_form,
    join_form,
    rescope_form,
)
from tether.identity.errors import CredentialError
from tether.identity.exchange import ExchangeError


async def test_a_task_revocation_is_the_tasks_and_a_token_revocation_ends_its_lineage(
    stack: Stack, bot: Agent
) -> None:
    """What an agent's T-1 token became for another task (a token for T-2, a delegation it
    was the actor of) is that task's: revoking T-1 leaves it (documented, docs/identity.md);
    revoking the T-1 token ends it all, on every use."""
    other = await stack.exchange(bot, rescope_form(bot.token, "T-2"), ath=bot.token)
    delegated = await stack.exchange(
        bot, delegate_form(stack.user_token("alice"), bot.token, task="T-3"), ath=bot.token
    )
    await stack.service.revoke("task", "T-1", reason="rogue", by="admin")
    with pytest.raises(CredentialError, match="the task is revoked"):
        await stack.present(bot)
    assert (await stack.present(bot, other.token)).task.id == "T-2"
    assert (await stack.present(bot, delegated.token)).task.id == "T-3"
    assert bot.claims is not None
    await stack.service.revoke("token", bot.claims.jti, reason="rogue", by="admin")
    for token in (other.token, delegated.token):
        with pytest.raises(CredentialError):
            await stack.present(bot, token)


async def test_renewal_of_an_expired_token_is_refused(stack: Stack, bot: Agent) -> None:
    assert bot.claims is not None
    stack.clock.advance(bot.claims.exp - stack.clock.now + 2)  # 2 s past exp
    with pytest.raises((CredentialError, ExchangeError)):
        await stack.exchange(bot, rescope_form(bot.token, "T-1"), ath=bot.token)


async def test_a_task_revocation_ends_nothing_else(stack: Stack, bot: Agent) -> None:
    """The agent's token of another task, joined on its own (another family), lives on."""
    text, _ = await stack.service.create_join_token(bot.id)
    other = Agent(bot.id)
    issued = await stack.exchange(other, join_form(text, task="T-3"))
    other.token = issued.token
    await stack.service.revoke("task", "T-1", reason="rogue", by="admin")
    assert (await stack.present(other)).task.id == "T-3"
    with pytest.raises(CredentialError):
        await stack.present(bot)


async def test_a_token_is_renewed_until_it_expires(stack: Stack, bot: Agent) -> None:
    assert bot.claims is not None
    stack.clock.advance(bot.claims.exp - stack.clock.now - 2)  # 2 s before exp
    renewed = await stack.exchange(bot, rescope_form(bot.token, "T-1"), ath=bot.token)
    assert renewed.claims.exp > bot.claims.exp


async def test_a_join_token_exchanged_twice_concurrently_gives_one_token(stack: Stack) -> None:
    agent = await stack.new_agent("bot2")
    text, _ = await stack.service.create_join_token(agent.id)
    a, b = Agent("bot2"), Agent("bot2")
    results = await asyncio.gather(
        stack.exchange(a, join_form(text)), stack.exchange(b, join_form(text)),
        return_exceptions=True,
    )  # fmt: skip
    assert len([r for r in results if not isinstance(r, BaseException)]) == 1, results
