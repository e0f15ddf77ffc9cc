"""The front-end helpers: ``Prefer: wait`` parsing (property-tested), refusal texts, and
waiting for a decision that never allows by itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.approvals.helpers import Clock, fresh_cipher, policies, ssh_request
from tether.approvals.frontend import (
    MAX_WAIT,
    agent_reason,
    prefer_wait,
    problem_members,
    refusal_line,
    wait_decided,
)
from tether.approvals.service import ApprovalService
from tether.store import Store
from tether.users.service import UserService


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.text(max_size=40), max_size=3))
def test_prefer_wait_never_crashes_and_is_bounded(values: list[str]) -> None:
    assert 0 <= prefer_wait(values) <= MAX_WAIT


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("wait=10", 10), ("respond-async, wait=5", 5), ("handling=lenient; wait=3", 3),
     ("wait=9999", MAX_WAIT), ("WAIT = 7", 7), ("wait=", 0), ("wait=-1", 0), ("nowait=5", 0),
     ("wait=5x", 0), ("", 0)],
)  # fmt: skip
def test_prefer_wait_values(header: str, seconds: float) -> None:
    assert prefer_wait([header]) == seconds


def test_reason_is_trimmed() -> None:
    assert agent_reason(["  ", "x" * 900]) == "x" * 500
    assert agent_reason([]) is None


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ApprovalService]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    policy_set = policies()
    try:
        yield ApprovalService(
            store.engine, lambda: policy_set, fresh_cipher().sealer, clock=Clock()
        )
    finally:
        await store.close()


async def test_refusal_then_wait_then_decide_again(service: ApprovalService) -> None:
    decision, pending = await service.decide(ssh_request("systemctl restart app"))
    assert pending is not None
    line = refusal_line(decision, pending)
    assert pending.id in line and "restart" in line and f"/v1/access-requests/{pending.id}" in line
    members = problem_members(pending, "http://tether/")
    assert members["status_url"] == f"http://tether/v1/access-requests/{pending.id}"
    assert (await wait_decided(service, pending.id, 0.2)).status == "pending"

    users = UserService(service.engine, fresh_cipher(), clock=service.clock)
    sam = await users.add("sam", password=None, groups=["sre"])
    waiting = asyncio.create_task(wait_decided(service, pending.id, 30))
    await asyncio.sleep(0.1)
    await service.deny(pending.id, sam, "no")
    assert (await asyncio.wait_for(waiting, 5)).status == "denied"
    again, _ = await service.decide(ssh_request("systemctl restart app"))
    assert again.decision == "approval_required"  # waiting allowed nothing
