"""A grant for MOVE /docs/a with Destination: /docs/archive/a also lets the agent
MOVE /docs/a with Destination: /public/a (and X-Original-URL likewise): the digest keeps the
methods of every part but only the FIRST part's path, so the override path is not bound."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.identity_e2e.conftest import Clock
from tests.proxy_http.conftest import POLICY, Harness, upstream  # noqa: F401
from tests.proxy_http.upstream import Upstream
from tether.approvals.digest import action_digest
from tether.approvals.service import ApprovalService
from tether.users.service import UserService

GATED = (
    POLICY
    + """
  - id: webdav
    effect: allow
    agents: [bot]
    http: {methods: [MOVE, GET], paths: ["/**"]}
    approval: {approvers: ["group:leads"], valid_for: 30m}
"""
)


def _req(headers: dict[str, str]) -> dict:
    return {
        "agent": {"id": "a"},
        "task": {"id": "t"},
        "target": {"name": "api"},
        "action": {"http": {"method": "MOVE", "path": "/docs/a", "headers": headers}},
    }


def test_digest_binds_the_destination() -> None:
    one = action_digest(_req({"Destination": "https://x/docs/archive/a"}))
    two = action_digest(_req({"Destination": "https://x/public/a"}))
    assert one.digest != two.digest, (one.canonical, two.canonical)


def test_digest_binds_the_override_query() -> None:
    def get(headers):
        return {
            "agent": {"id": "a"},
            "task": {"id": "t"},
            "target": {"name": "api"},
            "action": {"http": {"method": "GET", "path": "/docs/a", "headers": headers}},
        }

    plain = action_digest(get({}))
    rewritten = action_digest(get({"X-Original-URL": "/docs/a?action=delete"}))
    assert plain.digest != rewritten.digest, rewritten.canonical


@pytest.fixture
def gated(tmp_path: Path, upstream: Upstream) -> Iterator:  # noqa: F811
    harness = Harness(tmp_path, GATED)
    clock = Clock(datetime.now(UTC))

    async def wire():
        holder = harness.broker.services.policies
        approvals = ApprovalService(
            harness.store.engine,
            lambda: holder.current,
            harness.identity.sealer,
            auditor=harness.auditor,
            clock=clock,
        )
        harness.broker.services = dataclasses.replace(harness.broker.services, approvals=approvals)
        lead = await UserService(harness.store.engine, harness.identity.cipher).add(
            "lee", password=None, groups=["leads"]
        )
        return approvals, lead

    approvals, lead = harness.run(wire())
    harness.add_target("api", base_url=upstream.url)
    try:
        yield harness, approvals, lead
    finally:
        harness.stop()


@pytest.mark.parametrize("header", ["Destination", "X-Original-URL"])
def test_broker_grant_does_not_cover_another_override_path(
    gated,
    upstream: Upstream,  # noqa: F811
    header: str,
) -> None:
    harness, approvals, lead = gated
    agent = harness.agent()
    url = f"{harness.url}/t/api/docs/a"

    def move(dest: str) -> httpx.Response:
        value = f"http://api.example{dest}" if header == "Destination" else dest
        hdrs = {**agent.headers("MOVE", url), header: value}
        return httpx.request("MOVE", url, headers=hdrs, timeout=30)

    first = move("/docs/archive/a")
    assert first.status_code == 403, first.text
    rid = first.json()["access_request"]
    harness.run(approvals.approve(rid, lead, "archive it"))
    assert move("/docs/archive/a").status_code == 200
    before = len(upstream.seen)
    other = move("/public/a")
    sent = upstream.seen[before:]
    assert other.status_code == 403, (other.status_code, [s.header(header) for s in sent])
