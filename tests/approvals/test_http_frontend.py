"""Approvals through the real HTTP front-end: a refused request names its access request,
the approved action (and only it) then reaches the target, ``Prefer: wait`` lets the agent's
request proceed once approved, and the grant expires."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.identity_e2e.conftest import Clock
from tests.proxy_http.conftest import Harness, upstream  # noqa: F401 - the fixture
from tests.proxy_http.upstream import Upstream
from tether.approvals.service import ApprovalService
from tether.users.service import UserService
from tether.users.store import User


@dataclasses.dataclass
class Gated:
    harness: Harness
    approvals: ApprovalService
    clock: Clock
    lead: User


@pytest.fixture
def gated(tmp_path: Path, upstream: Upstream) -> Iterator[Gated]:  # noqa: F811
    harness = Harness(tmp_path)
    clock = Clock(datetime.now(UTC))

    async def wire() -> tuple[ApprovalService, User]:
        holder = harness.broker.services.policies
        approvals = ApprovalService(harness.store.engine, lambda: holder.current,
                                    harness.identity.sealer,
                                    auditor=harness.auditor, clock=clock,
                                    revoked=harness.identity.revoked)  # fmt: skip
        harness.identity.revocation_listeners.append(approvals.on_revocation)  # as a node does
        harness.broker.services = dataclasses.replace(harness.broker.services, approvals=approvals)
        lead = await UserService(harness.store.engine, harness.identity.cipher).add(
            "lee", password=None, groups=["leads"]
        )
        return approvals, lead

    approvals, lead = harness.run(wire())
    harness.add_target("api", base_url=upstream.url)
    try:
        yield Gated(harness, approvals, clock, lead)
    finally:
        harness.stop()


def delete(gated: Gated, agent: object, item: int, **headers: str) -> httpx.Response:
    url = f"{gated.harness.url}/t/api/v1/items/{item}"
    return httpx.delete(url, headers={**agent.headers("DELETE", url), **headers}, timeout=30)  # type: ignore[attr-defined]


def test_refusal_names_the_request_then_exactly_the_approved_action_passes(
    gated: Gated,
    upstream: Upstream,  # noqa: F811
) -> None:
    agent = gated.harness.agent()
    first = delete(gated, agent, 3, **{"X-Tether-Reason": "cleanup of item 3"})
    assert first.status_code == 403 and first.headers["retry-after"] == "5"
    body = first.json()
    assert body["decision"] == "approval_required" and body["access_request_status"] == "pending"
    request_id = body["access_request"]
    assert body["status_url"] == f"{gated.harness.url}/v1/access-requests/{request_id}"
    assert request_id in body["detail"]
    assert delete(gated, agent, 3).json()["access_request"] == request_id  # one request

    pending = gated.harness.run(gated.approvals.get(request_id))
    assert pending.reason == "cleanup of item 3"
    assert pending.action["path"] == "/v1/items/3" and pending.action["methods"] == ["DELETE"]
    gated.harness.run(gated.approvals.approve(request_id, gated.lead, "ok"))
    before = len(upstream.seen)
    allowed = delete(gated, agent, 3)
    assert allowed.status_code == 200, allowed.text
    assert upstream.seen[-1].target == "/v1/items/3" and len(upstream.seen) == before + 1
    other = delete(gated, agent, 4)
    assert other.status_code == 403 and other.json()["access_request"] != request_id
    assert len(upstream.seen) == before + 1  # nothing else reached the target

    gated.clock.advance(30 * 60)
    expired = delete(gated, agent, 3)
    assert expired.status_code == 403 and expired.json()["access_request"] != request_id


def test_prefer_wait_proceeds_once_approved(gated: Gated, upstream: Upstream) -> None:  # noqa: F811
    agent = gated.harness.agent()
    answers: list[httpx.Response] = []
    waiting = threading.Thread(
        target=lambda: answers.append(delete(gated, agent, 9, Prefer="wait=20"))
    )
    waiting.start()

    async def approve_when_asked() -> None:
        while not (found := await gated.approvals.search(status="pending")):
            await asyncio.sleep(0.05)
        await gated.approvals.approve(found[0].id, gated.lead, "go")

    gated.harness.run(approve_when_asked())
    waiting.join(30)
    assert answers and answers[0].status_code == 200, answers[0].text if answers else None
    assert upstream.seen[-1].target == "/v1/items/9"


@pytest.mark.parametrize(
    "how", ["token revoked", "agent disabled", "token expired", "task revoked", "runtime revoked"]
)
def test_a_credential_that_ends_during_the_wait_is_not_honoured(
    gated: Gated,
    upstream: Upstream,  # noqa: F811
    how: str,
) -> None:
    """``Prefer: wait`` holds the request up to 60 s: a token revoked, an agent disabled or
    a token expired meanwhile must not have the request proceed once it is approved."""
    lifetime = 3 if how == "token expired" else None
    agent = gated.harness.agent(lifetime=lifetime)
    payload = agent.token.split(".")[1]
    jti = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
    answers: list[httpx.Response] = []
    waiting = threading.Thread(
        target=lambda: answers.append(delete(gated, agent, 11, Prefer="wait=20"))
    )
    waiting.start()
    identity = gated.harness.identity

    async def end_then_approve() -> None:
        while not (found := await gated.approvals.search(status="pending")):
            await asyncio.sleep(0.05)
        if how == "token revoked":
            await identity.revoke("token", jti, reason="stolen", by="test")
        elif how == "agent disabled":
            await identity.set_agent_state(agent.id, "disabled")
        elif how in ("task revoked", "runtime revoked"):  # cancels the request itself
            kind, value = how.split()[0], found[0].task_id
            if kind == "runtime":
                assert found[0].runtime_id is not None
                value = found[0].runtime_id
            await identity.revoke(kind, value, reason="incident", by="test")  # type: ignore[arg-type]
            return
        else:
            await asyncio.sleep(3.5)
        await gated.approvals.approve(found[0].id, gated.lead, "go")

    gated.harness.run(end_then_approve())
    waiting.join(30)
    assert answers and answers[0].status_code == 401, answers[0].text if answers else None
    assert all(seen.target != "/v1/items/11" for seen in upstream.seen)


def test_a_decision_that_cannot_be_made_is_refused_and_audited(
    gated: Gated,
    upstream: Upstream,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store fails while the grants are read or the access request is raised: the
    request is refused (500, a lost race 409) and the refusal is in the audit trail; the
    target never sees it (was: an unaudited 500 from the server's last resort)."""
    agent = gated.harness.agent()
    seen = len(upstream.seen)

    async def drop() -> None:
        async with gated.harness.store.engine.begin() as conn:
            await conn.exec_driver_sql("DROP TABLE access_requests")

    from tether.approvals import store as approvals_store
    from tether.approvals.model import Conflict

    async def lost(*_args: object) -> str:
        raise Conflict("the access request was decided while another was raised for it; ask again")

    monkeypatch.setattr(approvals_store, "insert_pending", lost)  # the race, lost three times
    raced = delete(gated, agent, 4)
    assert raced.status_code == 409 and "ask again" in raced.json()["detail"]
    monkeypatch.undo()
    gated.harness.run(drop())  # a real store failure: the table is gone
    failed = delete(gated, agent, 5)
    assert failed.status_code == 500
    assert failed.headers["content-type"] == "application/problem+json"
    assert "OperationalError" not in failed.text and "access_requests" not in failed.text
    assert len(upstream.seen) == seen
    refused = gated.harness.exchanges(2)
    by_request = {e.detail["request_id"]: e for e in refused}
    assert by_request[raced.json()["request_id"]].detail["reason"] == "approval-conflict"
    assert by_request[failed.json()["request_id"]].detail["reason"] == "internal-error"
    assert {e.action["status"] for e in refused} == {409, 500}
    assert {e.decision for e in refused} == {"deny"}
