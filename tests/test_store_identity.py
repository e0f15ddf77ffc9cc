"""The identity store on SQLite and on a real PostgreSQL server (``store_url``, tests/pg.py).

Every test runs on both backends, each on a fresh database: the migration both ways, every
repository function, the rules the database itself enforces, atomic join-token consumption
under concurrency, and time stamps read back as aware UTC.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, make_url, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tests import pg
from tether.crypto.masterkey import MasterKey
from tether.crypto.seal import RowSealer
from tether.store import Store
from tether.store import agents as ag
from tether.store import credentials as cr
from tether.store import keys as ks
from tether.store import revocation_ledger as rl
from tether.store.identity import AgentNotActive, RuntimeOfAnotherAgent, digest
from tether.store.migrate import alembic_config
from tether.store.schema import join_tokens

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SEALER = RowSealer(MasterKey(bytes(range(32)), "test"))
IDENTITY_TABLES = {
    "agents", "runtimes", "join_tokens", "credentials", "revocations", "signing_keys",
    "admin_tokens",
}  # fmt: skip


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
async def engine(store_url: str) -> AsyncIterator[AsyncEngine]:
    store = await Store.open(store_url)
    try:
        yield store.engine
    finally:
        await store.close()


async def run(engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[Any]]) -> Any:
    """``work`` in its own committed transaction."""
    async with engine.begin() as conn:
        return await work(conn)


async def exec_sql(engine: AsyncEngine, sql: str, **params: Any) -> None:
    """Change rows behind Tether's back, as a database writer would."""
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


async def refused(engine: AsyncEngine, sql: str, **params: Any) -> None:
    """``sql`` is rejected by a constraint of the database itself."""
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(text(sql), params)


async def new_agent(conn: AsyncConnection, agent_id: str = "ag-1", **kw: Any) -> ag.Agent:
    return await ag.create_agent(
        conn, SEALER, id=agent_id, owner=kw.pop("owner", "alice"), now=T0, **kw
    )


async def new_runtime(conn: AsyncConnection, rt_id: str = "rt-1", agent_id: str = "ag-1") -> None:
    await ag.upsert_runtime(
        conn, SEALER, id=rt_id, agent_id=agent_id, platform="k8s", attested_by="join-token", now=T0
    )


# --- migration -------------------------------------------------------------------------------


def _tables_and_revision(conn: Connection) -> tuple[set[str], str]:
    revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    return set(inspect(conn).get_table_names()), revision


async def test_migrates_up_down_to_0001_and_up_again(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        tables, revision = await conn.run_sync(_tables_and_revision)
    assert tables >= IDENTITY_TABLES
    assert revision == ScriptDirectory.from_config(alembic_config()).get_current_head()

    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "0001"))
    async with engine.connect() as conn:
        tables, revision = await conn.run_sync(_tables_and_revision)
    assert not IDENTITY_TABLES & tables
    assert "policy_loads" in tables
    assert revision == "0001"

    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "head"))
        await new_agent(conn)
    agent = await run(engine, lambda c: ag.get_agent(c, "ag-1"))
    assert agent is not None
    assert agent.state == "active"


# --- agents ----------------------------------------------------------------------------------


async def test_agents_create_get_and_list_with_filters(engine: AsyncEngine) -> None:
    async def setup(conn: AsyncConnection) -> None:
        await new_agent(conn, "ag-1", labels={"team": "billing", "env": "prod"}, purpose="pay")
        await new_agent(conn, "ag-2", labels={"team": "billing", "env": "dev"})
        await new_agent(conn, "ag-3", owner="bob", labels={"team": "ops"})
        await ag.set_agent_state(conn, SEALER, "ag-2", "disabled", at(1))

    await run(engine, setup)
    async with engine.connect() as conn:
        one = await ag.get_agent(conn, "ag-1")
        assert await ag.get_agent(conn, "nope") is None

        async def ids(**filters: Any) -> list[str]:
            return [a.id for a in await ag.list_agents(conn, **filters)]

        assert await ids() == ["ag-1", "ag-2", "ag-3"]
        assert await ids(state="active") == ["ag-1", "ag-3"]
        assert await ids(owner="alice") == ["ag-1", "ag-2"]
        assert await ids(labels={"team": "billing"}) == ["ag-1", "ag-2"]
        assert await ids(labels={"team": "billing", "env": "dev"}) == ["ag-2"]
        assert await ids(labels={"team": "billing"}, state="active") == ["ag-1"]
        assert await ids(labels={"team": "nobody"}) == []
        assert await ids(labels={"missing": "x"}) == []
    assert one == ag.Agent(
        id="ag-1", owner="alice", purpose="pay", labels={"team": "billing", "env": "prod"},
        state="active", created_at=T0, updated_at=T0, last_seen_at=None, revision=1,
    )  # fmt: skip
    async with engine.connect() as conn:  # each change raised the row's revision by one
        assert (await ag.get_agent(conn, "ag-2")).revision == 2  # type: ignore[union-attr]
    with pytest.raises(TypeError):
        one.labels["team"] = "x"  # type: ignore[index]


async def test_duplicate_agent_id_is_refused(engine: AsyncEngine) -> None:
    await run(engine, new_agent)
    with pytest.raises(IntegrityError):
        await run(engine, new_agent)


async def test_state_changes_and_offboarded_is_final(engine: AsyncEngine) -> None:
    await run(engine, new_agent)
    disabled = await run(engine, lambda c: ag.set_agent_state(c, SEALER, "ag-1", "disabled", at(1)))
    assert (disabled.state, disabled.updated_at) == ("disabled", at(1))
    enabled = await run(engine, lambda c: ag.set_agent_state(c, SEALER, "ag-1", "active", at(2)))
    assert enabled.state == "active"
    with pytest.raises(ValueError, match="offboard_agent"):
        await run(engine, lambda c: ag.set_agent_state(c, SEALER, "ag-1", "offboarded", at(3)))  # type: ignore[arg-type]
    await run(
        engine,
        lambda c: ag.offboard_agent(c, SEALER, "ag-1", reason="r", revoked_by="a", now=at(3)),
    )
    assert (
        await run(engine, lambda c: ag.set_agent_state(c, SEALER, "ag-1", "active", at(4))) is None
    )
    assert (await run(engine, lambda c: ag.get_agent(c, "ag-1"))).state == "offboarded"
    assert (
        await run(engine, lambda c: ag.set_agent_state(c, SEALER, "nope", "active", at(4))) is None
    )


async def test_touch_moves_last_seen_forward_only(engine: AsyncEngine) -> None:
    await run(engine, new_agent)
    await run(engine, lambda c: ag.touch_agent(c, "ag-1", at(5)))
    await run(engine, lambda c: ag.touch_agent(c, "ag-1", at(2)))
    agent = await run(engine, lambda c: ag.get_agent(c, "ag-1"))
    assert agent.last_seen_at == at(5)
    assert agent.updated_at == T0


async def test_database_checks_refuse_unknown_states_and_kinds(engine: AsyncEngine) -> None:
    await run(engine, new_agent)
    await refused(engine, "UPDATE agents SET state = 'deleted'")
    await refused(
        engine,
        "INSERT INTO revocations (kind, value, reason, revoked_by, revoked_at) "
        "VALUES ('user', 'x', 'r', 'a', :t)",
        t=T0,
    )
    await refused(
        engine,
        "INSERT INTO credentials (jti, kind, agent_id, subject, scope, issued_at, expires_at) "
        "VALUES ('j', 'password', 'ag-1', 'ag-1', '[]', :t, :u)",
        t=T0, u=at(5),
    )  # fmt: skip
    for purpose, state in (("tls-ca", "active"), ("x509-ca", "compromised")):
        await refused(
            engine,
            "INSERT INTO signing_keys (kid, purpose, algorithm, public, private_encrypted, "
            "created_at, active_from, state) VALUES ('k', :p, 'EdDSA', '{}', :b, :t, :t, :s)",
            p=purpose, s=state, b=b"\x01sealed", t=T0,
        )  # fmt: skip
    async with engine.connect() as conn:
        state = (await conn.execute(text("SELECT state FROM agents"))).scalar_one()
    assert state == "active"


# --- runtimes --------------------------------------------------------------------------------


async def test_runtime_upsert_keeps_first_seen_and_its_agent(engine: AsyncEngine) -> None:
    async def setup(conn: AsyncConnection) -> ag.Runtime:
        await new_agent(conn, "ag-1")
        await new_agent(conn, "ag-2")
        await ag.upsert_runtime(
            conn, SEALER, id="rt-1", agent_id="ag-1", platform="k8s", attested_by="join-token",
            now=T0, labels={"node": "n1"},
        )  # fmt: skip
        return await ag.upsert_runtime(
            conn, SEALER, id="rt-1", agent_id="ag-1", platform="k8s", attested_by="kubernetes",
            now=at(10), labels={"node": "n2"}, address="10.0.0.7",
        )  # fmt: skip

    again = await run(engine, setup)
    assert again == ag.Runtime(
        id="rt-1", agent_id="ag-1", platform="k8s", labels={"node": "n2"},
        attested_by="kubernetes", first_seen_at=T0, last_seen_at=at(10), address="10.0.0.7",
    )  # fmt: skip
    with pytest.raises(RuntimeOfAnotherAgent):
        await run(
            engine,
            lambda c: ag.upsert_runtime(
                c, SEALER, id="rt-1", agent_id="ag-2", platform="vm", attested_by="x", now=at(20)
            ),
        )
    assert await run(engine, lambda c: ag.get_runtime(c, "rt-1")) == again
    # Each attestation sealed the row it left: it verifies as it stands.
    assert await run(engine, lambda c: ag.verified_runtime(c, SEALER, "rt-1")) == again
    await run(engine, lambda c: new_runtime(c, "rt-0", "ag-1"))  # seen at T0, before rt-1
    listed = await run(engine, lambda c: ag.list_runtimes(c, "ag-1"))
    assert [r.id for r in listed] == ["rt-1", "rt-0"]
    assert await run(engine, lambda c: ag.list_runtimes(c, "ag-2")) == []
    assert await run(engine, lambda c: ag.get_runtime(c, "nope")) is None


# --- join tokens -----------------------------------------------------------------------------


async def add_token(conn: AsyncConnection, token_id: str, secret: str, **kw: Any) -> ag.JoinToken:
    return await ag.insert_join_token(
        conn, SEALER, id=token_id, token_hash=digest(secret), agent_id=kw.pop("agent_id", "ag-1"),
        now=T0, expires_at=kw.pop("expires_at", at(10)), **kw,
    )  # fmt: skip


async def consume(engine: AsyncEngine, token_id: str, secret: str, rt: str, now: datetime) -> Any:
    return await run(
        engine,
        lambda c: ag.consume_join_token(
            c, SEALER, id=token_id, token_hash=digest(secret), runtime_id=rt, now=now
        ),
    )


async def test_join_token_is_consumed_once_by_its_secret(engine: AsyncEngine) -> None:
    async def setup(conn: AsyncConnection) -> ag.JoinToken:
        await new_agent(conn)
        return await add_token(conn, "jt-1", "s3cret", runtime_labels={"pool": "a"})

    token = await run(engine, setup)
    assert (token.used_at, token.runtime_labels, token.expires_at) == (None, {"pool": "a"}, at(10))
    assert not hasattr(token, "token_hash")
    assert await consume(engine, "jt-1", "wrong", "rt-x", at(1)) is None
    assert await consume(engine, "jt-2", "s3cret", "rt-x", at(1)) is None
    used = await consume(engine, "jt-1", "s3cret", "rt-1", at(2))
    assert (used.used_at, used.used_by_runtime, used.agent_id) == (at(2), "rt-1", "ag-1")
    assert await consume(engine, "jt-1", "s3cret", "rt-2", at(3)) is None
    stored = await run(engine, lambda c: ag.get_join_token(c, "jt-1"))
    assert (stored.used_at, stored.used_by_runtime) == (at(2), "rt-1")
    async with engine.connect() as conn:
        kept = (await conn.execute(select(join_tokens.c.token_hash))).scalar_one()
    assert bytes(kept) == hashlib.sha256(b"s3cret").digest()


async def test_expired_token_or_inactive_agent_consumes_nothing(engine: AsyncEngine) -> None:
    async def setup(conn: AsyncConnection) -> None:
        await new_agent(conn, "ag-1")
        await new_agent(conn, "ag-2")
        await add_token(conn, "jt-1", "a", expires_at=at(10))
        await add_token(conn, "jt-2", "b", agent_id="ag-2")
        await ag.set_agent_state(conn, SEALER, "ag-2", "disabled", at(1))

    await run(engine, setup)
    assert await consume(engine, "jt-1", "a", "rt-1", at(10)) is None  # expiry is exclusive
    assert await consume(engine, "jt-2", "b", "rt-1", at(2)) is None
    await run(engine, lambda c: ag.set_agent_state(c, SEALER, "ag-2", "active", at(3)))
    assert await consume(engine, "jt-2", "b", "rt-1", at(4)) is not None
    with pytest.raises(AgentNotActive):
        await run(engine, lambda c: add_token(c, "jt-3", "c", agent_id="nope"))


async def test_token_hash_is_unique_and_a_digest(engine: AsyncEngine) -> None:
    async def setup(conn: AsyncConnection) -> None:
        await new_agent(conn)
        await add_token(conn, "jt-1", "same")

    await run(engine, setup)
    with pytest.raises(IntegrityError):
        await run(engine, lambda c: add_token(c, "jt-2", "same"))
    with pytest.raises(IntegrityError):  # a raw secret where its hash belongs
        await run(
            engine,
            lambda c: ag.insert_join_token(
                c,
                SEALER,
                id="jt-3",
                token_hash=b"raw-secret",
                agent_id="ag-1",
                now=T0,
                expires_at=at(1),
            ),
        )


async def test_concurrent_consumers_have_exactly_one_winner(store_url: str) -> None:
    store = await Store.open(store_url)
    await run(store.engine, lambda c: new_agent(c))
    await run(store.engine, lambda c: add_token(c, "jt-race", "s"))
    await store.close()
    racers = 20
    # Its own pool, large enough that every consumer holds a connection at the barrier.
    engine = create_async_engine(store_url, pool_size=racers, max_overflow=0)
    barrier = asyncio.Barrier(racers)

    async def consumer(n: int) -> ag.JoinToken | None:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT 1"))
            await barrier.wait()
            return await ag.consume_join_token(
                conn, SEALER, id="jt-race", token_hash=digest("s"), runtime_id=f"rt-{n}", now=at(1)
            )

    try:
        results = await asyncio.gather(*(consumer(n) for n in range(racers)))
        winners = [r for r in results if r is not None]
        stored = await run(engine, lambda c: ag.get_join_token(c, "jt-race"))
    finally:
        await engine.dispose()
    assert len(winners) == 1
    assert stored.used_by_runtime == winners[0].used_by_runtime


# --- credentials -----------------------------------------------------------------------------


def credential(jti: str, **kw: Any) -> cr.Credential:
    fields: dict[str, Any] = {
        "kind": "access_token", "agent_id": "ag-1", "subject": "ag-1", "scope": ("api/*",),
        "issued_at": T0, "expires_at": at(15), "runtime_id": "rt-1", "task_id": "task-1",
        "key_thumbprint": "jkt-1",
    }  # fmt: skip
    return cr.Credential(jti=jti, **(fields | kw))


async def test_credentials_record_runtime_and_list_by_each_id(engine: AsyncEngine) -> None:
    delegated = credential(
        "j2", subject="user:carol", actor_chain=("ag-1", "ag-0"), scope=("a", "b"), expires_at=at(5)
    )
    cert = credential(
        "j3", kind="ssh_certificate", serial="17", task_id="task-2", issued_at=at(1), scope=()
    )

    async def setup(conn: AsyncConnection) -> None:
        await new_agent(conn)
        await new_runtime(conn, "rt-1")
        await new_runtime(conn, "rt-2")
        for c in (credential("j1"), delegated, cert, credential("j4", runtime_id="rt-2")):
            await cr.insert_credential(conn, SEALER, c)

    await run(engine, setup)
    async with engine.connect() as conn:

        async def jtis(**filters: Any) -> list[str]:
            return [c.jti for c in await cr.list_credentials(conn, **filters)]

        assert await jtis(agent_id="ag-1") == ["j1", "j2", "j4", "j3"]
        assert await jtis(task_id="task-2") == ["j3"]
        assert await jtis(runtime_id="rt-2") == ["j4"]
        assert await jtis(task_id="task-1", runtime_id="rt-1") == ["j1", "j2"]
        assert await jtis(agent_id="ag-1", live_at=at(5)) == ["j1", "j4", "j3"]
        by_jti = {c.jti: c for c in await cr.list_credentials(conn, agent_id="ag-1")}
        nulls = await conn.execute(text("SELECT jti FROM credentials WHERE actor_chain IS NULL"))
        null_chain = sorted(nulls.scalars())
        with pytest.raises(ValueError, match="needs an agent_id"):
            await cr.list_credentials(conn)
    assert by_jti["j2"] == delegated
    assert by_jti["j3"] == cert
    assert null_chain == ["j1", "j3", "j4"]  # None is SQL NULL, not JSON null


async def test_credential_rules_hold_in_the_database(engine: AsyncEngine) -> None:
    async def setup(conn: AsyncConnection) -> None:
        await new_agent(conn, "ag-1")
        await new_agent(conn, "ag-2")
        await new_runtime(conn, "rt-1", agent_id="ag-1")
        await new_runtime(conn, "rt-2", agent_id="ag-2")
        await cr.insert_credential(
            conn, SEALER, credential("j1", kind="x509_certificate", serial="9")
        )

    async def insert(c: cr.Credential) -> None:
        await run(engine, lambda conn: cr.insert_credential(conn, SEALER, c))

    await run(engine, setup)
    with pytest.raises(IntegrityError):  # rt-2 is ag-2's runtime, not ag-1's
        await insert(credential("j2", runtime_id="rt-2"))
    with pytest.raises(IntegrityError):  # serials are unique per kind
        await insert(credential("j3", kind="x509_certificate", serial="9"))
    await insert(credential("j4", kind="ssh_certificate", serial="9"))
    with pytest.raises(IntegrityError):
        await insert(credential("j5", expires_at=T0))
    with pytest.raises(IntegrityError):
        await insert(credential("j1"))
    await run(engine, lambda c: ag.set_agent_state(c, SEALER, "ag-1", "disabled", at(1)))
    with pytest.raises(AgentNotActive):
        await insert(credential("j6"))
    with pytest.raises(AgentNotActive):
        await insert(credential("j7", agent_id="nope", runtime_id=None))
    listed = await run(engine, lambda c: cr.list_credentials(c, agent_id="ag-1"))
    assert [c.jti for c in listed] == ["j1", "j4"]


# --- revocations -----------------------------------------------------------------------------


async def revoke(engine: AsyncEngine, kind: Any, value: str, **kw: Any) -> Any:
    return await run(
        engine,
        lambda c: cr.insert_revocation(
            c, SEALER, kind=kind, value=value, reason=kw.pop("reason", "leak"),
            revoked_by="admin", now=kw.pop("now", T0), **kw,
        ),
    )  # fmt: skip


async def ledger_holds(engine: AsyncEngine) -> bool:
    """Whether every revocation present is exactly what the sealed ledger accounts for."""
    async with engine.connect() as conn:
        read = await cr.read_revocations(conn, 0)
    held = rl.verified(SEALER, read.ledger)
    return isinstance(held, rl.Ledger) and rl.matches(SEALER, held, read.rows)


@pytest.fixture
async def ledgered(engine: AsyncEngine) -> AsyncEngine:
    """The store with its empty ledger, as a node's first start makes it."""
    await run(engine, lambda c: rl.create_if_absent(c, SEALER))
    return engine


async def test_revocations_are_idempotent_and_polled_by_id(ledgered: AsyncEngine) -> None:
    engine = ledgered
    assert await ledger_holds(engine)  # empty
    first, created = await revoke(engine, "token", "j1", expires_at=at(15))
    assert created
    again, created_again = await revoke(engine, "token", "j1", reason="other", now=at(1))
    assert not created_again
    assert again == first == cr.Revocation(
        id=first.id, kind="token", value="j1", reason="leak", revoked_by="admin",
        revoked_at=T0, expires_at=at(15),
    )  # fmt: skip
    task, _ = await revoke(engine, "task", "task-1")
    assert await ledger_holds(engine)
    async with engine.connect() as conn:
        read = await cr.read_revocations(conn, 0)
        assert [e.value for e in read.entries] == ["j1", "task-1"]
        assert read.cursor == task.id > first.id
        after = await cr.read_revocations(conn, read.cursor)
        assert (after.entries, after.cursor, after.ledger) == ((), task.id, read.ledger)
        assert (await cr.read_revocations(conn, first.id)).entries == (task,)
        assert await cr.is_revoked(conn, "token", "j1")
        assert await cr.is_revoked(conn, "task", "task-1")
        assert not await cr.is_revoked(conn, "agent", "j1")
        assert not await cr.is_revoked(conn, "token", "j2")
    held = rl.verified(SEALER, read.ledger)
    assert isinstance(held, rl.Ledger) and held.entries == 2
    empty = rl.Ledger()
    assert rl.continues(SEALER, empty, read.rows, held)
    assert not rl.continues(SEALER, empty, read.rows[:1], held)  # one row missing


async def test_pruning_drops_expired_entries_and_ids_never_go_back(ledgered: AsyncEngine) -> None:
    engine = ledgered
    await revoke(engine, "agent", "ag-1")  # never expires
    await revoke(engine, "token", "j1", expires_at=at(5))
    newest, _ = await revoke(engine, "token", "j2", expires_at=at(10))
    assert await run(engine, lambda c: cr.prune_revocations(c, SEALER, at(10))) == 2
    assert await ledger_holds(engine)  # the prune is accounted for
    async with engine.connect() as conn:
        assert not await cr.is_revoked(conn, "token", "j2")
        assert await cr.is_revoked(conn, "agent", "ag-1")
    # The newest row was pruned: a poller at its id must still see what comes next.
    later, _ = await revoke(engine, "runtime", "rt-9")
    assert later.id > newest.id
    read = await run(engine, lambda c: cr.read_revocations(c, newest.id))
    assert [e.value for e in read.entries] == ["rt-9"]
    assert await ledger_holds(engine)


@pytest.mark.parametrize(
    "change",
    [
        "DELETE FROM revocations WHERE value = 'j1'",
        "UPDATE revocations SET value = 'j9' WHERE value = 'j1'",
        "UPDATE revocations SET expires_at = NULL WHERE value = 'j1'",
        "INSERT INTO revocations (kind, value, reason, revoked_by, revoked_at) "
        "VALUES ('task', 't', 'r', 'x', '2026-01-01 00:00:00+00:00')",
        "UPDATE revocation_ledger SET entries = 1",
        "UPDATE revocation_ledger SET seal = 'AAAA'",
        "DELETE FROM revocation_ledger",
    ],
    ids=["deleted", "changed", "expiry", "planted", "ledger-count", "ledger-seal", "no-ledger"],
)
async def test_a_revocation_changed_outside_tether_breaks_the_ledger(
    ledgered: AsyncEngine, change: str
) -> None:
    engine = ledgered
    await revoke(engine, "token", "j1", expires_at=at(15))
    await revoke(engine, "agent", "ag-1")
    assert await ledger_holds(engine)
    await exec_sql(engine, change)
    assert not await ledger_holds(engine)
    # Neither a revocation nor a prune seals the broken ledger again.
    await revoke(engine, "task", "task-2")
    assert await run(engine, lambda c: cr.prune_revocations(c, SEALER, at(99))) == 0
    assert not await ledger_holds(engine)


async def test_revocation_writers_commit_in_id_order(ledgered: AsyncEngine) -> None:
    """A poller keeping the highest id it saw never skips an entry committed later."""
    engine = ledgered
    async with engine.begin() as conn:
        first, _ = await cr.insert_revocation(
            conn, SEALER, kind="token", value="a", reason="r", revoked_by="x", now=T0
        )
        second = asyncio.create_task(revoke(engine, "token", "b"))
        await asyncio.sleep(0.3)
        assert not second.done()  # waits for the first writer to commit
        seen = await run(engine, lambda c: cr.read_revocations(c, 0))
        assert seen.entries == ()
    (later, _) = await second
    assert later.id > first.id
    assert await ledger_holds(engine)


# --- offboarding -----------------------------------------------------------------------------


async def test_offboarding_revokes_and_expires_unused_join_tokens(engine: AsyncEngine) -> None:
    async def setup(conn: AsyncConnection) -> None:
        await new_agent(conn, "ag-1")
        await new_agent(conn, "ag-2")
        await add_token(conn, "live", "l", expires_at=at(60))
        await add_token(conn, "stale", "s", expires_at=at(1))
        await add_token(conn, "used", "u", expires_at=at(60))
        await add_token(conn, "other", "o", agent_id="ag-2", expires_at=at(60))
        await ag.consume_join_token(
            conn, SEALER, id="used", token_hash=digest("u"), runtime_id="r", now=T0
        )

    await run(engine, setup)
    done = await run(
        engine,
        lambda c: ag.offboard_agent(c, SEALER, "ag-1", reason="left", revoked_by="bob", now=at(5)),
    )
    assert done.agent.state == "offboarded"
    assert (done.revocation.kind, done.revocation.value) == ("agent", "ag-1")
    assert done.revocation.expires_at is None
    assert done.expired_join_tokens == 1
    async with engine.connect() as conn:
        assert await cr.is_revoked(conn, "agent", "ag-1")
        assert (await ag.get_join_token(conn, "live")).expires_at == at(5)  # type: ignore[union-attr]
        assert (await ag.get_join_token(conn, "stale")).expires_at == at(1)  # type: ignore[union-attr]
        assert (await ag.get_join_token(conn, "used")).used_at == T0  # type: ignore[union-attr]
        assert (await ag.get_join_token(conn, "other")).expires_at == at(60)  # type: ignore[union-attr]
    with pytest.raises(AgentNotActive):
        await run(
            engine, lambda c: cr.insert_credential(c, SEALER, credential("j", runtime_id=None))
        )
    again = await run(
        engine,
        lambda c: ag.offboard_agent(c, SEALER, "ag-1", reason="x", revoked_by="y", now=at(6)),
    )
    assert again.revocation == done.revocation
    gone = await run(
        engine,
        lambda c: ag.offboard_agent(c, SEALER, "nope", reason="x", revoked_by="y", now=at(6)),
    )
    assert gone is None
    assert not await run(engine, lambda c: cr.is_revoked(c, "agent", "nope"))


async def test_offboarding_is_all_or_nothing(engine: AsyncEngine) -> None:
    async def setup(conn: AsyncConnection) -> None:
        await new_agent(conn)
        await add_token(conn, "live", "l", expires_at=at(60))

    await run(engine, setup)

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with engine.begin() as conn:
            await ag.offboard_agent(conn, SEALER, "ag-1", reason="r", revoked_by="a", now=at(5))
            raise Abort
    async with engine.connect() as conn:
        assert (await ag.get_agent(conn, "ag-1")).state == "active"  # type: ignore[union-attr]
        assert not await cr.is_revoked(conn, "agent", "ag-1")
        assert (await ag.get_join_token(conn, "live")).expires_at == at(60)  # type: ignore[union-attr]


# --- signing keys and admin tokens -----------------------------------------------------------


def key(kid: str, purpose: Any = "access-token", **kw: Any) -> ks.StoredKey:
    return ks.StoredKey(
        kid=kid, purpose=purpose, algorithm="EdDSA", public='{"kty":"OKP"}',
        private_encrypted=b"\x01" + kid.encode(), created_at=T0,
        active_from=kw.pop("active_from", T0), **kw,
    )  # fmt: skip


async def test_signing_keys_one_active_per_purpose_and_rotation(engine: AsyncEngine) -> None:
    await run(engine, lambda c: ks.insert_signing_key(c, SEALER, key("k1")))
    await run(engine, lambda c: ks.insert_signing_key(c, SEALER, key("s1", "ssh-user-ca")))
    with pytest.raises(IntegrityError):
        await run(engine, lambda c: ks.insert_signing_key(c, SEALER, key("k2")))
    demoted = await run(
        engine, lambda c: ks.rotate_signing_key(c, SEALER, key("k2", active_from=at(1)), at(30))
    )
    assert demoted == ["k1"]
    async with engine.connect() as conn:
        listed = await ks.list_signing_keys(conn, "access-token")
        active = await ks.list_signing_keys(conn, "access-token", states=["active"])
        sealed = await ks.sealed_signing_keys(conn, SEALER, "access-token")
    assert [(k.kid, k.state, k.retire_after) for k in listed] == [
        ("k2", "active", None), ("k1", "previous", at(30))
    ]  # fmt: skip
    assert sealed == ks.SigningKeys(listed, [])  # the demotion sealed the row again
    assert active == [key("k2", active_from=at(1))]
    assert listed[0].private_encrypted == b"\x01k2"
    assert "private_encrypted" not in repr(listed[0])
    retired = await run(engine, lambda c: ks.set_signing_key_state(c, SEALER, "k1", "retired"))
    assert retired.state == "retired"
    assert await run(engine, lambda c: ks.set_signing_key_state(c, SEALER, "k1", "active")) is None
    async with engine.connect() as conn:
        sealed = await ks.sealed_signing_keys(conn, SEALER, "access-token", ["retired"])
    assert [k.kid for k in sealed.admitted] == ["k1"]


@pytest.mark.parametrize(
    ("column", "value"),
    [("retire_after", at(3600)), ("state", "active"), ("seal", None), ("seal", "x" * 43)],
)
async def test_signing_key_rows_changed_outside_tether_are_refused(
    engine: AsyncEngine, column: str, value: Any
) -> None:
    """Migration 0020: a previous key's state or window changed in the database (or its seal
    removed, or made up) no longer counts; rotating away from it retires it, not seals it."""
    await run(engine, lambda c: ks.insert_signing_key(c, SEALER, key("k1")))
    await run(
        engine, lambda c: ks.rotate_signing_key(c, SEALER, key("k2", active_from=at(1)), at(30))
    )
    if column == "state":  # the genuine active key moved aside to make room
        await exec_sql(engine, "UPDATE signing_keys SET state = 'previous' WHERE kid = 'k2'")
    await exec_sql(engine, f"UPDATE signing_keys SET {column} = :v WHERE kid = 'k1'", v=value)
    async with engine.connect() as conn:
        sealed = await ks.sealed_signing_keys(conn, SEALER, "access-token")
    assert "k1" in [k.kid for k in sealed.refused]
    assert "k1" not in [k.kid for k in sealed.admitted]
    if column == "state":
        return
    other = RowSealer(MasterKey(bytes(range(1, 33)), "test"))  # another node's master key
    async with engine.connect() as conn:
        assert (await ks.sealed_signing_keys(conn, other, "access-token")).admitted == []
    await run(
        engine, lambda c: ks.rotate_signing_key(c, SEALER, key("k3", active_from=at(2)), at(40))
    )
    await run(engine, lambda c: ks.set_signing_key_state(c, SEALER, "k1", "previous", at(99)))
    async with engine.connect() as conn:
        sealed = await ks.sealed_signing_keys(conn, SEALER, "access-token")
    assert [k.kid for k in sealed.admitted] == ["k3", "k2"]  # k2 demoted and sealed again
    assert [(k.kid, k.retire_after) for k in sealed.refused] == [("k1", at(99))]


@pytest.mark.parametrize(
    "plaintext",
    [b"-----BEGIN PRIVATE KEY-----\n", b"openssh-key-v1\x00", b' {"kty":"OKP","d":"x"}'],
)
async def test_plaintext_private_keys_are_refused(engine: AsyncEngine, plaintext: bytes) -> None:
    leaked = ks.StoredKey(
        kid="k", purpose="x509-ca", algorithm="EdDSA", public="pem", private_encrypted=plaintext,
        created_at=T0, active_from=T0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="not encrypted"):
        await run(engine, lambda c: ks.insert_signing_key(c, SEALER, leaked))
    assert await run(engine, lambda c: ks.list_signing_keys(c, "x509-ca")) == []


async def test_admin_tokens_found_by_hash_only_while_usable(engine: AsyncEngine) -> None:
    async def setup(conn: AsyncConnection) -> None:
        await ks.insert_admin_token(
            conn, SEALER, id="a1", name="ops", token_hash=digest("one"), now=T0
        )
        await ks.insert_admin_token(
            conn, SEALER, id="a2", name="ci", token_hash=digest("two"), now=at(1), expires_at=at(10)
        )

    await run(engine, setup)
    async with engine.connect() as conn:
        found = await ks.find_admin_token(conn, SEALER, digest("one"), at(100))
        assert await ks.find_admin_token(conn, SEALER, digest("three"), at(1)) is None
        assert (await ks.find_admin_token(conn, SEALER, digest("two"), at(9))) is not None
        assert await ks.find_admin_token(conn, SEALER, digest("two"), at(10)) is None
    assert found == ks.AdminToken("a1", "ops", T0, None, None, None)
    await run(engine, lambda c: ks.touch_admin_token(c, "a1", at(7)))
    await run(engine, lambda c: ks.touch_admin_token(c, "a1", at(3)))
    assert await run(engine, lambda c: ks.revoke_admin_token(c, SEALER, "a1", at(8)))
    assert not await run(engine, lambda c: ks.revoke_admin_token(c, SEALER, "a1", at(9)))
    assert not await run(engine, lambda c: ks.revoke_admin_token(c, SEALER, "nope", at(9)))
    async with engine.connect() as conn:
        assert await ks.find_admin_token(conn, SEALER, digest("one"), at(9)) is None
        listed = await ks.list_admin_tokens(conn)
    assert [(t.id, t.last_used_at, t.revoked_at) for t in listed] == [
        ("a1", at(7), at(8)), ("a2", None, None)
    ]  # fmt: skip
    with pytest.raises(IntegrityError):
        await run(
            engine,
            lambda c: ks.insert_admin_token(
                c, SEALER, id="a3", name="x", token_hash=digest("one"), now=T0
            ),
        )
    with pytest.raises(IntegrityError):
        await run(
            engine,
            lambda c: ks.insert_admin_token(
                c, SEALER, id="a4", name="x", token_hash=b"short", now=T0
            ),
        )


# --- time ------------------------------------------------------------------------------------


async def test_times_round_trip_as_aware_utc_whatever_zone_was_written(
    engine: AsyncEngine,
) -> None:
    plus5 = timezone(timedelta(hours=5))
    expiry_in_plus5 = at(10).astimezone(plus5)  # 17:10+05:00, the same instant as 12:10Z

    async def setup(conn: AsyncConnection) -> None:
        await ag.create_agent(conn, SEALER, id="ag-1", owner="o", now=T0.astimezone(plus5))
        await ag.insert_join_token(
            conn, SEALER, id="jt", token_hash=digest("s"), agent_id="ag-1", now=T0,
            expires_at=expiry_in_plus5,
        )  # fmt: skip

    await run(engine, setup)
    agent = await run(engine, lambda c: ag.get_agent(c, "ag-1"))
    assert agent.created_at == T0
    assert agent.created_at.utcoffset() == timedelta(0)
    # Compared in SQL as instants, not as wall-clock text: still valid at 12:09Z.
    assert await consume(engine, "jt", "s", "rt", at(9)) is not None
    token = await run(engine, lambda c: ag.get_join_token(c, "jt"))
    assert token.expires_at == at(10)
    assert token.expires_at.tzinfo is not None
    assert token.expires_at.utcoffset() == timedelta(0)


async def test_naive_times_are_refused(engine: AsyncEngine) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        await run(
            engine,
            lambda c: ag.create_agent(c, SEALER, id="ag", owner="o", now=datetime(2026, 1, 1)),
        )
    assert await run(engine, lambda c: ag.list_agents(c)) == []


def test_digest_is_the_sha256_of_the_secret() -> None:
    assert digest("abc") == digest(b"abc") == hashlib.sha256(b"abc").digest()
    assert len(digest("")) == 32


# --- the test server itself (tests/pg.py) ----------------------------------------------------


async def test_session_database_is_on_loopback_behind_a_password(pg_url: str) -> None:
    engine = create_async_engine(pg_url)
    wrong = create_async_engine(make_url(pg_url).set(password="not-the-password"))
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT current_database(), inet_server_addr()"))).one()
        with pytest.raises(DBAPIError, match="password authentication failed"):
            async with wrong.connect():
                pass
    finally:
        await engine.dispose()
        await wrong.dispose()
    assert (row[0], str(row[1])) == ("tether_test", "127.0.0.1")


def test_missing_binaries_fail_with_the_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(pg, "DEBIAN_BIN_DIRS", tmp_path)
    with pytest.raises(pg.PostgresUnavailable, match="install the Debian package `postgresql`"):
        pg.find_bin_dir()


def test_the_newest_debian_version_is_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in ("9.6", "15", "13", "16"):
        bin_dir = tmp_path / version / "bin"
        bin_dir.mkdir(parents=True)
        for name in ("initdb", "pg_ctl") if version != "16" else ("initdb",):
            (bin_dir / name).write_text("#!/bin/sh\n")
            (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(pg, "DEBIAN_BIN_DIRS", tmp_path)
    assert pg.find_bin_dir() == tmp_path / "15" / "bin"  # 16 lacks pg_ctl
