"""An access-token signing key rotated out (because it leaked, say), then the key table put
back as it was before the rotation, on SQLite and PostgreSQL (migration 0024,
tether.crypto.revisions; docs/vault.md, "Tampering with the database"). The earlier rows'
seals verify: a node that never saw the rotation starts and signs with the old key again
(the control). A node that saw it refuses the old key's row, older than the one it
admitted, and does not start on it (``KeysUnverified``); retiring the row is the way back."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from tests.identity_e2e.conftest import Stack, build_service
from tether.crypto.revisions import RowRevisions
from tether.identity.keystore import KeysUnverified
from tether.identity.revision_copy import RevisionCopy, read_marks
from tether.store.schema import signing_keys


async def _keys(stack: Stack) -> list[dict[str, Any]]:
    async with stack.engine.connect() as conn:
        query = select(signing_keys).where(signing_keys.c.purpose == "access-token")
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def _put_back(stack: Stack, rows: list[dict[str, Any]]) -> None:
    """The access-token keys as they were: the rotation's new key gone, the old one active."""
    kids = [row["kid"] for row in rows]
    async with stack.engine.begin() as conn:
        await conn.execute(
            delete(signing_keys).where(
                signing_keys.c.purpose == "access-token", signing_keys.c.kid.not_in(kids)
            )
        )
        for row in rows:
            await conn.execute(update(signing_keys).where(signing_keys.c.kid == row["kid"])
                               .values(row))  # fmt: skip


async def test_a_key_rotated_out_and_put_back_active_is_refused(
    stack: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "revisions.json"

    async def node(with_file: bool) -> Any:
        copy = RevisionCopy(path, RowRevisions()) if with_file else None
        return await build_service(stack.store, stack.clock, stack.cipher, revision_copy=copy)

    first = await node(with_file=True)
    before = await _keys(stack)
    old = first.keys.ring.active.kid
    new = await first.rotate_keys()
    assert new != old
    marks = {(m.table, m.key): m.revision for m in read_marks(path)}
    assert marks[("signing_keys", old)] == 2 and marks[("signing_keys", new)] == 1
    await _put_back(stack, before)

    # The control: a node that never saw the rotation signs with the old key again.
    assert (await node(with_file=False)).keys.ring.active.kid == old

    with (
        caplog.at_level(logging.ERROR, "tether.crypto.seal"),
        pytest.raises(KeysUnverified, match=f"the active access-token key {old!r} does not"),
    ):
        await node(with_file=True)
    assert (
        f"access-token signing key {old!r} refused: its row is revision 1, older than "
        "revision 2 this node saw" in caplog.text
    )

    # The way back (docs/vault.md): the row retired, the node makes a new key at its start.
    async with stack.engine.begin() as conn:
        await conn.execute(
            update(signing_keys).where(signing_keys.c.kid == old).values(state="retired")
        )
    restarted = await node(with_file=True)
    assert restarted.keys.ring.active.kid not in (old, new)
