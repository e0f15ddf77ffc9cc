"""DPoP replay across nodes: the shared table on PostgreSQL, one cache per SQLite database.

On PostgreSQL each node checks its own memory cache and then ``dpop_replay`` (migration
0009) with one atomic statement; a database error there refuses the proof. On SQLite the
services of one process on one database share a memory cache and never touch the table.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from tests.identity_e2e.conftest import (
    RESOURCE,
    TOKEN_URL,
    Agent,
    Clock,
    Stack,
    build_service,
    join_form,
)
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity.errors import ReplayDetected
from tether.identity.issued import Presented
from tether.identity.replay import ReplayCacheFull, ReplayCheckFailed
from tether.identity.service import REPLAY_PRUNE_MARGIN
from tether.store import Store
from tether.store import replay as replay_store
from tether.store.migrate import alembic_config, upgrade


@pytest.fixture
async def bot_on_pg(pg_fresh_url: str) -> AsyncIterator[tuple[Stack, Agent]]:
    store = await Store.open(pg_fresh_url)
    try:
        clock = Clock()
        cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
        stack = Stack(store, clock, cipher, await build_service(store, clock, cipher))
        agent = await stack.new_agent("bot")
        await stack.join(agent)
        yield stack, agent
    finally:
        await store.close()


async def _rows(stack: Stack) -> int:
    async with stack.engine.connect() as conn:
        return int(
            (
                await conn.execute(select(func.count()).select_from(replay_store.dpop_replay))
            ).scalar_one()
        )


async def test_a_proof_is_recorded_where_every_node_sees_it(stack: Stack, bot: Agent) -> None:
    """PostgreSQL: one row per accepted proof (the join's and this one). SQLite: none, the
    one process's services share a memory cache instead (no write per request)."""
    proof = stack.proof(bot, token=bot.token)
    await stack.service.authenticate(Presented(bot.token, "GET", RESOURCE, proof))
    shared = stack.engine.dialect.name == "postgresql"
    assert stack.service.shared_replay is shared
    assert await _rows(stack) == (2 if shared else 0)


async def test_a_join_proof_replayed_to_another_node_is_refused(stack: Stack) -> None:
    """The token endpoint's own proof (a join grant) is checked across nodes too."""
    agent = await stack.new_agent("bot")
    other = await build_service(stack.store, stack.clock, stack.cipher)
    first, _ = await stack.service.create_join_token(agent.id)
    second, _ = await stack.service.create_join_token(agent.id)
    proof = stack.proof(agent, "POST", TOKEN_URL)
    await stack.service.exchange(join_form(first), dpop=proof, url=TOKEN_URL)
    with pytest.raises(ReplayDetected):
        await other.exchange(join_form(second), dpop=proof, url=TOKEN_URL)


async def test_a_database_error_in_the_shared_check_refuses_the_proof(
    bot_on_pg: tuple[Stack, Agent],
) -> None:
    """Fail closed: if the shared check cannot be made, the proof is refused (503), and a
    proof refused so is not accepted by the next node either (it was never recorded)."""
    stack, bot = bot_on_pg
    async with stack.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE dpop_replay RENAME TO dpop_replay_gone"))
    proof = stack.proof(bot, token=bot.token)
    presented = Presented(bot.token, "GET", RESOURCE, proof)
    with pytest.raises(ReplayCheckFailed) as refused:
        await stack.service.authenticate(presented)
    assert isinstance(refused.value, ReplayCacheFull)  # front-ends answer 503
    other = await build_service(stack.store, stack.clock, stack.cipher)
    with pytest.raises(ReplayCheckFailed):
        await other.authenticate(presented)
    async with stack.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE dpop_replay_gone RENAME TO dpop_replay"))
    fresh = stack.proof(bot, token=bot.token)
    assert (await other.authenticate(Presented(bot.token, "GET", RESOURCE, fresh))).sub == "bot"


async def test_a_lost_database_refuses_the_proof(bot_on_pg: tuple[Stack, Agent]) -> None:
    """A connection that cannot be made is a refusal, not a pass."""
    stack, bot = bot_on_pg
    await stack.store.engine.dispose()
    broken = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    stack.service.engine = broken
    try:
        proof = stack.proof(bot, token=bot.token)
        with pytest.raises(ReplayCheckFailed):
            await stack.service.authenticate(Presented(bot.token, "GET", RESOURCE, proof))
    finally:
        await broken.dispose()


async def test_claim_is_a_test_and_set_until_expiry_and_prune_deletes(pg_fresh_url: str) -> None:
    store = await Store.open(pg_fresh_url)
    clock = Clock()
    try:
        later = clock() + timedelta(seconds=61)
        async with store.engine.begin() as conn:
            assert await replay_store.claim(conn, "dpop:a", later, clock())
            assert not await replay_store.claim(conn, "dpop:a", later, clock())
            assert await replay_store.claim(conn, "dpop:b", clock(), clock() - timedelta(1))
        clock.advance(61)
        async with store.engine.begin() as conn:  # expired: usable again, then a replay
            assert await replay_store.claim(conn, "dpop:a", later + timedelta(60), clock())
            assert not await replay_store.claim(conn, "dpop:a", later + timedelta(60), clock())
            assert await replay_store.prune(conn, clock()) == 1  # dpop:b
    finally:
        await store.close()


async def test_expired_rows_are_deleted_by_the_watcher(bot_on_pg: tuple[Stack, Agent]) -> None:
    stack, _bot = bot_on_pg
    assert await _rows(stack) == 1  # the join's proof
    await stack.service.prune_replays()
    assert await _rows(stack) == 1
    stack.clock.advance(62)
    await stack.service.maintain()
    assert await _rows(stack) == 1  # expired, kept REPLAY_PRUNE_MARGIN for nodes behind
    stack.clock.advance(REPLAY_PRUNE_MARGIN.total_seconds())
    await stack.service.maintain()
    assert await _rows(stack) == 0


async def test_services_on_other_sqlite_databases_do_not_share(tmp_path: Path) -> None:
    """The registry is per database file: a proof for one is not a replay on another."""
    clock = Clock()
    cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
    one = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}")
    two = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'two.db'}")
    try:
        first = await build_service(one, clock, cipher)
        again = await build_service(one, clock, cipher)
        elsewhere = await build_service(two, clock, cipher)
        assert first.replay_cache is again.replay_cache
        assert first.replay_cache is not elsewhere.replay_cache
        assert not first.shared_replay
    finally:
        await one.close()
        await two.close()


async def _tables(conn: AsyncConnection) -> set[str]:
    return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


async def test_migration_0009_round_trip(store_url: str) -> None:
    engine = create_async_engine(store_url)
    try:
        await upgrade(engine, "0008")
        async with engine.begin() as conn:
            assert "dpop_replay" not in await _tables(conn)
        await upgrade(engine)
        async with engine.begin() as conn:
            assert "dpop_replay" in await _tables(conn)
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0008"))
            assert "dpop_replay" not in await _tables(conn)
    finally:
        await engine.dispose()
