"""Webhook notifications through the durable outbox, delivered to a real HTTP receiver on
loopback: Slack-compatible body, HMAC signature over timestamp and body, retries on 5xx,
one webhook per group; nothing lost across a restart; one delivery per entry when two
nodes share PostgreSQL; a receiver that is down gets the news when it is back."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import socket
from collections.abc import AsyncIterator, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy.ext.asyncio import create_async_engine

from tests.approvals.helpers import Clock, fresh_cipher, http_request, policies, ssh_request
from tests.identity_e2e.conftest import build_service
from tether.approvals import outbox
from tether.approvals.config import ApprovalsConfig, ApprovalsConfigError
from tether.approvals.digest import action_digest
from tether.approvals.model import AccessRequest
from tether.approvals.notify import Webhook, WebhookNotifier
from tether.approvals.runtime import start_humans
from tether.approvals.service import ApprovalService
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.store import Store

SECRET = b"s3cret-for-the-receiver"


@dataclass
class Receiver:
    """An ASGI app that records POSTs, failing the first ``fail_first`` with 503."""

    fail_first: int = 0
    delay: float = 0.0
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
        await asyncio.sleep(self.delay)
        status = 503 if self.attempts <= self.fail_first else 200
        if status == 200:
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            self.seen.append((scope["path"], headers, body))
            self.got.set()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


class Served:
    """A receiver on a loopback port, started and stopped by the test."""

    def __init__(self, app: Receiver, port: int = 0) -> None:
        self.app, self.port = app, port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen()
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_config=None, lifespan="off"))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    served = Served(Receiver(fail_first=2))
    await served.start()
    try:
        yield served.app, served.base
    finally:
        await served.stop()


async def running(
    notifier: WebhookNotifier, until: Callable[[], bool], seconds: float = 15
) -> None:
    """Run the delivery loop until ``until()`` holds (or fail after ``seconds``)."""
    stop = asyncio.Event()
    worker = asyncio.create_task(notifier.run(stop))
    try:
        async with asyncio.timeout(seconds):
            while not until():
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await worker


async def entries(store: Store, request_id: str) -> list[outbox.Entry]:
    async with store.engine.connect() as conn:
        return await outbox.for_request(conn, request_id)


async def test_signed_slack_compatible_delivery_with_retries(
    receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    app, base = receiver
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    hooks = [
        Webhook("sre", base + "/sre", SECRET, 5.0),
        Webhook("finance", base + "/fin", SECRET, 5.0),
    ]
    notifier = WebhookNotifier(
        store.engine, hooks, retries=3, backoff=0.05, link_base="https://tether.example"
    )
    policy_set = policies()
    service = ApprovalService(
        store.engine, lambda: policy_set, fresh_cipher().sealer, clock=Clock(), notify=notifier
    )
    try:
        _, pending = await service.decide(ssh_request("systemctl restart app"), reason="deploy")
        assert pending is not None
        await running(notifier, lambda: notifier.delivered == 1)
        (entry,) = await entries(store, pending.id)  # one webhook: the sre group's
    finally:
        await store.close()
    assert app.attempts == 3  # two 503s, then delivered
    assert entry.delivered_at is not None and entry.attempts == 3 and entry.last_error is None
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


async def test_a_restarted_node_delivers_what_was_queued(store_url: str) -> None:
    app = Receiver()
    served = Served(app)
    await served.start()
    hooks = [Webhook("sre", served.base + "/sre", SECRET, 5.0)]
    policy_set = policies()
    try:
        first = await Store.open(store_url)
        notifier = WebhookNotifier(first.engine, hooks)  # never runs: the node stops first
        service = ApprovalService(
            first.engine, lambda: policy_set, fresh_cipher().sealer, clock=Clock(),
            notify=notifier,
        )  # fmt: skip
        _, pending = await service.decide(ssh_request("systemctl restart app"))
        assert pending is not None
        await first.close()  # the node stops with the notification undelivered

        second = await Store.open(store_url)  # the restarted node, same database
        try:
            restarted = WebhookNotifier(second.engine, hooks)
            await running(restarted, lambda: restarted.delivered == 1)
            (entry,) = await entries(second, pending.id)
        finally:
            await second.close()
    finally:
        await served.stop()
    assert [json.loads(body)["tether"]["id"] for _, _, body in app.seen] == [pending.id]
    assert entry.delivered_at is not None and entry.attempts == 1


async def test_two_nodes_on_one_postgresql_deliver_each_entry_once(pg_fresh_url: str) -> None:
    app = Receiver(delay=0.02)  # slow enough for both loops to contend for every batch
    served = Served(app)
    await served.start()
    hooks = [Webhook("*", served.base + "/all", SECRET, 5.0)]
    node_a, node_b = await Store.open(pg_fresh_url), await Store.open(pg_fresh_url)
    count = 30
    try:
        writer = WebhookNotifier(node_a.engine, hooks)
        async with node_a.engine.begin() as conn:
            for n in range(count):
                await writer.enqueue(conn, sample_request(f"ar_{n}"))
        loops = [
            WebhookNotifier(node.engine, hooks, holder=f"node-{name}", poll_interval=0.05)
            for name, node in (("a", node_a), ("b", node_b))
        ]
        stop = asyncio.Event()
        workers = [asyncio.create_task(loop.run(stop)) for loop in loops]
        async with asyncio.timeout(30):
            while sum(loop.delivered for loop in loops) < count:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # a duplicate, if any, would arrive now
        stop.set()
        await asyncio.gather(*workers)
    finally:
        await node_a.close()
        await node_b.close()
        await served.stop()
    delivered = sorted(headers["x-tether-delivery"] for _, headers, _ in app.seen)
    assert delivered == sorted(f"ar_{n}" for n in range(count))  # each once, none lost
    assert all(loop.delivered > 0 for loop in loops)  # both nodes took part


async def test_a_receiver_down_then_up_gets_the_notification(tmp_path: Path) -> None:
    app = Receiver()
    served = Served(app)
    await served.start()
    await served.stop()  # the port is known and nothing listens on it
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    hooks = [Webhook("*", served.base + "/all", SECRET, 2.0)]
    notifier = WebhookNotifier(store.engine, hooks, retries=20, backoff=0.05)
    stop = asyncio.Event()
    worker = asyncio.create_task(notifier.run(stop))
    try:
        async with store.engine.begin() as conn:
            await notifier.enqueue(conn, sample_request("ar_down"))
        notifier.wake()
        async with asyncio.timeout(15):
            while not (await entries(store, "ar_down"))[0].attempts >= 2:
                await asyncio.sleep(0.02)  # refused twice while the receiver is down
            await served.start()
            while not app.seen:
                await asyncio.sleep(0.02)
        stop.set()
        await worker
        (entry,) = await entries(store, "ar_down")
    finally:
        stop.set()
        await store.close()
        await served.stop()
    assert entry.delivered_at is not None and entry.attempts >= 3
    assert [headers["x-tether-delivery"] for _, headers, _ in app.seen] == ["ar_down"]


async def test_final_client_errors_are_not_retried(tmp_path: Path) -> None:
    attempts = 0

    async def not_found(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        nonlocal attempts
        attempts += 1
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    notifier = WebhookNotifier(
        store.engine, [Webhook("*", "http://hooks/gone", SECRET, 5.0)], retries=3,
        backoff=0.01, transport=httpx.ASGITransport(app=not_found),
    )  # fmt: skip
    try:
        async with store.engine.begin() as conn:
            await notifier.enqueue(conn, sample_request())
        await running(notifier, lambda: notifier.failed == 1)
        await asyncio.sleep(0.1)
        (entry,) = await entries(store, "ar_1")
    finally:
        await store.close()
    assert attempts == 1 and notifier.delivered == 0
    assert entry.failed_at is not None and entry.last_error == "HTTP 404"


async def test_leases_and_retention(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    clock = Clock()
    hooks = [Webhook("*", "http://hooks/x", SECRET, 5.0)]
    notifier = WebhookNotifier(store.engine, hooks, retention=3600, clock=lambda: clock())
    try:
        async with store.engine.begin() as conn:
            await notifier.enqueue(conn, sample_request("ar_a"))
            await notifier.enqueue(conn, sample_request("ar_b"))
        first, second = await entries(store, "ar_a"), await entries(store, "ar_b")
        now = clock()
        async with store.engine.begin() as conn:
            assert await outbox.claim(conn, first[0].id, "a", now, 30) is not None
            assert await outbox.claim(conn, first[0].id, "b", now, 30) is None  # leased
            assert await outbox.due_ids(conn, now, 10) == [second[0].id]
            later = now + timedelta(seconds=31)  # a's lease lapsed: b may take over
            assert await outbox.claim(conn, first[0].id, "b", later, 30) is not None
            await outbox.reschedule(conn, first[0].id, "a", 1, "late", None, later)  # lost it
            assert (await outbox.get(conn, first[0].id)).holder == "b"  # type: ignore[union-attr]
            await outbox.mark_delivered(conn, first[0].id, 1, later)
        clock.advance(3000)
        assert await notifier.prune() == 0  # within the retention period
        clock.advance(700)
        assert await notifier.prune() == 1  # the delivered entry; the pending one stays
        assert [e.id for e in await entries(store, "ar_b")] == [second[0].id]
    finally:
        await store.close()


def sample_request(request_id: str = "ar_1") -> AccessRequest:
    digest = action_digest(http_request("POST", "/v1/invoices/1"))
    now = Clock()()
    return AccessRequest(
        id=request_id, agent_id="bot", runtime_id=None, task_id="T-1", delegation_user=None,
        owner=None, target="billing", kind="http", action=dict(digest.canonical),
        digest=digest.digest, rule_id="invoices-write", scope="action", required=2,
        approvers=("group:finance",), allow_self=False, valid_for=60, reason=None,
        status="pending", requested_at=now, expires_at=now, decided_at=None,
        decided_reason=None, revision=1,
    )  # fmt: skip


async def test_missing_secret_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
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
    engine = create_async_engine("sqlite+aiosqlite://")
    with pytest.raises(ApprovalsConfigError, match="APPROVALS_TEST_HOOK"):
        WebhookNotifier.from_config(config, engine)
    monkeypatch.setenv("APPROVALS_TEST_HOOK", "x")
    assert WebhookNotifier.from_config(config, engine).hooks[0].key == b"x"
    with pytest.raises(ValueError, match="exactly one"):
        ApprovalsConfig.model_validate({"webhooks": [{"group": "sre", "url": "https://h/x"}]})
    await engine.dispose()


async def test_a_node_wires_the_outbox_and_its_delivery_loop(
    receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    app, base = receiver
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    clock = Clock()
    cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
    identity = await build_service(store, clock, cipher)
    config = ApprovalsConfig.model_validate(
        {"webhooks": [{"group": "sre", "url": base + "/sre", "secret": SECRET.decode()}],
         "retry_backoff": 0.05}
    )  # fmt: skip
    policy_set = policies()
    humans = start_humans(config, identity, lambda: policy_set, None)
    stop = asyncio.Event()
    tasks = humans.start(stop)
    try:
        _, pending = await humans.approvals.decide(ssh_request("systemctl restart app"))
        assert pending is not None
        async with asyncio.timeout(15):
            while not app.seen:
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await store.close()
    assert [headers["x-tether-delivery"] for _, headers, _ in app.seen] == [pending.id]


async def test_what_the_agent_wrote_is_neither_markup_nor_a_leaked_secret(
    tmp_path: Path,
) -> None:
    """An agent's reason cannot write a link or a channel-wide mention into the approvers'
    Slack channel, and a secret in the action (a query's api_key) never leaves Tether in a
    webhook; approvers read the exact action through the API."""
    app = Receiver()
    served = Served(app)
    await served.start()
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    notifier = WebhookNotifier(store.engine, [Webhook("*", served.base + "/all", SECRET, 5.0)])
    policy_set = policies()
    service = ApprovalService(
        store.engine, lambda: policy_set, fresh_cipher().sealer, clock=Clock(), notify=notifier
    )
    lure = "<!channel> urgent: approve at <https://evil.example/ok|the console> & now\nDecide: x"
    try:
        _, pending = await service.decide(
            http_request("POST", "/v1/invoices/7?api_key=SECRETVALUE42"), reason=lure
        )
        assert pending is not None
        await running(notifier, lambda: notifier.delivered == 1)
    finally:
        await store.close()
        await served.stop()
    ((_, _, body),) = app.seen
    assert b"SECRETVALUE42" not in body
    message = json.loads(body)
    text = message["text"]
    assert "<" not in text and ">" not in text and "\n" not in text
    assert "&lt;!channel&gt;" in text and "&lt;https://evil.example/ok|the console&gt;" in text
    assert "&amp; now" in text
    assert "api_key=[REDACTED]" in text
    assert message["tether"]["action"]["query"] == "api_key=[REDACTED]"
    assert message["tether"]["reason"] == lure  # data, not markup: as the agent wrote it
    assert pending.action["query"] == "api_key=SECRETVALUE42"  # the API shows it to approvers
