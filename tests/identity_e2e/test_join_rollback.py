"""A one-time join token used, then its row written back unused as it was (its seal
Tether's), on SQLite and PostgreSQL (docs/vault.md, "Tampering with the database").

The row alone verifies: the store consumes it again, and a node restarted without its copy
after the whole database was put back lets it join again (the controls). The use is also a
revocation, so the node that consumed it, a node that polled the list, and a node restarted
with its copy after the whole database was put back all refuse it, and say why in the log."""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy import text as sql

from tests.identity_e2e.conftest import Agent, Clock, Stack, build_service, join_form
from tests.identity_e2e.test_revocation_copy import _put_back, _snapshot
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity import exchange as ex
from tether.identity.revocation_copy import RevocationCopy, read_copy
from tether.store import Store
from tether.store import agents as agent_store
from tether.store.agents import join_token_revocation
from tether.store.credentials import lock_revocations, read_revocations
from tether.store.identity import digest
from tether.store.schema import join_tokens

REFUSED = "the join token is unknown, used, expired or its agent inactive"


class Used:
    """A join token used once, whose unused row the test can write back."""

    def __init__(self, text: str, token_id: str, unused: dict[str, Any], before: Any) -> None:
        self.text, self.id, self.unused, self.before = text, token_id, unused, before


async def _join_row(stack: Stack, token_id: str) -> dict[str, Any]:
    async with stack.engine.connect() as conn:
        query = select(join_tokens).where(join_tokens.c.id == token_id)
        return dict((await conn.execute(query)).mappings().one())


async def _write_back(stack: Stack, row: dict[str, Any]) -> None:
    async with stack.engine.begin() as conn:
        await conn.execute(update(join_tokens).where(join_tokens.c.id == row["id"]).values(row))


async def _use(stack: Stack, agent: Agent) -> Used:
    """Join with a new token; what it was before (its row, the revocations) is kept."""
    text, record = await stack.service.create_join_token(agent.id)
    used = Used(text, record.id, await _join_row(stack, record.id), await _snapshot(stack))
    await stack.exchange(agent, join_form(text, "T-1"))
    assert (await _join_row(stack, record.id))["used_at"] is not None
    return used


async def _refused(stack: Stack, agent: Agent, text: str) -> None:
    with pytest.raises(ex.ExchangeError) as refused:
        await stack.exchange(agent, join_form(text, "T-2"))
    assert refused.value.error == "invalid_grant"
    assert refused.value.description == REFUSED  # the reason is not told


async def test_the_use_is_a_revocation_until_the_token_expires(stack: Stack) -> None:
    agent = await stack.new_agent("bot")
    text, record = await stack.service.create_join_token(agent.id)
    await stack.exchange(agent, join_form(text, "T-1"))
    async with stack.engine.connect() as conn:
        read = await read_revocations(conn, 0)
    entries = {(e.kind, e.value): e for e in read.entries}
    entry = entries[("token", join_token_revocation(record.id))]
    assert (entry.reason, entry.revoked_by) == ("join token used", "tether")
    assert entry.expires_at == record.expires_at
    assert stack.service.revoked.holds("token", join_token_revocation(record.id))

    # An hour after the token expired, the entry is pruned, and the node stops holding it.
    stack.clock.advance(900 + 3600)
    assert await stack.service.prune_revocations() >= 1
    assert not stack.service.revoked.holds("token", join_token_revocation(record.id))

    # A refused exchange (a wrong secret) consumes nothing and revokes nothing.
    other, other_record = await stack.service.create_join_token(agent.id)
    await _refused(stack, agent, other[:-4] + ("AAAA" if not other.endswith("AAAA") else "BBBB"))
    assert not stack.service.revoked.holds("token", join_token_revocation(other_record.id))
    await stack.exchange(agent, join_form(other, "T-3"))


async def test_a_join_token_put_back_unused_stays_refused(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    agent = await stack.new_agent("bot")
    used = await _use(stack, agent)
    await _write_back(stack, used.unused)

    # The control: the row alone verifies, and the store would consume it again.
    secret = used.text.removeprefix("tjt_").partition(".")[2]
    async with stack.engine.connect() as conn, conn.begin() as transaction:
        again = await agent_store.consume_join_token(
            conn, stack.service.sealer, id=used.id, token_hash=digest(secret),
            runtime_id=f"join/{used.id}", now=stack.clock(),
        )  # fmt: skip
        assert again is not None
        await transaction.rollback()

    # The node that consumed it, and another that polled the list, refuse it.
    polled = await build_service(stack.store, stack.clock, stack.cipher)
    for service in (stack.service, polled):
        stack.service = service
        with caplog.at_level(logging.ERROR, "tether.identity.grants"):
            await _refused(stack, agent, used.text)
        assert f"join token {used.id!r} refused: it was used, but its row is unused" in caplog.text
        caplog.clear()
    assert (await _join_row(stack, used.id))["used_at"] is None  # nothing consumed


async def test_a_restarted_node_refuses_it_after_the_whole_database_was_put_back(
    stack: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy = tmp_path / "data" / "revocations.json"
    stack.service = await _node(stack, copy)
    agent = await stack.new_agent("bot")
    used = await _use(stack, agent)
    # The node's copy holds the use once the exchange has answered.
    assert ("token", join_token_revocation(used.id)) in {(h.kind, h.value) for h in read_copy(copy)}

    # The control: the whole database put back, a node restarted without its copy takes
    # the token again.
    await _put_back(stack, used.before)
    await _write_back(stack, used.unused)
    stack.service = await _node(stack, None)
    assert stack.service.revocations_missing == 0
    await stack.exchange(agent, join_form(used.text, "T-2"))

    # Put back once more; the node restarted with its copy refuses it and says why.
    await _put_back(stack, used.before)
    await _write_back(stack, used.unused)
    with caplog.at_level(logging.ERROR):
        stack.service = await _node(stack, copy)
        assert stack.service.revocations_missing == 1
        assert "1 revocation(s) this node holds, still in force, are missing" in caplog.text
        await _refused(stack, agent, used.text)
    assert f"join token {used.id!r} refused" in caplog.text
    assert (await _join_row(stack, used.id))["used_at"] is None


async def _node(stack: Stack, copy: Path | None) -> Any:
    """A node started on the store as it is now, with its copy of revocations if any."""
    revocation_copy = None if copy is None else RevocationCopy(copy)
    return await build_service(
        stack.store, stack.clock, stack.cipher, revocation_copy=revocation_copy
    )


async def test_a_join_waits_for_the_revocations_before_it_locks_its_token(
    pg_fresh_url: str,
) -> None:
    """PostgreSQL: an offboarding holds the revocations' lock, then expires the agent's
    unused join tokens. A join meanwhile must wait for that lock *before* it updates its
    token's row, or each would wait for the other (a deadlock, one of them failing)."""
    store = await Store.open(pg_fresh_url)
    try:
        stack = Stack(store, Clock(), _cipher(), None)  # type: ignore[arg-type]
        stack.service = await build_service(store, stack.clock, stack.cipher)
        agent = await stack.new_agent("bot")
        text, record = await stack.service.create_join_token(agent.id)
        secret = text.removeprefix("tjt_").partition(".")[2]
        async with store.engine.connect() as offboarding:
            await offboarding.begin()
            await lock_revocations(offboarding)  # what offboard_agent holds by now
            join = asyncio.create_task(_consume(stack, record.id, secret))
            await asyncio.sleep(0.5)  # the join runs up to where it waits
            assert not join.done()
            await offboarding.execute(sql("SET LOCAL lock_timeout = '2s'"))
            expired = update(join_tokens).where(join_tokens.c.id == record.id)
            await offboarding.execute(expired.values(expires_at=stack.clock()))  # no wait
            await offboarding.commit()
        assert await join is None  # the token expired by the offboarding: not consumed
    finally:
        await store.close()


async def _consume(stack: Stack, token_id: str, secret: str) -> Any:
    async with stack.engine.begin() as conn:
        return await agent_store.consume_join_token(
            conn, stack.service.sealer, id=token_id, token_hash=digest(secret),
            runtime_id=f"join/{token_id}", now=stack.clock(),
        )  # fmt: skip


def _cipher() -> EnvelopeCipher:
    return EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
