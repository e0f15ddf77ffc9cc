"""Agents' states on the path of every authentication: one store read per expiry, shared.

Concurrent authentications after the cached state expired must share one read (counted
both by the cache and by the store connections SQLAlchemy opens); the revocation
watcher's refresh keeps requests off the store; a cancelled waiter does not cancel the
shared read; a local change is not overwritten by a read that started before it.

On PostgreSQL every accepted DPoP proof also costs one connection, for the shared replay
check (``dpop_replay``, :func:`tether.store.replay.claim`): counted apart, exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from tests.identity_e2e.conftest import Agent, Stack
from tether.identity.errors import TokenRevoked
from tether.store import agents as agent_store


@contextmanager
def connections(stack: Stack) -> Iterator[list[int]]:
    """Counts the store connections opened inside the block."""
    opened = [0]

    def count(*_: Any) -> None:
        opened[0] += 1

    event.listen(stack.engine.sync_engine, "engine_connect", count)
    try:
        yield opened
    finally:
        event.remove(stack.engine.sync_engine, "engine_connect", count)


def replay_checks(stack: Stack, proofs: int) -> int:
    """The connections ``proofs`` accepted proofs open for the shared replay check."""
    return proofs if stack.engine.dialect.name == "postgresql" else 0


def expire(stack: Stack) -> None:
    stack.clock.advance(stack.service.settings.revocation_poll)


async def test_concurrent_authentications_after_expiry_read_the_state_once(
    stack: Stack, bot: Agent
) -> None:
    await stack.present(bot)
    expire(stack)
    states = stack.service.agent_states
    before = states.reads
    with connections(stack) as opened:
        claims = await asyncio.gather(*(stack.present(bot) for _ in range(16)))
    assert [c.sub for c in claims] == ["bot"] * 16
    assert states.reads - before == 1
    assert opened[0] == 1 + replay_checks(stack, 16)
    with connections(stack) as opened:  # fresh again: no read at all
        await asyncio.gather(*(stack.present(bot) for _ in range(4)))
    assert (states.reads - before, opened[0]) == (1, replay_checks(stack, 4))


async def test_the_watchers_refresh_keeps_requests_off_the_store(stack: Stack, bot: Agent) -> None:
    await stack.present(bot)
    states = stack.service.agent_states
    expire(stack)
    assert await states.refresh() == 1  # what watch_revocations does every poll
    before = states.reads
    with connections(stack) as opened:
        await asyncio.gather(*(stack.present(bot) for _ in range(8)))
    assert (states.reads - before, opened[0]) == (0, replay_checks(stack, 8))


async def test_a_change_on_another_node_is_seen_at_the_next_refresh(
    stack: Stack, bot: Agent
) -> None:
    await stack.present(bot)
    async with stack.engine.begin() as conn:
        await agent_store.set_agent_state(
            conn, stack.service.sealer, "bot", "disabled", stack.clock()
        )
    await stack.present(bot)  # still cached: within the poll bound
    await stack.service.agent_states.refresh()
    with pytest.raises(TokenRevoked, match="the agent is disabled"):
        await stack.present(bot)


async def test_the_watcher_refreshes_states(stack: Stack, bot: Agent) -> None:
    await stack.present(bot)
    async with stack.engine.begin() as conn:
        await agent_store.set_agent_state(
            conn, stack.service.sealer, "bot", "disabled", stack.clock()
        )
    stop = asyncio.Event()
    watcher = asyncio.create_task(stack.service.watch_revocations(stop))
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            try:
                await stack.present(bot)
            except TokenRevoked as error:
                assert error.reason == "the agent is disabled"
                break
        else:
            pytest.fail("the watcher never refreshed the agent's state")
    finally:
        stop.set()
        await watcher


async def test_a_cancelled_waiter_does_not_cancel_the_shared_read(stack: Stack, bot: Agent) -> None:
    await stack.present(bot)
    expire(stack)
    states = stack.service.agent_states
    before = states.reads
    first = asyncio.create_task(states.get("bot"))
    second = asyncio.create_task(states.get("bot"))
    await asyncio.sleep(0)  # both waiting on the one read
    first.cancel()
    assert await second == "active"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert states.reads - before == 1


async def test_a_local_change_is_not_overwritten_by_an_older_read(stack: Stack, bot: Agent) -> None:
    await stack.present(bot)
    expire(stack)
    states = stack.service.agent_states
    stale = asyncio.create_task(states.get("bot"))  # starts reading "active"
    await asyncio.sleep(0)
    await stack.service.set_agent_state("bot", "disabled")
    await stale
    with pytest.raises(TokenRevoked, match="the agent is disabled"):
        await stack.present(bot)


async def test_an_unknown_agent_is_refused(stack: Stack) -> None:
    assert await stack.service.agent_states.get("nobody") == "unknown"
