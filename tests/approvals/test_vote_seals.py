"""Access requests and votes changed in the database behind Tether's back (migration 0018;
docs/vault.md, "Tampering with the database"), on SQLite and PostgreSQL: a planted vote
does not count towards a quorum, and a request whose quorum, approvers or reason were
changed cannot be voted on (a conflict, nothing granted); both are logged as errors."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import insert, update

from tests.approvals.conftest import World
from tests.approvals.helpers import http_request
from tether.approvals.model import AccessRequest, Conflict
from tether.approvals.schema import access_requests, approval_votes

INVOICE = http_request("POST", "/v1/invoices/7")  # two approvals of the finance group


async def _pending(world: World) -> AccessRequest:
    _, pending = await world.approvals.decide(INVOICE)
    assert pending is not None and pending.required == 2
    return pending


@pytest.mark.parametrize("seal", [None, "A" * 43], ids=["no-seal", "made-up-seal"])
async def test_a_planted_vote_does_not_complete_a_quorum(
    world: World, seal: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    fay, carol = await world.user("fay", "finance"), await world.user("carol")
    pending = await _pending(world)
    planted = {"request_id": pending.id, "user_id": fay.id, "vote": "approve",
               "reason": None, "created_at": world.clock(), "seal": seal}  # fmt: skip
    async with world.store.engine.begin() as conn:
        await conn.execute(insert(approval_votes).values(planted))
    with caplog.at_level(logging.ERROR, "tether.crypto.seal"):
        after = await world.approvals.approve(pending.id, carol, "one")
    assert after.status == "pending" and after.grant is None  # one genuine approval of two
    assert f"vote of 'fay' on access request {pending.id!r} refused" in caplog.text
    decision, _ = await world.approvals.decide(INVOICE)
    assert decision.decision == "approval_required"


@pytest.mark.parametrize(
    "change",
    [{"required": 1}, {"approvers": ["user:mallory"]}, {"reason": "routine, approve"},
     {"seal": None}],
    ids=["quorum", "approvers", "reason", "no-seal"],
)  # fmt: skip
async def test_a_request_changed_in_the_database_cannot_be_voted_on(
    world: World, change: dict[str, Any]
) -> None:
    fay, mallory = await world.user("fay", "finance"), await world.user("mallory")
    voter = mallory if "approvers" in change else fay  # the writer named themselves
    pending = await _pending(world)
    async with world.store.engine.begin() as conn:
        await conn.execute(
            update(access_requests).where(access_requests.c.id == pending.id).values(change)
        )
    with pytest.raises(Conflict, match="its stored row does not verify"):
        await world.approvals.approve(pending.id, voter, "ok")
    current = await world.approvals.get(pending.id)
    assert current.status == "pending" and current.votes == () and current.grant is None


async def test_genuine_votes_still_reach_the_quorum(world: World) -> None:
    fay, carol = await world.user("fay", "finance"), await world.user("carol")
    pending = await _pending(world)
    await world.approvals.approve(pending.id, fay, "one")
    done = await world.approvals.approve(pending.id, carol, "two")
    assert done.status == "approved" and done.approvals == 2 and done.grant is not None
    decision, _ = await world.approvals.decide(INVOICE)
    assert decision.decision == "allow"


async def test_disabling_an_approver_revokes_a_grant_whose_request_was_changed(
    world: World,
) -> None:
    fay, carol = await world.user("fay", "finance"), await world.user("carol")
    pending = await _pending(world)
    await world.approvals.approve(pending.id, fay, "one")
    done = await world.approvals.approve(pending.id, carol, "two")
    assert done.grant is not None
    async with world.store.engine.begin() as conn:  # a writer lowers the quorum afterwards
        await conn.execute(
            update(access_requests).where(access_requests.c.id == pending.id).values(required=1)
        )
    disabled = await world.users.disable_user(fay.id, by="admin")
    assert disabled.grants == [pending.id]  # two approvals were required: revoked
    decision, _ = await world.approvals.decide(INVOICE)
    assert decision.decision == "approval_required"
