"""The approval service over a real store (SQLite and PostgreSQL): requests, votes, grants."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import event
from sqlalchemy.util import await_only

from tests.approvals.conftest import World
from tests.approvals.helpers import Clock, fresh_cipher, http_request, policies, ssh_request
from tether.approvals.model import AccessRequest, Conflict, NotAllowed, NotFound
from tether.approvals.service import ApprovalService
from tether.approvals.store import PENDING_ATTEMPTS
from tether.store import Store
from tether.store import agents as agent_store
from tether.users.service import UserService
from tether.users.store import User


async def test_pending_approved_held_for_exactly_that_action_until_expiry(world: World) -> None:
    sam = await world.user("sam", "sre")
    decision, pending = await world.approvals.decide(ssh_request("systemctl restart app"))
    assert decision.decision == "approval_required" and decision.rule == "restart"
    assert pending is not None and pending.status == "pending" and pending.owner == "olivia"
    assert pending.action == {"command": "systemctl restart app"}

    approved = await world.approvals.approve(pending.id, sam, "ok")
    assert approved.status == "approved" and approved.grant is not None
    decision, none = await world.approvals.decide(ssh_request("'systemctl' restart  app"))
    assert decision.decision == "allow" and none is None  # same canonical command
    other, again = await world.approvals.decide(ssh_request("systemctl restart db"))
    assert other.decision == "approval_required" and again is not None
    assert again.id != pending.id
    for replay in (ssh_request("systemctl restart app", agent="other-bot"),
                   ssh_request("systemctl restart app", task="T-2")):  # fmt: skip
        refused, _ = await world.approvals.decide(replay)
        assert refused.decision == "approval_required"

    world.clock.advance(10 * 60 - 1)
    assert (await world.approvals.decide(ssh_request("systemctl restart app")))[
        0
    ].decision == "allow"
    world.clock.advance(1)
    decision, renewed = await world.approvals.decide(ssh_request("systemctl restart app"))
    assert decision.decision == "approval_required" and renewed is not None
    assert renewed.id != pending.id and renewed.status == "pending"


async def test_n_of_m_distinct_approvers_and_exclusions(world: World) -> None:
    fay = await world.user("fay", "finance")
    carol = await world.user("carol")
    olivia = await world.user("olivia", "finance")  # the agents' owner
    sam = await world.user("sam", "sre")
    _, pending = await world.approvals.decide(http_request("POST", "/v1/invoices/7"))
    assert pending is not None and pending.required == 2
    with pytest.raises(NotAllowed, match="not an approver"):
        await world.approvals.approve(pending.id, sam, None)
    with pytest.raises(NotAllowed, match="owner"):
        await world.approvals.approve(pending.id, olivia, None)
    first = await world.approvals.approve(pending.id, fay, "one")
    assert first.status == "pending" and first.approvals == 1
    with pytest.raises(Conflict, match="already voted"):
        await world.approvals.approve(pending.id, fay, "twice")
    done = await world.approvals.approve(pending.id, carol, "two")
    assert done.status == "approved" and done.approvals == 2
    finn = await world.user("finn", "finance")
    with pytest.raises(Conflict, match="not pending"):
        await world.approvals.deny(pending.id, finn, None)


async def test_delegating_user_cannot_approve_unless_the_rule_allows_self(world: World) -> None:
    sam = await world.user("sam", "sre")
    sue = await world.user("sue", "sre")
    request = ssh_request("systemctl restart app", delegation={"user": "sam", "groups": []})
    decision, pending = await world.approvals.decide(request)
    assert decision.decision == "approval_required" and pending is not None
    assert pending.delegation_user == "sam"
    with pytest.raises(NotAllowed, match="caused"):
        await world.approvals.approve(pending.id, sam, None)
    assert (await world.approvals.approve(pending.id, sue, None)).status == "approved"
    olivia = await world.user("olivia", "sre")
    _, own = await world.approvals.decide(
        {**ssh_request(""), "target": {"name": "files"},
         "action": {"files": {"op": "write", "path": "/srv/a"}}}
    )  # fmt: skip
    assert own is not None and own.allow_self and own.owner == "olivia"
    assert world.approvals.may_vote(own, olivia) is None  # allow_self: the owner may


async def test_deny_and_unknown(world: World) -> None:
    sam = await world.user("sam", "sre")
    _, pending = await world.approvals.decide(ssh_request("systemctl restart app"))
    assert pending is not None
    denied = await world.approvals.deny(pending.id, sam, "not now")
    assert denied.status == "denied" and denied.grant is None
    assert (await world.approvals.decide(ssh_request("systemctl restart app")))[1] is not None
    with pytest.raises(NotFound):
        await world.approvals.approve("ar_forged", sam, None)


async def test_rule_scope_covers_every_action_of_the_rule_for_the_task(world: World) -> None:
    olivia = await world.user("olivia")
    drop = {**ssh_request(""), "target": {"name": "db"},
            "action": {"sql": {"query": "DROP TABLE public.a"}}}  # fmt: skip
    _, pending = await world.approvals.decide(drop)
    assert pending is not None and pending.scope == "rule"
    await world.approvals.approve(pending.id, olivia, None)
    other = {**drop, "action": {"sql": {"query": "CREATE TABLE public.b (x int)"}}}
    assert (await world.approvals.decide(other))[0].decision == "allow"
    assert (await world.approvals.decide({**other, "task": {"id": "T-9"}}))[0].decision != "allow"


async def test_revocation_cancels_pending_and_grants(world: World) -> None:
    sam = await world.user("sam", "sre")
    _, first = await world.approvals.decide(ssh_request("systemctl restart app"))
    _, second = await world.approvals.decide(ssh_request("systemctl restart db"))
    assert first is not None and second is not None
    await world.approvals.approve(first.id, sam, None)
    affected = await world.approvals.on_revocation("task", "T-1", "incident")
    assert sorted(affected) == sorted([first.id, second.id])
    assert (await world.approvals.get(second.id)).status == "cancelled"
    assert (await world.approvals.decide(ssh_request("systemctl restart app")))[
        0
    ].decision != "allow"


async def test_concurrent_identical_requests_make_one(world: World) -> None:
    answers = await asyncio.gather(
        *(world.approvals.decide(ssh_request("systemctl restart app")) for _ in range(8))
    )
    ids = {pending.id for _, pending in answers if pending is not None}
    assert len(ids) == 1
    assert len(await world.approvals.search(status="pending")) == 1


async def test_undecided_requests_lapse_and_free_their_key(world: World) -> None:
    sam = await world.user("sam", "sre")
    _, pending = await world.approvals.decide(ssh_request("systemctl restart app"))
    assert pending is not None
    world.clock.advance(24 * 3600)
    assert (await world.approvals.get(pending.id)).status == "expired"
    with pytest.raises(Conflict, match="not pending"):
        await world.approvals.approve(pending.id, sam, None)
    _, fresh = await world.approvals.decide(ssh_request("systemctl restart app"))
    assert fresh is not None and fresh.id != pending.id and fresh.status == "pending"


async def test_a_body_bound_approval_holds_for_that_body_only(world: World) -> None:
    fay = await world.user("fay", "finance")
    refund = http_request("POST", "/v1/refunds")
    decision, none = await world.approvals.decide(refund)  # the body was not read
    assert decision.decision == "approval_required" and none is None
    _, pending = await world.approvals.decide(refund, body=b'{"amount": 10}')
    assert pending is not None and "body_sha256" in pending.action
    await world.approvals.approve(pending.id, fay, None)
    assert (await world.approvals.decide(refund, body=b'{"amount": 10}'))[0].decision == "allow"
    other, _ = await world.approvals.decide(refund, body=b'{"amount": 10000}')
    assert other.decision == "approval_required"
    assert (await world.approvals.decide(refund))[0].decision == "approval_required"


async def test_concurrent_votes_reach_the_quorum_once(world: World) -> None:
    voters = [await world.user(name, "finance") for name in ("f1", "f2", "f3", "f4")]
    _, pending = await world.approvals.decide(http_request("POST", "/v1/invoices/9"))
    assert pending is not None and pending.required == 2
    results = await asyncio.gather(
        *(world.approvals.approve(pending.id, user, None) for user in voters),
        return_exceptions=True,
    )
    done = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(done) == 2 and all(isinstance(r, Conflict) for r in refused)
    final = await world.approvals.get(pending.id)
    assert final.status == "approved" and final.approvals == 2 and final.grant is not None


async def test_a_disabled_approvers_vote_stops_counting_towards_two_of_m(world: World) -> None:
    fay = await world.user("fay", "finance")
    carol = await world.user("carol")
    finn = await world.user("finn", "finance")
    _, pending = await world.approvals.decide(http_request("POST", "/v1/invoices/7"))
    assert pending is not None and pending.required == 2
    assert (await world.approvals.approve(pending.id, fay, "one")).approvals == 1
    await world.users.disable("fay", by="test")
    assert (await world.approvals.get(pending.id)).approvals == 0  # shown as not counting
    after = await world.approvals.approve(pending.id, carol, "two")
    assert after.status == "pending" and after.approvals == 1  # fay's vote no longer counts
    assert {(v.user_id, v.counts) for v in after.votes} == {("fay", False), ("carol", True)}
    assert (await world.approvals.decide(http_request("POST", "/v1/invoices/7")))[
        0
    ].decision == "approval_required"
    done = await world.approvals.approve(pending.id, finn, "three")
    assert done.status == "approved" and done.approvals == 2 and done.grant is not None


async def test_disabling_an_approver_revokes_the_grants_left_short_of_quorum(
    world: World,
) -> None:
    fay = await world.user("fay", "finance")
    carol = await world.user("carol")
    finn = await world.user("finn", "finance")
    # A grant with a vote to spare: fay voted, was disabled, came back, and two more
    # approved (three approvals of active users for two needed).
    spare_action = http_request("POST", "/v1/invoices/8")
    _, spare = await world.approvals.decide(spare_action)
    assert spare is not None
    await world.approvals.approve(spare.id, fay, None)
    assert (await world.users.disable_user("fay", by="test")).grants == []  # none granted yet
    await world.approvals.approve(spare.id, carol, None)
    await world.users.set_state("fay", "active")
    assert (await world.approvals.approve(spare.id, finn, None)).approvals == 3

    # A grant with exactly its two approvals.
    short_action = http_request("POST", "/v1/invoices/7")
    _, short = await world.approvals.decide(short_action)
    assert short is not None
    await world.approvals.approve(short.id, fay, None)
    assert (await world.approvals.approve(short.id, carol, None)).grant is not None
    assert (await world.approvals.decide(short_action))[0].decision == "allow"

    done = await world.users.disable_user("carol", by="test")
    assert done.grants == [short.id]  # one approval of an active user left, for two needed
    assert (await world.approvals.decide(short_action))[0].decision == "approval_required"
    revoked = await world.approvals.get(short.id)
    assert revoked.grant is not None and revoked.grant.revoked_at is not None
    assert (await world.approvals.decide(spare_action))[0].decision == "allow"  # two of two
    await world.users.set_state("carol", "active")  # a revoked grant stays revoked
    assert (await world.approvals.decide(short_action))[0].decision == "approval_required"


async def racing(store: Store) -> tuple[ApprovalService, User, AccessRequest]:
    """An approval service on ``store``, an approver, and one pending access request."""
    clock = Clock()
    policy_set, cipher = policies(), fresh_cipher()
    async with store.engine.begin() as conn:
        await agent_store.create_agent(conn, cipher.sealer, id="bot", owner="olivia", now=clock())
    approvals = ApprovalService(store.engine, lambda: policy_set, cipher.sealer, clock=clock)
    users = UserService(store.engine, cipher, clock=clock)
    sam = await users.add("sam", password=None, groups=["sre"], roles=["approver"])
    _, held = await approvals.decide(ssh_request("systemctl restart app"))
    assert held is not None
    return approvals, sam, held


async def test_a_decision_between_the_insert_and_the_read_of_a_pending_key(
    pg_fresh_url: str,
) -> None:
    """PostgreSQL, read committed: an identical request's insert finds the key held, then a
    denial of the holder commits before it reads who holds it. It raises a new request
    (the key is free) instead of failing an assertion (an unaudited 500)."""
    store = await Store.open(pg_fresh_url)
    try:
        approvals, sam, held = await racing(store)
        interleaved: list[str] = []

        def deny_in_between(conn: object, cursor: object, statement: str, *args: object) -> None:
            if interleaved or not statement.lstrip().startswith("INSERT INTO access_requests"):
                return
            assert held is not None
            # Another transaction, on another connection, commits while this one waits.
            interleaved.append(await_only(approvals.deny(held.id, sam, "no")).status)

        event.listen(store.engine.sync_engine, "after_cursor_execute", deny_in_between)
        try:
            decision, fresh = await approvals.decide(ssh_request("systemctl restart app"))
        finally:
            event.remove(store.engine.sync_engine, "after_cursor_execute", deny_in_between)
        assert interleaved == ["denied"]
        assert decision.decision == "approval_required" and fresh is not None
        assert fresh.id != held.id and fresh.status == "pending"
        assert [r.id for r in await approvals.search(status="pending")] == [fresh.id]
    finally:
        await store.close()


async def test_a_key_decided_in_every_gap_is_refused_after_the_last_attempt(
    pg_fresh_url: str,
) -> None:
    """The same race, lost every time: each insert finds the key held, a denial of the
    holder commits before the read, and another identical request takes the key again
    before the next insert. After ``PENDING_ATTEMPTS`` the request is refused as a
    conflict (409 at the API, a refusal at a front-end), not retried for ever."""
    store = await Store.open(pg_fresh_url)
    try:
        approvals, sam, first = await racing(store)
        holders, denied = [first.id], []
        inside = False

        def race(conn: object, cursor: object, statement: str, *args: object) -> None:
            nonlocal inside
            if inside:
                return  # the other transactions' own statements
            inside = True
            try:
                text = statement.lstrip()
                if text.startswith("INSERT INTO access_requests"):
                    denied.append(await_only(approvals.deny(holders[-1], sam, "no")).status)
                elif text.startswith("SELECT access_requests.id") and "pending_key" in text:
                    _, again = await_only(approvals.decide(ssh_request("systemctl restart app")))
                    assert again is not None
                    holders.append(again.id)
            finally:
                inside = False

        event.listen(store.engine.sync_engine, "after_cursor_execute", race)
        try:
            with pytest.raises(Conflict, match="decided while another was raised"):
                await approvals.decide(ssh_request("systemctl restart app"))
        finally:
            event.remove(store.engine.sync_engine, "after_cursor_execute", race)
        assert denied == ["denied"] * PENDING_ATTEMPTS
        assert len(holders) == PENDING_ATTEMPTS + 1
        # Nothing half-made: the one pending request is the last holder's, not ours.
        assert [r.id for r in await approvals.search(status="pending")] == [holders[-1]]
    finally:
        await store.close()
