"""An admin token or a personal token revoked, then its row written back as it was (live,
its seal Tether's), on SQLite and PostgreSQL (docs/vault.md, "Tampering with the
database"). The row alone verifies: without the revocation list the token works again (the
controls). The revocation is also in the revocation list, so a node that polled it refuses
the token, and one restarted with its copy after the whole database was put back too."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, select, update

from tests.identity_e2e.conftest import Stack, build_service
from tests.identity_e2e.test_revocation_copy import _put_back, _snapshot
from tether.identity.admintokens import create_admin_token, find_admin_token
from tether.identity.revocation_copy import RevocationCopy
from tether.store import keys as key_store
from tether.store.schema import admin_tokens
from tether.users.schema import user_tokens
from tether.users.service import UserService


async def _row(stack: Stack, table: Table, key: str) -> dict[str, Any]:
    async with stack.engine.connect() as conn:
        return dict((await conn.execute(select(table).where(table.c.id == key))).mappings().one())


async def _write_back(stack: Stack, table: Table, row: dict[str, Any]) -> None:
    async with stack.engine.begin() as conn:
        await conn.execute(update(table).where(table.c.id == row["id"]).values(row))


async def test_an_admin_token_put_back_live_stays_refused(
    stack: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy = tmp_path / "revocations.json"
    stack.service = node = await build_service(
        stack.store, stack.clock, stack.cipher, revocation_copy=RevocationCopy(copy)
    )
    text, record = await create_admin_token(
        stack.engine, node.sealer, name="ops", now=stack.clock()
    )
    live, before = await _row(stack, admin_tokens, record.id), await _snapshot(stack)
    async with stack.engine.begin() as conn:
        assert await key_store.revoke_admin_token(conn, node.sealer, record.id, stack.clock())
    await node.refresh_revocations()  # the node's poll
    await _write_back(stack, admin_tokens, live)

    async def found(revoked: Any) -> bool:
        token = await find_admin_token(
            stack.engine, node.sealer, text, now=stack.clock(), revoked=revoked
        )
        return token is not None

    assert await found(None)  # the control: the row alone verifies
    with caplog.at_level(logging.ERROR, "tether.identity.admintokens"):
        assert not await found(node.revoked)
    assert f"admin token {record.id!r} refused: it is revoked, but its row is live" in caplog.text

    # The whole database put back (the revocation gone too): the node's copy still holds it.
    await _put_back(stack, before)
    restarted = await build_service(
        stack.store, stack.clock, stack.cipher, revocation_copy=RevocationCopy(copy)
    )
    assert not await found(restarted.revoked)
    assert restarted.revocations_missing == 1


async def test_a_personal_token_put_back_live_stays_refused(stack: Stack) -> None:
    node = stack.service
    users = UserService(stack.engine, stack.cipher, clock=stack.clock, sealer=node.sealer,
                        revoked=node.revoked)  # fmt: skip
    unaware = UserService(stack.engine, stack.cipher, clock=stack.clock)
    await users.add("ann", password="correct horse battery")
    text, record = await users.create_token("ann", name="laptop")
    live = await _row(stack, user_tokens, record.id)
    assert await users.revoke_token(record.id)
    await node.refresh_revocations()
    await _write_back(stack, user_tokens, live)
    assert await unaware.authenticate(text) is not None  # the control
    assert await users.authenticate(text) is None
    # Disabling the user revokes the rest the same way.
    other, second = await users.create_token("ann", name="phone")
    live = await _row(stack, user_tokens, second.id)
    await users.disable("ann", by="admin")
    await users.set_state("ann", "active")
    await node.refresh_revocations()
    await _write_back(stack, user_tokens, live)
    assert await unaware.authenticate(other) is not None
    assert await users.authenticate(other) is None
