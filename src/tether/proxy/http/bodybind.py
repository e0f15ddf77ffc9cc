"""Approvals bound to an HTTP request's body (``approval.bind_body: true``).

The broker streams bodies and decides before reading them. When the engine answers
``approval_required`` for a rule with ``approval.bind_body``, the approval flow cannot bind
anything without the body, so the broker asks :func:`bind_body` to read it, decide again
with it (the access request, or the grant looked up, is bound to its SHA-256) and, when
that decision allows, forward the very bytes that were decided on.

Security decisions:

* **No cost elsewhere**: nothing here runs unless the decision is already
  ``approval_required``; the body is read only when the deciding rule binds it.
* **Bounded, fail closed**: the body is held in memory up to :data:`MAX_BOUND_BODY` or
  the target's ``max_request_body``, whichever is smaller; a larger body (from
  ``Content-Length`` before reading, or as soon as the count passes it) is refused 413,
  a client that stops sending is refused 408, and either is audited. Nothing is forwarded.
* **What was approved is what is sent**: the buffered bytes are replayed to the forwarder
  as the whole body (:func:`replay`), so the target receives exactly the body whose digest
  the grant holds; a different body is a different action and raises a new request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from starlette.types import Message, Receive, Scope, Send

from tether.approvals.model import AccessRequest
from tether.audit.log import AuditUnavailable
from tether.audit.subject import Subject
from tether.policy.model import Decision
from tether.proxy.http import refusals
from tether.proxy.http.routing import Route
from tether.vault.targets import Target

if TYPE_CHECKING:
    from tether.proxy.http.broker import HttpBroker

log = logging.getLogger(__name__)

MAX_BOUND_BODY: Final = 1024 * 1024  # bytes held in memory to bind an approval to a body

Bound = tuple[Decision, AccessRequest | None, Receive]


class BodyRefused(Exception):
    """The body cannot be bound: refused with ``status`` (413, 408; 499 when the agent left)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def binds_body(broker: HttpBroker, decision: Decision) -> bool:
    """Whether ``decision`` (``approval_required``) comes from a rule binding the body."""
    approvals = broker.services.approvals
    if approvals is None or decision.rule is None:
        return False
    rule = approvals.policies().by_id.get(decision.rule)
    return rule is not None and rule.approval is not None and rule.approval.bind_body


def limit_for(broker: HttpBroker, target: Target) -> int:
    """How many body bytes may be read to bind an approval to them."""
    max_body = broker.plan(target).max_body
    return MAX_BOUND_BODY if max_body is None else min(MAX_BOUND_BODY, max_body)


async def bind_body(
    broker: HttpBroker,
    request: dict[str, Any],
    route: Route,
    target: Target,
    who: Subject,
    decision: Decision,
    scope: Scope,
    receive: Receive,
    send: Send,
    request_id: str,
) -> Bound | None:
    """Decide again with the body when the deciding rule binds it: the new decision, its
    access request and the ``receive`` to forward with; unchanged when the rule does not
    bind the body; None when the body was refused (answered and audited here)."""
    if not binds_body(broker, decision):
        return decision, None, receive
    limit = limit_for(broker, target)
    try:
        body = await read_body(scope["headers"], receive, limit,
                               broker.config.client_body_timeout)  # fmt: skip
    except BodyRefused as refused:
        await _refuse(broker, route, who, decision, refused, scope, receive, send, request_id)
        return None
    decided, pending = await broker._decide(request, scope["headers"], body=body)
    return decided, pending, replay(body, receive)


async def read_body(
    headers: list[tuple[bytes, bytes]], receive: Receive, limit: int, timeout: float
) -> bytes:
    """The whole request body, at most ``limit`` bytes (else :class:`BodyRefused`, 413)."""
    too_big = BodyRefused(
        413, f"request body larger than {limit} bytes: an approval bound to the body "
             "(approval.bind_body) reads it whole first",
    )  # fmt: skip
    for name, value in headers:
        if name == b"content-length" and (not value.isdigit() or int(value) > limit):
            raise too_big
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout(timeout):
                message = await receive()
        except TimeoutError:
            raise BodyRefused(408, "the agent stopped sending the request body") from None
        if message["type"] == "http.disconnect":
            raise BodyRefused(499, "the agent disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` giving ``body`` whole once, then whatever the connection says next."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


async def _refuse(
    broker: HttpBroker,
    route: Route,
    who: Subject,
    decision: Decision,
    refused: BodyRefused,
    scope: Scope,
    receive: Receive,
    send: Send,
    request_id: str,
) -> None:
    auditor = broker.services.auditor
    if auditor is not None:
        try:
            await auditor.emit(auditor.http_exchange_event(
                who, target=route.target, method=scope["method"], path=route.path,
                status=refused.status, decision=decision.decision, rule=decision.rule,
                detail={"reason": "bind-body", "error": refused.reason,
                        "request_id": request_id},
            ))  # fmt: skip
        except AuditUnavailable:
            log.error("audit trail unavailable; a refused bound body went unrecorded")
    if refused.status == 499:
        return  # nobody is left to answer
    try:
        await refusals.plain(refused.status, refused.reason, request_id)(scope, receive, send)
    except OSError:
        log.debug("the agent left before its refusal was sent")
