"""Migration 0008 and what a certificate's record keeps of the token it was issued under.

On SQLite and PostgreSQL (``store_url``): the migration adds the context columns, deletes the
never-used ``ssh-target-ca`` signing key, and downgrades; ``credential_record`` keeps the
task purpose, the issuing token and a delegated user's groups; the node's keys no longer
include a target-facing CA.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity.claims import Actor, Claims, Confirmation, Runtime, Task
from tether.identity.issued import credential_record
from tether.identity.keystore import TetherKeys, load_or_create
from tether.store import Store
from tether.store import agents as agent_store
from tether.store.credentials import insert_credential, list_credentials
from tether.store.migrate import alembic_config, upgrade

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
CONTEXT = {"task_purpose", "user_groups", "token_jti"}


def claims(*, delegated: bool) -> Claims:
    return Claims(
        iss="http://tether", aud="tether", sub="alice" if delegated else "bot", jti="tok-1",
        iat=int(NOW.timestamp()), nbf=int(NOW.timestamp()), exp=int(NOW.timestamp()) + 600,
        task=Task("T-1", "month-end close"), scope=("web-*",), runtime=Runtime("rt-1"),
        cnf=Confirmation(jkt="thumb"), act=Actor("bot") if delegated else None,
        agent="bot" if delegated else None, groups=("finance", "ops") if delegated else (),
    )  # fmt: skip


def test_a_certificate_record_keeps_its_token_context() -> None:
    validity = (int(NOW.timestamp()), int(NOW.timestamp()) + 300)
    record = credential_record(
        claims(delegated=True), "ssh_certificate", key_thumbprint="SHA256:k", serial="7",
        validity=validity,
    )  # fmt: skip
    assert (record.jti, record.token_jti, record.task_purpose) == (
        "ssh_certificate:7", "tok-1", "month-end close",
    )  # fmt: skip
    assert (record.subject, record.agent_id, record.actor_chain) == ("alice", "bot", ("bot",))
    assert record.groups == ("finance", "ops")

    own = credential_record(claims(delegated=False), "access_token", key_thumbprint="thumb")
    assert (own.jti, own.token_jti, own.groups, own.task_purpose) == (
        "tok-1", None, None, "month-end close",
    )  # fmt: skip


async def _columns(conn: AsyncConnection) -> set[str]:
    def names(sync: Any) -> set[str]:
        return {c["name"] for c in inspect(sync).get_columns("credentials")}

    return await conn.run_sync(names)


async def test_migration_0008_round_trip(store_url: str) -> None:
    engine = create_async_engine(store_url)
    try:
        await upgrade(engine, "0007")
        async with engine.begin() as conn:
            assert not CONTEXT & await _columns(conn)
            await conn.execute(
                text(
                    "INSERT INTO signing_keys (kid, purpose, algorithm, public, "
                    "private_encrypted, created_at, active_from, state) VALUES "
                    "('ssh-target-ca:old', 'ssh-target-ca', 'ssh-ed25519', 'k', :b, :t, :t, "
                    "'active')"
                ),
                {"b": b"\x01sealed", "t": NOW},
            )
        await upgrade(engine)
        async with engine.begin() as conn:
            assert await _columns(conn) >= CONTEXT
            purposes = await conn.execute(text("SELECT purpose FROM signing_keys"))
            assert "ssh-target-ca" not in {row[0] for row in purposes}
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0007"))
            assert not CONTEXT & await _columns(conn)
    finally:
        await engine.dispose()


async def test_the_context_round_trips_and_no_target_ca_is_made(store_url: str) -> None:
    store = await Store.open(store_url)
    try:
        cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
        await load_or_create(
            store.engine, cipher, clock=lambda: NOW, overlap=60.0, trust_domain="t.test"
        )
        assert set(TetherKeys.__dataclass_fields__) == {"ring", "ssh_user_ca", "x509_ca"}
        validity = (int(NOW.timestamp()), int(NOW.timestamp()) + 300)
        record = credential_record(
            claims(delegated=True), "ssh_certificate", key_thumbprint="SHA256:k", serial="7",
            validity=validity,
        )  # fmt: skip
        record = replace(record, runtime_id=None)  # no runtime row needed here
        async with store.engine.begin() as conn:
            purposes = await conn.execute(text("SELECT purpose FROM signing_keys"))
            assert {row[0] for row in purposes} == {"access-token", "ssh-user-ca", "x509-ca"}
            await agent_store.create_agent(conn, cipher.sealer, id="bot", owner="o", now=NOW)
            await insert_credential(conn, cipher.sealer, record)
            (stored,) = await list_credentials(conn, agent_id="bot")
        assert stored == record
    finally:
        await store.close()
