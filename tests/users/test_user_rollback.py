"""A user disabled or stripped of a role, then put back as they were (their row, roles and
groups, sealed by Tether then) on SQLite and PostgreSQL (migration 0023,
tether.crypto.revisions; docs/vault.md, "Tampering with the database"). The earlier user's
seal verifies: a node that never saw the later one takes them back (the control). A node
that admitted the later user refuses the older one, running or restarted with its file
(``<data_dir>/revisions.json``): no login, no personal token, no group membership, no
edit; disabling them seals them again, and enabling them afterwards works."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update

from tests.identity_e2e.conftest import Clock
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.crypto.revisions import RowRevisions
from tether.identity.revision_copy import RevisionCopy, read_marks
from tether.store import Store
from tether.users.schema import group_members, user_roles, users
from tether.users.service import LoginRefused, UserError, UserService

PASSWORD = "correct horse battery"
Snapshot = tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]


@pytest.fixture
async def parts(store_url: str) -> AsyncIterator[tuple[Store, EnvelopeCipher, Clock]]:
    store = await Store.open(store_url)
    try:
        yield store, EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test")), Clock()
    finally:
        await store.close()


def _node(parts: tuple[Store, EnvelopeCipher, Clock], path: Path | None) -> UserService:
    """A node's users: its sealer remembers what it admitted, in ``path`` when given."""
    store, cipher, clock = parts
    copy = None if path is None else RevisionCopy(path, RowRevisions())
    if copy is not None:
        copy.hold()
    revisions = RowRevisions() if copy is None else copy.revisions
    return UserService(
        store.engine, cipher, clock=clock, sealer=cipher.sealer.witnessed(revisions),
        save_revisions=None if copy is None else copy.save,
    )  # fmt: skip


async def _snapshot(users_: UserService, user_id: str) -> Snapshot:
    async with users_.engine.connect() as conn:
        row = (await conn.execute(select(users).where(users.c.id == user_id))).mappings().one()
        roles = await conn.execute(select(user_roles).where(user_roles.c.user_id == user_id))
        groups = await conn.execute(select(group_members).where(group_members.c.user_id == user_id))
        return dict(row), [dict(r) for r in roles.mappings()], [dict(g) for g in groups.mappings()]


async def _put_back(users_: UserService, user_id: str, snapshot: Snapshot) -> None:
    row, roles, groups = snapshot
    async with users_.engine.begin() as conn:
        await conn.execute(update(users).where(users.c.id == user_id).values(row))
        await conn.execute(delete(user_roles).where(user_roles.c.user_id == user_id))
        await conn.execute(delete(group_members).where(group_members.c.user_id == user_id))
        if roles:
            await conn.execute(insert(user_roles), roles)
        if groups:
            await conn.execute(insert(group_members), groups)


async def test_a_demoted_user_put_back_stays_refused(
    parts: tuple[Store, EnvelopeCipher, Clock], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "data" / "revisions.json"
    node = _node(parts, path)
    await node.add("ann", password=PASSWORD, roles=["admin", "approver"], groups=["ops"])
    token, _ = await node.create_token("ann", name="laptop")
    admin = await _snapshot(node, "ann")
    assert admin[0]["revision"] == 1
    await node.update("ann", roles=["approver"])  # no longer an admin
    assert [(m.table, m.key, m.revision) for m in read_marks(path)] == [("users", "ann", 2)]
    await _put_back(node, "ann", admin)

    # The control: a node that never saw revision 2 takes the admin back.
    assert (await _node(parts, None).login("ann", PASSWORD)).roles == {"admin", "approver"}

    restarted = _node(parts, path)
    for again in (node, restarted):  # running, and restarted with its file
        caplog.clear()
        with caplog.at_level(logging.ERROR, "tether.crypto.seal"):
            with pytest.raises(LoginRefused):
                await again.login("ann", PASSWORD)
            assert await again.authenticate(token) is None
            assert await again.group_members("ops") == set()
        assert "user 'ann' refused: its row is revision 1, older than revision 2" in caplog.text
    with pytest.raises(UserError, match="is refused"):  # an edit does not bless it
        await restarted.update("ann", roles=["admin"])


async def test_a_disabled_user_put_back_stays_refused_until_disabled_and_enabled(
    parts: tuple[Store, EnvelopeCipher, Clock], tmp_path: Path
) -> None:
    path = tmp_path / "revisions.json"
    node = _node(parts, path)
    await node.add("bob", password=PASSWORD, roles=["approver"])
    active = await _snapshot(node, "bob")
    await node.set_state("bob", "disabled")
    await _put_back(node, "bob", active)
    restarted = _node(parts, path)
    with pytest.raises(LoginRefused):
        await restarted.login("bob", PASSWORD)
    with pytest.raises(UserError, match="is refused"):
        await restarted.set_state("bob", "active")  # an edit does not bless it
    # The way back: disabled (sealed again above both), reviewed, enabled on purpose.
    await restarted.set_state("bob", "disabled")
    enabled = await restarted.set_state("bob", "active")
    assert (enabled.state, enabled.roles) == ("active", {"approver"})
    assert (await restarted.login("bob", PASSWORD)).id == "bob"
    assert [(m.key, m.revision) for m in read_marks(path)] == [("bob", 4)]
