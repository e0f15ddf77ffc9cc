"""Webhook notifications of new access requests, one webhook per approver group.

The body is Slack-compatible JSON (a ``text`` line an incoming webhook shows as is) with
the whole request under ``tether``. Each POST carries::

    X-Tether-Timestamp: <unix seconds>
    X-Tether-Signature: v1=<hex HMAC-SHA256(secret, "v1:" + timestamp + ":" + body)>
    X-Tether-Delivery:  <request id>

so a receiver checks the signature over the exact bytes, rejects stale timestamps
(replays), and deduplicates on the delivery id (deliveries are at least once).

Security and reliability decisions:

* **Durable, never lost once committed.** :meth:`WebhookNotifier.enqueue` writes one
  outbox entry per matching webhook (:mod:`tether.approvals.outbox`) in the transaction
  that creates the access request; a restart, a crash or a receiver that is down loses
  nothing: whichever node runs :meth:`WebhookNotifier.run` over the same database
  delivers it later.
* **One node delivers an entry at a time** (a lease on the entry, see
  :mod:`tether.approvals.outbox`): exactly once in the normal case, at least once when a
  node stalls past its lease after sending.
* **Never blocks a decision.** Enqueueing is one INSERT; the delivery loop retries
  connection errors, 429 and 5xx with exponential backoff (``retry_backoff * 2**n`` after
  the n+1-th failed attempt) up to ``retries`` times, then gives up (the entry keeps the
  last error). Other 4xx answers are final. Delivered and given-up entries are deleted
  after ``notification_retention``.
* The body carries what an approver needs to decide (agent, task, target, the canonical
  action, rule, reason) and no credential; the signing secret stays in the configuration,
  never in the database.
* **A webhook is outside Tether, and what the agent wrote is not markup.** The body goes
  through the audit trail's :class:`~tether.audit.redact.Redactor` (a password in
  ``ALTER ROLE ... PASSWORD '...'``, an ``api_key=`` in a query, a bearer token in a reason
  are replaced, as in the trail; approvers read the exact action with ``tether approvals
  show``), and in ``text`` — which Slack renders — ``&``, ``<`` and ``>`` are escaped as
  Slack asks and control characters become spaces, so an agent's reason or path cannot
  write a link, a ``<!channel>`` mention or a line of its own into the approvers' channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.approvals import outbox
from tether.approvals.config import ApprovalsConfig
from tether.approvals.model import AccessRequest
from tether.audit.redact import Redactor

log = logging.getLogger(__name__)

BATCH: Final = 20  # entries claimed and attempted together
LEASE_MARGIN: Final = 30.0  # seconds a lease outlives the slowest webhook's timeout
PRUNE_EVERY: Final = 300.0  # seconds between deletions of old entries


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


_SLACK_ESCAPES: Final = {ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;"}
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def slack_text(value: str) -> str:
    """``value`` as literal text in a Slack message: control characters as spaces, and
    ``&``, ``<``, ``>`` escaped (Slack reads ``<...>`` as links and mentions)."""
    return _CONTROL.sub(" ", value).translate(_SLACK_ESCAPES)


def message(
    request: AccessRequest, link_base: str | None, redactor: Redactor | None = None
) -> dict[str, Any]:
    """The Slack-compatible body of one notification, with secrets redacted."""
    redact = redactor or Redactor()
    tether = redact.json(request.to_json())
    action = json.dumps(tether["action"], sort_keys=True, ensure_ascii=False)
    text = (
        f"Tether: agent {request.agent_id} (task {request.task_id}) asks for {request.kind} "
        f"on {request.target}: {action} (rule {request.rule_id}, "
        f"{request.required} approval(s) needed)"
    )
    if tether["reason"]:
        text += f". Reason: {tether['reason']}"
    text += f". Decide: tether approvals show {request.id}"
    body: dict[str, Any] = {"text": slack_text(text), "tether": tether}
    if link_base is not None:
        body["tether"]["status_url"] = f"{link_base.rstrip('/')}/v1/access-requests/{request.id}"
    return body


class WebhookNotifier:
    """Writes notifications to the outbox and delivers them from :meth:`run`."""

    def __init__(
        self,
        engine: AsyncEngine,
        hooks: list[Webhook],
        *,
        retries: int = 5,
        backoff: float = 1.0,
        link_base: str | None = None,
        retention: float = 7 * 86400.0,
        poll_interval: float = 2.0,
        holder: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        redactor: Redactor | None = None,
    ) -> None:
        self.redactor = redactor or Redactor()
        self.engine, self.hooks, self.retries, self.backoff = engine, hooks, retries, backoff
        self.link_base, self.retention, self.poll_interval = link_base, retention, poll_interval
        self.holder = holder or "notifier-" + secrets.token_hex(8)
        self.clock = clock
        self.lease_ttl = max((h.timeout for h in hooks), default=10.0) + LEASE_MARGIN
        self._transport = transport
        self._by_address = {(h.group, h.url): h for h in hooks}
        self._wake = asyncio.Event()
        self._soonest: datetime | None = None  # the earliest retry this node scheduled
        self._pruned = -PRUNE_EVERY
        self.delivered = 0
        self.failed = 0

    @classmethod
    def from_config(
        cls, config: ApprovalsConfig, engine: AsyncEngine, redactor: Redactor | None = None
    ) -> WebhookNotifier:
        """Raises ``ApprovalsConfigError`` when a secret variable is missing; ``redactor``
        is the audit trail's (its ``sensitive_headers`` and ``sensitive_fields``)."""
        hooks = [Webhook(h.group, h.url, h.signing_key(), h.timeout) for h in config.webhooks]
        return cls(
            engine, hooks, retries=config.retries, backoff=config.retry_backoff,
            link_base=config.link_base, retention=float(config.notification_retention),
            redactor=redactor,
        )  # fmt: skip

    # --- writing --------------------------------------------------------------------------

    def rows(self, request: AccessRequest) -> list[dict[str, Any]]:
        """The outbox entries announcing ``request``: one per webhook of its groups."""
        groups = {spec.partition(":")[2] for spec in request.approvers if spec.startswith("group:")}
        now, body = self.clock(), message(request, self.link_base, self.redactor)
        return [
            {"id": "nt_" + secrets.token_hex(12), "request_id": request.id, "channel": hook.group,
             "url": hook.url, "payload": body, "created_at": now}
            for hook in self.hooks
            if hook.group == "*" or hook.group in groups
        ]  # fmt: skip

    async def enqueue(self, conn: AsyncConnection, request: AccessRequest) -> None:
        """Write the notifications of ``request`` in the caller's transaction."""
        await outbox.enqueue(conn, self.rows(request))

    def wake(self) -> None:
        """Deliver now rather than at the next poll (after the enqueueing commit)."""
        self._wake.set()

    # --- delivering -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver due entries until ``stop`` is set; database errors are logged and the
        loop carries on at the next poll."""
        async with httpx.AsyncClient(transport=self._transport) as http:
            while not stop.is_set():
                attempted = 0
                try:
                    attempted = await self.deliver_due(http)
                    if time.monotonic() - self._pruned >= PRUNE_EVERY:
                        await self.prune()
                        self._pruned = time.monotonic()
                except (SQLAlchemyError, OSError) as error:
                    log.error("approval notifications: the outbox is unavailable: %s", error)
                except Exception:  # a bug in one delivery must not end every later one
                    log.exception("approval notifications: a delivery round failed")
                if not attempted:
                    await self._sleep(stop)

    async def _sleep(self, stop: asyncio.Event) -> None:
        timeout = self.poll_interval
        if self._soonest is not None:
            timeout = min(timeout, max(0.0, (self._soonest - self.clock()).total_seconds()))
            self._soonest = None
        waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
        _done, pending = await asyncio.wait(
            waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in pending:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        self._wake.clear()

    async def deliver_due(self, http: httpx.AsyncClient) -> int:
        """Claim up to :data:`BATCH` due entries and attempt each once; how many."""
        now = self.clock()
        async with self.engine.connect() as conn:
            candidates = await outbox.due_ids(conn, now, BATCH)
        claimed: list[outbox.Entry] = []
        for entry_id in candidates:
            async with self.engine.begin() as conn:
                entry = await outbox.claim(conn, entry_id, self.holder, now, self.lease_ttl)
            if entry is not None:
                claimed.append(entry)
        await asyncio.gather(*(self._attempt(http, entry) for entry in claimed))
        return len(claimed)

    async def prune(self) -> int:
        """Delete entries delivered or given up longer than ``retention`` ago."""
        before = self.clock() - timedelta(seconds=self.retention)
        async with self.engine.begin() as conn:
            return await outbox.prune(conn, before)

    async def _attempt(self, http: httpx.AsyncClient, entry: outbox.Entry) -> None:
        hook = self._by_address.get((entry.channel, entry.url))
        if hook is None:
            await self._failed(entry, "the webhook is no longer configured", retryable=False)
            return
        body = json.dumps(entry.payload, separators=(",", ":")).encode()
        timestamp = str(int(self.clock().timestamp()))
        headers = {
            "Content-Type": "application/json",
            "X-Tether-Timestamp": timestamp,
            "X-Tether-Signature": signature(hook.key, timestamp, body),
            "X-Tether-Delivery": entry.request_id,
        }
        try:
            answer = await http.post(hook.url, content=body, headers=headers, timeout=hook.timeout)
        except httpx.HTTPError as error:
            await self._failed(entry, str(error) or type(error).__name__, retryable=True)
            return
        except (httpx.InvalidURL, ValueError) as error:  # not an HTTPError: never retried
            await self._failed(entry, f"the webhook's URL is unusable: {error}", retryable=False)
            return
        if answer.is_success:
            async with self.engine.begin() as conn:
                await outbox.mark_delivered(conn, entry.id, entry.attempts + 1, self.clock())
            self.delivered += 1
            return
        retryable = answer.status_code == 429 or answer.status_code >= 500
        await self._failed(entry, f"HTTP {answer.status_code}", retryable=retryable)

    async def _failed(self, entry: outbox.Entry, error: str, *, retryable: bool) -> None:
        attempts, now = entry.attempts + 1, self.clock()
        retry_at = None
        if retryable and attempts <= self.retries:
            retry_at = now + timedelta(seconds=self.backoff * 2 ** (attempts - 1))
            if self._soonest is None or retry_at < self._soonest:
                self._soonest = retry_at
            log.warning("approval webhook %s: %s (attempt %d)", entry.channel, error, attempts)
        else:
            self.failed += 1
            log.error("approval webhook %s: giving up on %s after %d attempt(s): %s",
                      entry.channel, entry.request_id, attempts, error)  # fmt: skip
        async with self.engine.begin() as conn:
            await outbox.reschedule(conn, entry.id, self.holder, attempts, error, retry_at, now)
