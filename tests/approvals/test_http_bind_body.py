"""Approvals bound to the body (``approval.bind_body``) through the real HTTP broker: the
refusal names an access request bound to the body's SHA-256, the approved body (and only
it) then reaches a real upstream byte for byte, and a body too large to bind is a 413."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Message

from tests.identity_e2e.conftest import Clock
from tests.proxy_http.conftest import POLICY, Agent, Harness, upstream  # noqa: F401 - the fixture
from tests.proxy_http.upstream import Upstream
from tether.approvals.service import ApprovalService
from tether.proxy.http.bodybind import MAX_BOUND_BODY, BodyRefused, read_body, replay
from tether.users.service import UserService
from tether.users.store import User

BOUND_POLICY = (
    POLICY
    + """
  - id: refund
    effect: allow
    agents: [bot]
    http: {methods: [POST], paths: ["/v1/refunds"]}
    approval: {approvers: ["group:leads"], valid_for: 30m, bind_body: true}
"""
)


@dataclasses.dataclass
class Gated:
    harness: Harness
    approvals: ApprovalService
    lead: User


@pytest.fixture
def gated(tmp_path: Path, upstream: Upstream) -> Iterator[Gated]:  # noqa: F811
    harness = Harness(tmp_path, BOUND_POLICY)
    clock = Clock(datetime.now(UTC))

    async def wire() -> tuple[ApprovalService, User]:
        holder = harness.broker.services.policies
        approvals = ApprovalService(harness.store.engine, lambda: holder.current,
                                    harness.identity.sealer,
                                    auditor=harness.auditor, clock=clock)  # fmt: skip
        harness.broker.services = dataclasses.replace(harness.broker.services, approvals=approvals)
        lead = await UserService(harness.store.engine, harness.identity.cipher).add(
            "lee", password=None, groups=["leads"]
        )
        return approvals, lead

    approvals, lead = harness.run(wire())
    harness.add_target("api", base_url=upstream.url)
    harness.add_target("small", base_url=upstream.url, max_request_body=64)
    try:
        yield Gated(harness, approvals, lead)
    finally:
        harness.stop()


def post(gated: Gated, agent: Agent, body: bytes, target: str = "api") -> httpx.Response:
    url = f"{gated.harness.url}/t/{target}/v1/refunds"
    headers = agent.headers("POST", url)
    return httpx.post(url, content=body, headers=headers, timeout=30)


def test_the_approved_body_and_only_it_reaches_the_target(
    gated: Gated,
    upstream: Upstream,  # noqa: F811
) -> None:
    agent = gated.harness.agent()
    body_a = b'{"invoice": "INV-7", "amount": 120}'
    body_b = b'{"invoice": "INV-7", "amount": 99999}'
    first = post(gated, agent, body_a)
    assert first.status_code == 403, first.text
    problem = first.json()
    assert problem["decision"] == "approval_required"
    request_id = problem["access_request"]
    assert request_id in problem["detail"]
    pending = gated.harness.run(gated.approvals.get(request_id))
    assert pending.action["body_sha256"] == hashlib.sha256(body_a).hexdigest()
    assert post(gated, agent, body_a).json()["access_request"] == request_id  # one request
    before = len(upstream.seen)

    gated.harness.run(gated.approvals.approve(request_id, gated.lead, "ok"))
    allowed = post(gated, agent, body_a)
    assert allowed.status_code == 200, allowed.text
    assert len(upstream.seen) == before + 1
    assert upstream.seen[-1].target == "/v1/refunds" and upstream.seen[-1].body == body_a

    other = post(gated, agent, body_b)
    assert other.status_code == 403
    assert other.json()["access_request"] not in (None, request_id)
    assert len(upstream.seen) == before + 1  # the other body never left
    assert post(gated, agent, body_a).status_code == 200  # the grant still holds for A
    assert upstream.seen[-1].body == body_a


def test_a_chunked_body_is_bound_and_forwarded_whole(
    gated: Gated,
    upstream: Upstream,  # noqa: F811
) -> None:
    agent = gated.harness.agent()
    parts = [b"amount=", b"120&", b"invoice=INV-8"]
    url = f"{gated.harness.url}/t/api/v1/refunds"

    def send() -> httpx.Response:
        headers = agent.headers("POST", url)
        return httpx.post(url, content=iter(parts), headers=headers, timeout=30)

    refused = send()
    assert refused.status_code == 403, refused.text
    request_id = refused.json()["access_request"]
    pending = gated.harness.run(gated.approvals.get(request_id))
    assert pending.action["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    gated.harness.run(gated.approvals.approve(request_id, gated.lead, "ok"))
    assert send().status_code == 200
    assert upstream.seen[-1].body == b"".join(parts)


def test_prefer_wait_forwards_the_read_body_once_approved(
    gated: Gated,
    upstream: Upstream,  # noqa: F811
) -> None:
    agent = gated.harness.agent()
    body = b'{"invoice": "INV-9", "amount": 5}'
    url = f"{gated.harness.url}/t/api/v1/refunds"
    answers: list[httpx.Response] = []

    def send() -> None:
        headers = {**agent.headers("POST", url), "Prefer": "wait=20"}
        answers.append(httpx.post(url, content=body, headers=headers, timeout=30))

    waiting = threading.Thread(target=send)
    waiting.start()

    async def approve_when_asked() -> None:
        while not (found := await gated.approvals.search(status="pending")):
            await asyncio.sleep(0.05)
        assert found[0].action["body_sha256"] == hashlib.sha256(body).hexdigest()
        await gated.approvals.approve(found[0].id, gated.lead, "go")

    gated.harness.run(approve_when_asked())
    waiting.join(30)
    assert answers and answers[0].status_code == 200, answers[0].text if answers else None
    assert upstream.seen[-1].target == "/v1/refunds" and upstream.seen[-1].body == body


def test_a_body_too_large_to_bind_is_refused_413(
    gated: Gated,
    upstream: Upstream,  # noqa: F811
) -> None:
    agent = gated.harness.agent()
    before = len(upstream.seen)
    huge = post(gated, agent, b"x" * (MAX_BOUND_BODY + 1))
    assert huge.status_code == 413, huge.text
    assert "bind_body" in huge.json()["detail"]
    small = post(gated, agent, b"y" * 65, target="small")  # the target's own limit is lower
    assert small.status_code == 413 and "64 bytes" in small.json()["detail"]
    assert len(upstream.seen) == before
    assert gated.harness.run(gated.approvals.search(status="pending")) == []
    refused = gated.harness.exchanges(2, target="small")
    assert any(e.detail.get("reason") == "bind-body" for e in refused), refused


def _receiver(chunks: list[bytes]) -> Any:
    messages: list[Message] = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks or [b""])
    ]
    messages.append({"type": "http.disconnect"})

    async def receive() -> Message:
        return messages.pop(0)

    return receive


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=40), max_size=8),
    limit=st.integers(min_value=0, max_value=200),
    declare=st.booleans(),
)
def test_read_body_returns_the_exact_body_or_refuses(
    chunks: list[bytes], limit: int, declare: bool
) -> None:
    whole = b"".join(chunks)
    headers = [(b"content-length", str(len(whole)).encode())] if declare else []

    async def run() -> tuple[bytes | None, Message | None]:
        try:
            body = await read_body(headers, _receiver(chunks), limit, 5)
        except BodyRefused as error:  # the refusal: a 413, never a partial body
            assert error.status == 413 and len(whole) > limit
            return None, None
        again = replay(body, _receiver([]))
        first = await again()
        return body, first

    body, first = asyncio.run(run())
    if len(whole) <= limit:
        assert body == whole and first is not None
        assert first["body"] == whole and first["more_body"] is False
    else:
        assert body is None


@settings(max_examples=40, deadline=None)
@given(value=st.binary(max_size=12))
def test_a_malformed_content_length_is_refused(value: bytes) -> None:
    headers = [(b"content-length", value)]

    async def run() -> int | None:
        try:
            await read_body(headers, _receiver([b"abc"]), 100, 5)
        except BodyRefused as error:
            return error.status
        return None

    status = asyncio.run(run())
    if value.isdigit() and int(value) <= 100:
        assert status is None
    else:
        assert status == 413
