"""Webhook notifications of new access requests, one webhook per approver group.

The body is Slack-compatible JSON (a ``text`` line an incoming webhook shows as is) with
the whole request under ``tether``. Each POST carries::

    X-Tether-Timestamp: <unix seconds>
    X-Tether-Signature: v1=<hex HMAC-SHA256(secret, "v1:" + timestamp + ":" + body)>
    X-Tether-Delivery:  <request id>

so a receiver checks the signature over the exact bytes, rejects stale timestamps
(replays), and deduplicates on the delivery id (deliveries are at least once).

Security decisions:

* **Never blocks a decision.** :meth:`WebhookNotifier.__call__` only queues; a worker
  task delivers, retrying connection errors, 429 and 5xx with exponential backoff
  (``retry_backoff * 2**attempt``) up to ``retries`` times. Other 4xx answers are final.
  The queue is bounded; when full, the oldest news is dropped and logged (approvers can
  always list pending requests).
* The body carries what an approver needs to decide (agent, task, target, the canonical
  action, rule, reason) and no credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx

from tether.approvals.config import ApprovalsConfig
from tether.approvals.model import AccessRequest

log = logging.getLogger(__name__)

QUEUE_SIZE: Final = 10_000


@dataclass(frozen=True, slots=True)
class Webhook:
    group: str
    url: str
    key: bytes
    timeout: float


def signature(key: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Tether-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(key, b"v1:" + timestamp.encode("ascii") + b":" + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def message(request: AccessRequest, link_base: str | None) -> dict[str, Any]:
    """The Slack-compatible body of one notification."""
    action = json.dumps(dict(request.action), sort_keys=True, ensure_ascii=False)
    text = (
        f"Tether: agent {request.agent_id} (task {request.task_id}) asks for {request.kind} "
        f"on {request.target}: {action} (rule {request.rule_id}, "
        f"{request.required} approval(s) needed)"
    )
    if request.reason:
        text += f". Reason: {request.reason}"
    text += f". Decide: tether approvals show {request.id}"
    body: dict[str, Any] = {"text": text, "tether": request.to_json()}
    if link_base is not None:
        body["tether"]["status_url"] = f"{link_base.rstrip('/')}/v1/access-requests/{request.id}"
    return body


class WebhookNotifier:
    """Queues notifications and delivers them from :meth:`run`."""

    def __init__(
        self,
        hooks: list[Webhook],
        *,
        retries: int = 5,
        backoff: float = 1.0,
        link_base: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hooks, self.retries, self.backoff = hooks, retries, backoff
        self.link_base, self.clock = link_base, clock
        self._transport = transport
        self._queue: asyncio.Queue[tuple[Webhook, AccessRequest]] = asyncio.Queue(QUEUE_SIZE)
        self.delivered = 0
        self.failed = 0

    @classmethod
    def from_config(cls, config: ApprovalsConfig) -> WebhookNotifier:
        """Raises ``ApprovalsConfigError`` when a secret variable is missing."""
        hooks = [Webhook(h.group, h.url, h.signing_key(), h.timeout) for h in config.webhooks]
        return cls(
            hooks, retries=config.retries, backoff=config.retry_backoff,
            link_base=config.link_base,
        )  # fmt: skip

    def __call__(self, request: AccessRequest) -> None:
        groups = {spec.partition(":")[2] for spec in request.approvers if spec.startswith("group:")}
        for hook in self.hooks:
            if hook.group == "*" or hook.group in groups:
                self._put(hook, request)

    def _put(self, hook: Webhook, request: AccessRequest) -> None:
        if self._queue.full():
            dropped = self._queue.get_nowait()
            log.error("approval notification queue full: dropped %s", dropped[1].id)
        self._queue.put_nowait((hook, request))

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver queued notifications until ``stop`` is set."""
        async with httpx.AsyncClient(transport=self._transport) as http:
            while not stop.is_set():
                item = await self._next(stop)
                if item is not None:
                    await self._deliver(http, *item)

    async def _next(self, stop: asyncio.Event) -> tuple[Webhook, AccessRequest] | None:
        getter = asyncio.ensure_future(self._queue.get())
        stopper = asyncio.ensure_future(stop.wait())
        done, _pending = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await getter
        return None

    async def _deliver(
        self, http: httpx.AsyncClient, hook: Webhook, request: AccessRequest
    ) -> bool:
        body = json.dumps(message(request, self.link_base), separators=(",", ":")).encode()
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            timestamp = str(int(self.clock()))
            headers = {
                "Content-Type": "application/json",
                "X-Tether-Timestamp": timestamp,
                "X-Tether-Signature": signature(hook.key, timestamp, body),
                "X-Tether-Delivery": request.id,
            }
            try:
                answer = await http.post(
                    hook.url, content=body, headers=headers, timeout=hook.timeout
                )
            except httpx.HTTPError as error:
                log.warning("approval webhook %s: %s (attempt %d)", hook.group, error, attempt + 1)
                continue
            if answer.is_success:
                self.delivered += 1
                return True
            if answer.status_code != 429 and answer.status_code < 500:
                break
            log.warning("approval webhook %s: HTTP %d (attempt %d)", hook.group,
                        answer.status_code, attempt + 1)  # fmt: skip
        self.failed += 1
        log.error("approval webhook %s: giving up on %s", hook.group, request.id)
        return False
