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
from tests.proxy_http.test_delegation_chain import chain
from tests.proxy_http.upstream import Upstream
from tests.proxy_ssh.harness import user_issuer
from tether.approvals.service import ApprovalService
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
                                    auditor=harness.auditor, clock=Clock(datetime.now(UTC)),
                                    revoked=harness.identity.revoked)  # fmt: skip
        harness.broker.services = dataclasses.replace(harness.broker.services, approvals=approvals)
        lead = await UserService(harness.store.engine).add("lee", password=None, groups=["leads"])
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
