"""Grants changed in the database behind Tether's back (migration 0017; docs/vault.md,
"Tampering with the database"), on SQLite and PostgreSQL: a grant planted for a pending
request (an approval nobody gave), an expiry pushed back, a revocation cleared, or a grant
without a seal counts for nothing, and is logged as an error; grants Tether writes and
revokes stay sealed, and only an operator's adoption trusts a grant from before the seals."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from tests.approvals.conftest import World
from tests.approvals.helpers import ssh_request
from tether.approvals.binding import grant_row
from tether.approvals.schema import grants
from tether.approvals.store import GRANTS, grant_seal_columns
from tether.store.sealing import adopt

COMMAND = "systemctl restart app"


async def _decision(world: World) -> str:
    decision, _ = await world.approvals.decide(ssh_request(COMMAND))
    return decision.decision


async def _approved(world: World) -> str:
    """A request approved the genuine way; its grant's id."""
    sam = await world.user("sam", "sre")
    _, pending = await world.approvals.decide(ssh_request(COMMAND))
    assert pending is not None
    approved = await world.approvals.approve(pending.id, sam, "ok")
    assert approved.grant is not None and await _decision(world) == "allow"
    return approved.grant.id


async def _set(world: World, grant_id: str, **values: Any) -> None:
    async with world.store.engine.begin() as conn:
        await conn.execute(update(grants).where(grants.c.id == grant_id).values(values))


@pytest.mark.parametrize("seal", [None, "A" * 43], ids=["no-seal", "made-up-seal"])
async def test_a_planted_grant_allows_nothing(
    world: World, seal: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    _, pending = await world.approvals.decide(ssh_request(COMMAND))
    assert pending is not None
    rule = world.approvals.policies().by_id[pending.rule_id]
    row = {**grant_row(pending, rule, world.clock()), "seal": seal}  # nobody approved
    async with world.store.engine.begin() as conn:
        await conn.execute(insert(grants).values(row))
    with caplog.at_level(logging.ERROR, "tether.crypto.seal"):
        assert await _decision(world) == "approval_required"
    assert f"grant {row['id']!r} (request {pending.id!r}) refused" in caplog.text


async def test_an_expiry_pushed_back_allows_nothing(world: World) -> None:
    grant_id = await _approved(world)
    await _set(world, grant_id, expires_at=world.clock() + timedelta(days=365))
    assert await _decision(world) == "approval_required"


async def test_a_cleared_revocation_allows_nothing(world: World) -> None:
    grant_id = await _approved(world)
    await world.approvals.on_revocation("task", "T-1", "done")
    assert await _decision(world) == "approval_required"
    async with world.store.engine.connect() as conn:  # revoked, and sealed again
        row = (await conn.execute(select(grants))).mappings().one()
    sealer = world.approvals.sealer
    assert row["revoked_at"] is not None
    assert sealer.verify(GRANTS, grant_seal_columns(row), row["seal"])
    await _set(world, grant_id, revoked_at=None, revoked_reason=None)
    assert await _decision(world) == "approval_required"


async def test_a_grant_from_before_the_seals_counts_once_adopted(world: World) -> None:
    grant_id = await _approved(world)
    await _set(world, grant_id, seal=None)  # as written before migration 0017
    assert await _decision(world) == "approval_required"
    adopted = await adopt(world.store.engine, world.approvals.sealer)
    assert adopted["grants"] == [grant_id]
    assert await _decision(world) == "allow"
