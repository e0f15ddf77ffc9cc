"""A database put back whole as it was before a revocation, ledger included, on SQLite and
PostgreSQL (docs/vault.md, "Tampering with the database"). The older list verifies against
its older ledger, so the ledger alone cannot tell: a node without its copy takes the stolen
token back (the control, below). A node that restarts with its copy
(``<data_dir>/revocations.json``, tether.identity.revocation_copy) still refuses it, says so
in its log and in ``GET /healthz``, and stops saying so once the revocation is made again; a
running node never forgets it."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select, update

from tests.identity_e2e.conftest import Agent, Stack, build_service
from tether.api import AppState, PolicyHolder, create_app
from tether.identity.errors import TokenRevoked
from tether.identity.revocation_copy import RevocationCopy, read_copy
from tether.identity.service import IdentityService
from tether.policy import load_policies
from tether.store.schema import revocation_ledger, revocations

MISSING = r"(\d+) revocation\(s\) this node holds, still in force, are missing from the database"


async def _node(stack: Stack, copy: Path | None) -> IdentityService:
    """A node as ``tether serve`` builds it: its copy held, then the database read."""
    revocation_copy = None if copy is None else RevocationCopy(copy)
    return await build_service(stack.store, stack.clock, stack.cipher,
                               revocation_copy=revocation_copy)  # fmt: skip


async def _snapshot(stack: Stack) -> tuple[set[int], dict[str, Any]]:
    async with stack.engine.connect() as conn:
        ids = set((await conn.execute(select(revocations.c.id))).scalars())
        ledger = dict((await conn.execute(select(revocation_ledger))).mappings().one())
    return ids, ledger


async def _put_back(stack: Stack, snapshot: tuple[set[int], dict[str, Any]]) -> None:
    """The database as it was at ``snapshot``: the revocations made since gone, the ledger
    row (sealed by Tether, then) as it stood. What restoring a backup does to these tables."""
    ids, ledger = snapshot
    async with stack.engine.begin() as conn:
        await conn.execute(delete(revocations).where(revocations.c.id.not_in(ids or {0})))
        await conn.execute(update(revocation_ledger).values(ledger))


async def test_a_restarted_node_still_refuses_what_a_rollback_forgot(
    stack: Stack, bot: Agent, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert bot.claims is not None
    copy = tmp_path / "data" / "revocations.json"
    node = await _node(stack, copy)
    before = await _snapshot(stack)
    await node.revoke("token", bot.claims.jti, reason="stolen", by="admin")
    assert ("token", bot.claims.jti) in {(h.kind, h.value) for h in read_copy(copy)}
    await _put_back(stack, before)

    # The control: the older list verifies, and a node without its copy takes the token.
    stack.service = await _node(stack, None)
    assert stack.service.revoked.unverified is None
    await stack.present(bot)

    with caplog.at_level(logging.ERROR, "tether.identity.service"):
        stack.service = restarted = await _node(stack, copy)
    with pytest.raises(TokenRevoked, match="the token is revoked"):
        await stack.present(bot)
    reported = re.search(MISSING, caplog.text)
    assert reported is not None, caplog.text
    lost = int(reported.group(1))  # the token, and its renewal family's first token if other
    assert lost >= 1 and restarted.revocations_missing == lost
    assert "(the first: token '" in caplog.text

    # Made again, the revocation is in the database: nothing is missing any more.
    caplog.clear()
    with caplog.at_level(logging.WARNING, "tether.identity.service"):
        for held in restarted.revoked.missing(stack.clock()):
            assert held.kind == "token"
            await restarted.revoke("token", held.value, reason="again", by="admin")
        await restarted.refresh_revocations()
    assert restarted.revocations_missing == 0
    assert "every revocation this node holds is in the database again" in caplog.text
    with pytest.raises(TokenRevoked):
        await stack.present(bot)


async def test_a_running_node_never_forgets_and_healthz_says_what_is_missing(
    stack: Stack, bot: Agent, tmp_path: Path
) -> None:
    assert bot.claims is not None
    node_a = await _node(stack, tmp_path / "a" / "revocations.json")
    node_b = await _node(stack, tmp_path / "b" / "revocations.json")
    stack.service = node_a
    app = create_app(AppState(PolicyHolder(load_policies([])), stack.store, node_a))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tether") as http:
        assert "revocations_missing" not in (await http.get("/healthz")).json()
        before = await _snapshot(stack)
        await node_b.revoke("task", bot.claims.task.id, reason="incident", by="admin")
        await node_a.refresh_revocations()  # node A's poll
        with pytest.raises(TokenRevoked, match="the task is revoked"):
            await stack.present(bot)
        await _put_back(stack, before)
        await node_a.refresh_revocations()
        assert node_a.revoked.unverified is None  # the list verifies, as it was
        with pytest.raises(TokenRevoked, match="the task is revoked"):
            await stack.present(bot)
        body = (await http.get("/healthz")).json()
        assert (body["status"], body["revocations"], body["revocations_missing"]) == (
            "ok",
            "verified",
            1,
        )
    # Node A's copy followed its poll: a restart of A keeps the task revoked too.
    assert ("task", bot.claims.task.id) in {
        (h.kind, h.value) for h in read_copy(tmp_path / "a" / "revocations.json")
    }
