"""Approvals for a delegation chain through the real HTTP front-end.

bob delegated a token alice had delegated to ``bot``. An action that needs an approval raises
one access request, bound to the outermost user (bob); once approved, exactly that action
passes for the chain; an action alice is refused stays refused whatever is approved (an
approval never lifts an earlier user's deny).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.identity_e2e.conftest import Clock
from tests.proxy_http.conftest import Agent, Harness, upstream  # noqa: F401 - the fixture
from tests.proxy_http.test_delegation_chain import chain, delegate
from tests.proxy_http.upstream import Upstream
from tests.proxy_ssh.harness import user_issuer
from tether.approvals.model import NotAllowed
from tether.approvals.service import ApprovalService
from tether.store import agents as agent_store
from tether.users.service import UserService
from tether.users.store import User

POLICY = """
rules:
  - id: agent-deletes
    effect: allow
    agents: [bot]
    http: {methods: [DELETE], paths: ["/v1/items/*"]}
    approval: {approvers: ["group:leads"], valid_for: 30m}
  - id: people-delete
    effect: allow
    users: [alice, bob]
    http: {methods: [DELETE], paths: ["/v1/items/*"]}
  - id: alice-keeps-item-9
    effect: deny
    users: [alice]
    http: {methods: [DELETE], paths: ["/v1/items/9"]}
"""


@dataclasses.dataclass
class Gated:
    harness: Harness
    approvals: ApprovalService
    lead: User


@pytest.fixture
def gated(tmp_path: Path, upstream: Upstream) -> Iterator[Gated]:  # noqa: F811
    harness = Harness(tmp_path, POLICY)
    harness.identity.issuers = user_issuer()

    async def wire() -> tuple[ApprovalService, User]:
        holder = harness.broker.services.policies
        approvals = ApprovalService(harness.store.engine, lambda: holder.current,
                                    harness.identity.sealer,
                                    auditor=harness.auditor, clock=Clock(datetime.now(UTC)),
                                    revoked=harness.identity.revoked)  # fmt: skip
        harness.broker.services = dataclasses.replace(harness.broker.services, approvals=approvals)
        lead = await UserService(harness.store.engine, harness.identity.cipher).add(
            "lee", password=None, groups=["leads"]
        )
        return approvals, lead

    approvals, lead = harness.run(wire())
    harness.add_target("api", base_url=upstream.url)
    try:
        yield Gated(harness, approvals, lead)
    finally:
        harness.stop()


def delete(gated: Gated, agent: Agent, item: int) -> httpx.Response:
    url = f"{gated.harness.url}/t/api/v1/items/{item}"
    return httpx.delete(url, headers=agent.headers("DELETE", url), timeout=30)


def test_a_chain_needs_the_approval_and_keeps_alices_deny(
    gated: Gated,
    upstream: Upstream,  # noqa: F811
) -> None:
    agent = chain(gated.harness, [], [])
    first = delete(gated, agent, 3)
    assert first.status_code == 403, first.text
    assert (first.json()["decision"], first.json()["rule"]) == (
        "approval_required",
        "agent-deletes",
    )
    request_id = first.json()["access_request"]
    pending = gated.harness.run(gated.approvals.get(request_id))
    assert pending.delegation_user == "bob"  # bound to the outermost user

    gated.harness.run(gated.approvals.approve(request_id, gated.lead, "ok"))
    allowed = delete(gated, agent, 3)
    assert allowed.status_code == 200, allowed.text
    assert upstream.seen[-1].target == "/v1/items/3"

    before = len(upstream.seen)
    refused = delete(gated, agent, 9)  # alice may not: no access request, a deny
    assert refused.status_code == 403, refused.text
    body = refused.json()
    assert (body["decision"], body["reason"]) == ("deny", "delegation-denied")
    assert body["rule"] == "alice-keeps-item-9" and "'alice'" in body["detail"]
    assert "access_request" not in body
    assert len(upstream.seen) == before
    assert [r.id for r in gated.harness.run(gated.approvals.search())] == [request_id]


def test_no_user_of_the_chain_approves_and_a_grant_covers_only_its_chain(
    gated: Gated,
    upstream: Upstream,  # noqa: F811
) -> None:
    """alice, an approver, delegated the token bob delegated on: she may not approve what
    it asks (she caused it, as bob did); the request records the chain, and the grant
    another approver makes covers that chain only, not bob acting alone for the agent."""
    alice = gated.harness.run(
        UserService(gated.harness.store.engine, gated.harness.identity.cipher).add(
            "alice", password=None, groups=["leads"]
        )
    )

    async def owned_by_olivia() -> None:  # not alice: her refusal must be the chain's
        async with gated.harness.store.engine.begin() as conn:
            await agent_store.create_agent(
                conn, gated.harness.identity.sealer, id="bot", owner="olivia",
                now=datetime.now(UTC),
            )  # fmt: skip

    gated.harness.run(owned_by_olivia())
    agent = chain(gated.harness, [], [])
    request_id = delete(gated, agent, 3).json()["access_request"]
    pending = gated.harness.run(gated.approvals.get(request_id))
    assert (pending.delegation_user, pending.delegation_chain) == ("bob", ("alice",))
    assert "delegation chain" in (gated.approvals.may_vote(pending, alice) or "")
    with pytest.raises(NotAllowed, match="delegation chain"):
        gated.harness.run(gated.approvals.approve(request_id, alice, "mine"))
    gated.harness.run(gated.approvals.approve(request_id, gated.lead, "ok"))
    assert delete(gated, agent, 3).status_code == 200

    bob_alone = delegate(gated.harness, gated.harness.agent(), "bob", [])
    other = delete(gated, bob_alone, 3)  # the same action, another delegation: not granted
    assert other.status_code == 403 and other.json()["access_request"] != request_id
