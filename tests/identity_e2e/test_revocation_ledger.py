"""Revocations deleted, changed or planted in the database behind Tether's back (migration
0021, the revocation ledger; docs/vault.md, "Tampering with the database"), on SQLite and
PostgreSQL. A row seal cannot see a deleted row; the sealed ledger can: a node that starts
after a stolen token's revocation was deleted refuses every credential instead of taking
the token back, and so does a running node whose next poll misses a revocation another
node made. Legitimate traffic (revocations from several nodes at once, prunes) never
trips it, and an operator's ``tether store seal`` puts a checked list back in service."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import delete, text, update

from tests.identity_e2e.conftest import Agent, Stack, build_service, join_form
from tether.api import AppState, PolicyHolder, create_app
from tether.identity.errors import TokenRevoked
from tether.identity.exchange import ExchangeError
from tether.identity.service import IdentityService
from tether.policy import load_policies
from tether.store import credentials as cred_store
from tether.store.identity import AgentNotActive
from tether.store.schema import revocation_ledger, revocations
from tether.store.sealing import adopt, unsealed

UNVERIFIED = "the revocation list does not verify"


async def _exec(stack: Stack, sql: str) -> None:
    async with stack.engine.begin() as conn:
        await conn.execute(text(sql))


async def test_a_new_database_has_its_ledger_and_nothing_to_adopt(stack: Stack) -> None:
    assert stack.service.revoked.unverified is None
    assert stack.service.revoked.trusted is not None
    assert await unsealed(stack.engine) == {}
    assert await adopt(stack.engine, stack.cipher.sealer) == {}  # nothing: never re-blessed


async def test_a_deleted_revocation_does_not_bring_a_stolen_token_back(
    stack: Stack, bot: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    assert bot.claims is not None
    other = await stack.new_agent("other")
    join_token, _ = await stack.service.create_join_token("other")
    await stack.service.revoke("token", bot.claims.jti, reason="stolen", by="admin")
    async with stack.engine.begin() as conn:  # the thief, with write access to the database
        await conn.execute(delete(revocations).where(revocations.c.value == bot.claims.jti))
    with caplog.at_level(logging.ERROR, "tether.identity.service"):
        restarted = await build_service(stack.store, stack.clock, stack.cipher)
    assert "every credential is refused: the revocations do not match their ledger" in caplog.text
    stack.service = restarted
    with pytest.raises(TokenRevoked, match=UNVERIFIED):
        await stack.present(bot)
    with pytest.raises(AgentNotActive, match=UNVERIFIED):  # nothing is issued either
        await stack.service.create_join_token("bot")
    with pytest.raises(ExchangeError) as refused:
        await stack.exchange(other, join_form(join_token))
    assert (refused.value.error, refused.value.description) == ("invalid_grant", UNVERIFIED)


async def test_a_running_node_sees_a_revocation_deleted_before_its_poll(
    stack: Stack, bot: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    node_b = await build_service(stack.store, stack.clock, stack.cipher)
    await stack.present(bot)  # node A accepts the token
    await node_b.revoke("task", "T-1", reason="incident", by="admin")
    await _exec(stack, "DELETE FROM revocations WHERE value = 'T-1'")  # before A polls
    with caplog.at_level(logging.ERROR, "tether.identity.service"):
        await stack.service.refresh_revocations()
    assert "every credential is refused" in caplog.text
    with pytest.raises(TokenRevoked, match=UNVERIFIED):
        await stack.present(bot)
    # Node B made the revocation itself, so it still refuses the task's tokens; at its next
    # poll it checks the list again, and refuses everything too.
    await node_b.refresh_revocations()
    assert node_b.revoked.unverified == UNVERIFIED


async def test_adoption_puts_a_checked_list_back_in_service(
    stack: Stack, bot: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    await stack.service.revoke("task", "T-9", reason="done", by="admin")
    await _exec(stack, "UPDATE revocations SET reason = 'rewritten' WHERE value = 'T-9'")
    await stack.service.refresh_revocations()  # its next poll reads the row: not what it wrote
    assert stack.service.revoked.unverified == UNVERIFIED
    restarted = await build_service(stack.store, stack.clock, stack.cipher)
    assert restarted.revoked.unverified == UNVERIFIED
    assert await adopt(stack.engine, stack.cipher.sealer) == {}  # a sealed ledger: kept
    # The operator looked, and clears the ledger's seal: `tether store seal` rebuilds it.
    async with stack.engine.begin() as conn:
        await conn.execute(update(revocation_ledger).values(seal=None))
    assert await unsealed(stack.engine) == {"revocation_ledger": ["unsealed"]}
    assert await adopt(stack.engine, stack.cipher.sealer) == {
        "revocation_ledger": ["revocations=2"]  # T-9, and the use of bot's join token
    }
    with caplog.at_level(logging.WARNING, "tether.identity.service"):
        await restarted.refresh_revocations()
    assert "the revocation list verifies again" in caplog.text
    stack.service = restarted
    assert (await stack.present(bot)).sub == "bot"


async def test_a_database_from_before_the_ledger_is_refused_until_adopted(
    stack: Stack, bot: Agent
) -> None:
    await stack.service.revoke("task", "T-0", reason="old", by="admin")
    await _exec(stack, "DELETE FROM revocation_ledger")  # as migration 0021 leaves it
    restarted = await build_service(stack.store, stack.clock, stack.cipher)
    assert restarted.revoked.unverified == UNVERIFIED
    assert await unsealed(stack.engine) == {"revocation_ledger": ["missing"]}
    assert await adopt(stack.engine, stack.cipher.sealer) == {
        "revocation_ledger": ["revocations=2"]  # T-9, and the use of bot's join token
    }
    stack.service = await build_service(stack.store, stack.clock, stack.cipher)
    assert (await stack.present(bot)).sub == "bot"
    assert ("task", "T-0") in stack.service.revoked


async def test_busy_nodes_and_prunes_never_trip_the_ledger(stack: Stack, bot: Agent) -> None:
    """Two nodes revoking at once while a third polls, then a prune by one of them: every
    poll of every node verifies (the rows and the ledger are read in one snapshot)."""
    node_b = await build_service(stack.store, stack.clock, stack.cipher)
    watcher = await build_service(stack.store, stack.clock, stack.cipher)
    expiry = stack.clock() + timedelta(seconds=60)
    done = asyncio.Event()
    polls = 0

    async def revoke_many(node: IdentityService, prefix: str) -> None:
        for n in range(40):
            async with node.engine.begin() as conn:
                await cred_store.insert_revocation(
                    conn, node.sealer, kind="token", value=f"{prefix}-{n}", reason="r",
                    revoked_by="a", now=stack.clock(), expires_at=expiry,
                )  # fmt: skip

    async def poll() -> None:
        nonlocal polls
        while not done.is_set():
            await watcher.refresh_revocations()
            assert watcher.revoked.unverified is None
            polls += 1
            await asyncio.sleep(0)

    poller = asyncio.create_task(poll())
    await asyncio.gather(revoke_many(stack.service, "a"), revoke_many(node_b, "b"))
    done.set()
    await poller
    assert polls > 1
    async with stack.engine.begin() as conn:
        assert await cred_store.prune_revocations(conn, node_b.sealer, expiry) == 80
    for node in (stack.service, node_b, watcher):
        await node.refresh_revocations()
        assert node.revoked.unverified is None
    fresh = await build_service(stack.store, stack.clock, stack.cipher)
    assert fresh.revoked.unverified is None
    assert (await stack.present(bot)).sub == "bot"


async def test_the_watcher_prunes_expired_revocations_and_the_ledger_follows(
    stack: Stack, bot: Agent
) -> None:
    """Revocations past their ``expires_at`` by more than the margin are pruned (at most
    once every ten minutes a node); every node's list still verifies afterwards."""
    node_b = await build_service(stack.store, stack.clock, stack.cipher)

    async def revoke(value: str, seconds: float | None) -> None:
        expiry = None if seconds is None else stack.clock() + timedelta(seconds=seconds)
        async with stack.engine.begin() as conn:
            await cred_store.insert_revocation(
                conn, stack.cipher.sealer, kind="token", value=value, reason="r",
                revoked_by="a", now=stack.clock(), expires_at=expiry,
            )  # fmt: skip

    async with stack.engine.connect() as conn:  # the use of bot's join token (not pruned yet)
        joined = [e.value for e in (await cred_store.read_revocations(conn, 0)).entries]
    for n in range(3):
        await revoke(f"old-{n}", 10)
    await revoke("forever", None)
    for node in (stack.service, node_b):
        await node.refresh_revocations()
    assert await stack.service.prune_revocations() == 0  # not expired yet
    stack.clock.advance(10 + 1800)
    assert await stack.service.prune_revocations() == 0  # expired, within the margin
    stack.clock.advance(1800)
    assert await stack.service.prune_revocations() == 3
    async with stack.engine.connect() as conn:
        left = await cred_store.read_revocations(conn, 0)
    assert [e.value for e in left.entries] == [*joined, "forever"]
    for node in (stack.service, node_b):
        await node.refresh_revocations()
        assert node.revoked.unverified is None
    # The node that pruned stopped holding them; the other holds them (harmless: they
    # only affect expired credentials) until its own prune.
    assert ("token", "old-0") not in stack.service.revoked
    assert ("token", "old-0") in node_b.revoked
    assert ("token", "forever") in stack.service.revoked
    assert await node_b.prune_revocations() == 0  # the store's are gone already
    assert ("token", "old-0") not in node_b.revoked
    fresh = await build_service(stack.store, stack.clock, stack.cipher)
    assert fresh.revoked.unverified is None
    assert ("token", "old-0") not in fresh.revoked
    # The watcher's pace: one prune, then none for ten minutes.
    await stack.service.maintain()
    await revoke("late", -7200)  # expired two hours ago
    await stack.service.maintain()
    assert ("token", "late") in (
        await build_service(stack.store, stack.clock, stack.cipher)
    ).revoked
    stack.clock.advance(600)
    await stack.service.maintain()
    again = await build_service(stack.store, stack.clock, stack.cipher)
    assert ("token", "late") not in again.revoked
    assert again.revoked.unverified is None


async def test_healthz_says_when_the_node_refuses_everything(stack: Stack) -> None:
    """What monitoring watches: ``GET /healthz`` stays 200 (a restart would not help) but
    says ``refusing`` while the revocation list does not verify, and ``ok`` once adopted."""
    app = create_app(AppState(PolicyHolder(load_policies([])), stack.store, stack.service))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tether") as http:

        async def health() -> tuple[int, str, str]:
            answer = await http.get("/healthz")
            body = answer.json()
            return answer.status_code, body["status"], body["revocations"]

        assert await health() == (200, "ok", "verified")
        await stack.service.revoke("task", "T-1", reason="done", by="admin")
        await _exec(stack, "DELETE FROM revocations WHERE value = 'T-1'")
        await stack.service.refresh_revocations()
        assert await health() == (200, "refusing", "unverified")
        async with stack.engine.begin() as conn:
            await conn.execute(update(revocation_ledger).values(seal=None))
        await adopt(stack.engine, stack.cipher.sealer)
        await stack.service.refresh_revocations()
        assert await health() == (200, "ok", "verified")
