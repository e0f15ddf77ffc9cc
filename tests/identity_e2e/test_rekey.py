"""Rotating the master key (tether.store.rekey), on SQLite and PostgreSQL: a database with a
row in every table under the key (signing keys, agents, join tokens, runtimes, issued
credentials, revocations and their ledger, a vault secret, a target, a user with TOTP, an
access request and its vote) works under the new key and no longer under the old one; a row
refused before is refused after (never blessed), one without a seal stays without; a
ciphertext that opens under neither key changes nothing; and a second run finishes an
interrupted one without moving anything twice."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text

from tests.identity_e2e.conftest import Agent, Stack, build_service
from tether.approvals import store as approval_store
from tether.crypto.envelope import DecryptionError, EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity.exchange import ExchangeError
from tether.identity.keystore import KeysUnverified
from tether.store import integrity
from tether.store.agents import AgentUnverified
from tether.store.rekey import RekeyRefused, rekey
from tether.users.schema import users
from tether.users.service import UserService
from tether.users.store import TOTP_PURPOSE
from tether.vault.secrets import SecretStore
from tether.vault.targets import TargetStore

HTTP = {"base_url": "https://api.example.com", "credential": {"type": "bearer", "secret": "k"}}


def _cipher() -> EnvelopeCipher:
    return EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))


async def _fill(stack: Stack, bot: Agent) -> dict[str, Any]:
    """A row in every table under the master key; what to find again."""
    assert bot.claims is not None
    cipher = stack.cipher
    await stack.service.revoke("task", "T-gone", reason="done", by="admin")
    await SecretStore(stack.engine, cipher, clock=stack.clock).put("api/key", b"s3cret")
    await TargetStore(stack.engine, cipher.sealer, clock=stack.clock).add("api", "http", HTTP)
    users_service = UserService(stack.engine, cipher, clock=stack.clock)
    await users_service.add("alice", password=None, roles=["approver"])
    totp = await users_service.enroll_totp("alice")
    now = stack.clock()
    request = {
        "id": "req-1", "agent_id": "bot", "runtime_id": None, "task_id": "T-1",
        "delegation_user": None, "delegation_chain": None, "owner": None, "reason": None,
        "target": "api", "kind": "http",
        "action": {"method": "GET"}, "digest": "d" * 64, "rule_id": "r", "scope": "action",
        "required": 1, "approvers": ["approver"], "allow_self": False, "valid_for": 60,
        "status": "pending", "pending_key": "k" * 64, "requested_at": now,
        "expires_at": now + timedelta(minutes=5), "revision": 0, "updated_at": now,
    }  # fmt: skip
    async with stack.engine.begin() as conn:
        await approval_store.insert_pending(conn, cipher.sealer, request)
        await approval_store.insert_vote(conn, cipher.sealer, "req-1", "alice", "approve", None,
                                         now)  # fmt: skip
    return {"totp": totp}


@pytest.mark.parametrize("page", [None, 1], ids=["pages-of-1000", "pages-of-1"])
async def test_everything_moves_to_the_new_key(
    stack: Stack, bot: Agent, page: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if page is not None:  # every table read a row at a time: the paging itself is tested
        monkeypatch.setattr(integrity.pages, "__kwdefaults__", {"size": page})
    found = await _fill(stack, bot)
    other = await stack.new_agent("other")
    # Refused before (a planted owner) and not sealed (as if from before the seals): kept so.
    await _sql(stack, "UPDATE agents SET owner = 'eve' WHERE id = 'other'")
    await _sql(stack, "UPDATE targets SET seal = NULL WHERE name = 'api'")
    old, new = stack.cipher, _cipher()

    report = await rekey(stack.engine, old, new)
    moved = ("signing_keys", "vault_secrets", "users", "agents", "join_tokens", "runtimes",
             "credentials", "access_requests", "approval_votes", "revocation_ledger")  # fmt: skip
    for table in moved:
        assert report.moved.get(table, 0) >= 1, (table, report)
    assert report.already == {}
    assert sorted(report.left) == [
        f"agents {other.id} (its seal does not verify)",
        "targets api (no seal)",
    ]

    # The new key opens everything; the same signing keys sign and verify as before.
    stack.cipher = new
    stack.service = await build_service(stack.store, stack.clock, new)
    await stack.present(bot)
    assert await SecretStore(stack.engine, new).get("api/key") == b"s3cret"
    async with stack.engine.connect() as conn:
        sealed_totp = (await conn.execute(select(users.c.totp_secret))).scalar_one()
        request = await approval_store.load(conn, "req-1", new.sealer)
    assert (
        new.decrypt_text(sealed_totp, purpose=TOTP_PURPOSE, name="alice").decode() == found["totp"]
    )
    assert (await UserService(stack.engine, new).get("alice")).roles == frozenset({"approver"})
    assert request is not None and request.id == "req-1"
    with pytest.raises(ExchangeError, match="the task is revoked"):  # the ledger verifies
        await stack.join(await stack.new_agent("late"), task="T-gone")
    with pytest.raises(AgentUnverified):  # the planted owner is still refused
        await stack.service.set_agent_state(other.id, "active")
    # The old key opens nothing any more.
    with pytest.raises((KeysUnverified, DecryptionError)):
        await build_service(stack.store, stack.clock, old)

    again = await rekey(stack.engine, old, new)  # an interrupted run, finished: nothing moves
    assert again.moved == {}
    for table, count in report.moved.items():  # (and the rows made since under the new key)
        assert again.already[table] >= count, table
    assert sorted(again.left) == sorted(report.left)


async def test_a_ciphertext_that_opens_under_neither_key_changes_nothing(
    stack: Stack, bot: Agent
) -> None:
    await _fill(stack, bot)
    other = _cipher()
    await SecretStore(stack.engine, other).put("stray", b"x")  # under some third key
    with pytest.raises(RekeyRefused) as refused:
        await rekey(stack.engine, stack.cipher, _cipher())
    assert [line.split(":")[0] for line in refused.value.failures] == ["vault_secrets stray"]
    assert "encrypted under another master key" in refused.value.failures[0]
    stack.service = await build_service(stack.store, stack.clock, stack.cipher)
    await stack.present(bot)  # still under the old key, every row of it
    assert await SecretStore(stack.engine, stack.cipher).get("api/key") == b"s3cret"


async def test_the_new_key_must_differ(stack: Stack) -> None:
    with pytest.raises(ValueError, match="the new master key is the current one"):
        await rekey(stack.engine, stack.cipher, stack.cipher)


async def _sql(stack: Stack, statement: str) -> None:
    async with stack.engine.begin() as conn:
        await conn.execute(text(statement))
