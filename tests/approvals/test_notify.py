"""Webhook notifications delivered to a real HTTP receiver on loopback: Slack-compatible
body, HMAC signature over timestamp and body, retries on 5xx, one webhook per group."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.approvals.helpers import Clock, http_request, policies, ssh_request
from tether.approvals.config import ApprovalsConfig, ApprovalsConfigError
from tether.approvals.digest import action_digest
from tether.approvals.model import AccessRequest
from tether.approvals.notify import Webhook, WebhookNotifier
from tether.approvals.service import ApprovalService
from tether.store import Store

SECRET = b"s3cret-for-the-receiver"


@dataclass
class Receiver:
    """An ASGI app that records POSTs, failing the first ``fail_first`` with 503."""

    fail_first: int = 0
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    attempts: int = 0
    got: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.attempts += 1
        status = 503 if self.attempts <= self.fail_first else 200
        if status == 200:
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            self.seen.append((scope["path"], headers, body))
            self.got.set()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    app = Receiver(fail_first=2)
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield app, f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


async def test_signed_slack_compatible_delivery_with_retries(
    receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    app, base = receiver
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    hooks = [
        Webhook("sre", base + "/sre", SECRET, 5.0),
        Webhook("finance", base + "/fin", SECRET, 5.0),
    ]
    notifier = WebhookNotifier(hooks, retries=3, backoff=0.05, link_base="https://tether.example")
    policy_set = policies()
    service = ApprovalService(store.engine, lambda: policy_set, clock=Clock(), notify=notifier)
    stop = asyncio.Event()
    worker = asyncio.create_task(notifier.run(stop))
    try:
        _, pending = await service.decide(ssh_request("systemctl restart app"), reason="deploy")
        assert pending is not None
        await asyncio.wait_for(app.got.wait(), 10)
    finally:
        stop.set()
        await worker
        await store.close()
    assert app.attempts == 3 and notifier.delivered == 1  # two 503s, then delivered
    ((path, headers, body),) = app.seen
    assert path == "/sre"  # the rule's approvers are group:sre only
    timestamp = headers["x-tether-timestamp"]
    expected = hmac.new(SECRET, b"v1:" + timestamp.encode() + b":" + body, hashlib.sha256)
    assert headers["x-tether-signature"] == "v1=" + expected.hexdigest()
    assert headers["x-tether-delivery"] == pending.id
    message = json.loads(body)
    assert "systemctl restart app" in message["text"] and "deploy" in message["text"]
    assert message["tether"]["id"] == pending.id and message["tether"]["rule"] == "restart"
    assert message["tether"]["status_url"].startswith("https://tether.example/v1/access-requests/")


async def test_final_client_errors_are_not_retried() -> None:
    attempts = 0

    async def not_found(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        nonlocal attempts
        attempts += 1
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    notifier = WebhookNotifier(
        [Webhook("*", "http://hooks/gone", SECRET, 5.0)], retries=3, backoff=0.01,
        transport=httpx.ASGITransport(app=not_found),
    )  # fmt: skip
    notifier(sample_request())
    stop = asyncio.Event()
    worker = asyncio.create_task(notifier.run(stop))
    while notifier.failed == 0:
        await asyncio.sleep(0.01)
    stop.set()
    await worker
    assert attempts == 1 and notifier.delivered == 0


def sample_request() -> AccessRequest:
    digest = action_digest(http_request("POST", "/v1/invoices/1"))
    now = Clock()()
    return AccessRequest(
        id="ar_1", agent_id="bot", runtime_id=None, task_id="T-1", delegation_user=None,
        owner=None, target="billing", kind="http", action=dict(digest.canonical),
        digest=digest.digest, rule_id="invoices-write", scope="action", required=2,
        approvers=("group:finance",), allow_self=False, valid_for=60, reason=None,
        status="pending", requested_at=now, expires_at=now, decided_at=None,
        decided_reason=None, revision=1,
    )  # fmt: skip


def test_missing_secret_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPROVALS_TEST_HOOK", raising=False)
    config = ApprovalsConfig.model_validate(
        {
            "webhooks": [
                {
                    "group": "sre",
                    "url": "https://hooks.example/x",
                    "secret_env": "APPROVALS_TEST_HOOK",
                }
            ]
        }
    )
    with pytest.raises(ApprovalsConfigError, match="APPROVALS_TEST_HOOK"):
        WebhookNotifier.from_config(config)
    monkeypatch.setenv("APPROVALS_TEST_HOOK", "x")
    assert WebhookNotifier.from_config(config).hooks[0].key == b"x"
    with pytest.raises(ValueError, match="exactly one"):
        ApprovalsConfig.model_validate({"webhooks": [{"group": "sre", "url": "https://h/x"}]})
