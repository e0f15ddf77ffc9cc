"""Agents' rows changed in the database behind Tether's back (migration 0016; docs/vault.md,
"Tampering with the database"), on SQLite and PostgreSQL: a disabled agent enabled again,
labels or an owner of the writer's choosing, or a row without a seal. Its credentials are
refused at their next use (on the read and on the watcher's refresh), nothing more is
issued to it, its labels decide nothing, and only an operator's adoption trusts a row from
before the seals."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import update

from tests.identity_e2e.conftest import Agent, Stack
from tether.identity.errors import TokenRevoked
from tether.proxy.core import AgentLabels
from tether.store import agents as agent_store
from tether.store.identity import AgentNotActive
from tether.store.schema import agents
from tether.store.sealing import adopt, unsealed


async def _set(stack: Stack, agent_id: str = "bot", **values: Any) -> None:
    async with stack.engine.begin() as conn:
        await conn.execute(update(agents).where(agents.c.id == agent_id).values(values))


def _next_poll(stack: Stack) -> None:
    stack.clock.advance(stack.service.settings.revocation_poll)  # the cached state expires


async def test_a_disabled_agent_enabled_in_the_database_stays_refused(
    stack: Stack, bot: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    await stack.present(bot)
    await stack.service.set_agent_state("bot", "disabled")
    await _set(stack, state="active")  # the writer undoes the disable
    _next_poll(stack)
    with (
        caplog.at_level(logging.ERROR, "tether.crypto.seal"),
        pytest.raises(TokenRevoked, match="the agent is unverified"),
    ):
        await stack.present(bot)
    assert "agent 'bot' refused: its seal does not verify" in caplog.text
    with pytest.raises(AgentNotActive):  # and nothing more is issued to it
        await stack.service.create_join_token("bot")


@pytest.mark.parametrize(
    "change", [{"labels": {"team": "admins"}}, {"owner": "mallory"}, {"seal": "A" * 43}],
    ids=["labels", "owner", "made-up-seal"],
)  # fmt: skip
async def test_an_active_agent_changed_in_the_database_is_refused(
    stack: Stack, bot: Agent, change: dict[str, Any]
) -> None:
    await stack.present(bot)
    await _set(stack, **change)
    _next_poll(stack)
    with pytest.raises(TokenRevoked, match="the agent is unverified"):
        await stack.present(bot)
    labels = AgentLabels(stack.engine, stack.service.sealer)
    with pytest.raises(agent_store.AgentUnverified):  # its labels decide nothing
        await labels.get("bot")
    with pytest.raises(AgentNotActive):
        await stack.service.create_join_token("bot")


async def test_the_watchers_refresh_sees_a_changed_row(stack: Stack, bot: Agent) -> None:
    await stack.present(bot)  # cached as active
    await _set(stack, labels={"team": "admins"})
    assert await stack.service.agent_states.refresh() == 1  # the poll, before expiry
    with pytest.raises(TokenRevoked, match="the agent is unverified"):
        await stack.present(bot)


async def test_a_changed_agent_can_be_disabled_but_never_enabled(stack: Stack, bot: Agent) -> None:
    await _set(stack, owner="mallory")
    with pytest.raises(agent_store.AgentUnverified):
        await stack.service.set_agent_state("bot", "active")
    disabled = await stack.service.set_agent_state("bot", "disabled")
    assert disabled is not None and disabled.state == "disabled"
    await _set(stack, state="active")  # the disable did not seal the changed row
    _next_poll(stack)
    with pytest.raises(TokenRevoked, match="the agent is unverified"):
        await stack.present(bot)


async def test_an_agent_from_before_the_seals_works_once_adopted(stack: Stack, bot: Agent) -> None:
    await _set(stack, seal=None)  # as written before migration 0016
    assert await unsealed(stack.engine) == {"agents": ["bot"]}
    _next_poll(stack)
    with pytest.raises(TokenRevoked, match="the agent is unverified"):
        await stack.present(bot)
    assert await adopt(stack.engine, stack.service.sealer) == {"agents": ["bot"]}
    _next_poll(stack)
    assert (await stack.present(bot)).agent_id == "bot"
    labels = AgentLabels(stack.engine, stack.service.sealer)
    assert dict(await labels.get("bot")) == {}


async def test_state_changes_through_tether_keep_the_row_sealed(stack: Stack, bot: Agent) -> None:
    for state in ("disabled", "active", "disabled", "active"):
        changed = await stack.service.set_agent_state("bot", state)  # type: ignore[arg-type]
        assert changed is not None and changed.state == state
    _next_poll(stack)
    assert (await stack.present(bot)).agent_id == "bot"
    done = await stack.service.offboard("bot", reason="r", by="admin")
    assert done is not None
    async with stack.engine.connect() as conn:  # offboarded, and still a row Tether wrote
        gone = await agent_store.verified_agent(conn, stack.service.sealer, "bot")
    assert gone is not None and gone.state == "offboarded"
