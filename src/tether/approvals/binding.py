"""What a grant and a pending request are bound to, and the small pieces the flow shares.

:func:`pending_key` is the database's uniqueness key of a pending request (agent, task,
rule and action digest, or ``*`` for a rule-wide approval); :func:`grant_row` the grant an
approval makes; :func:`names` whether an approver entry names a user. :class:`ActionDigests`
computes an action's digest once, and only when a rule needing approval is in play.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from tether.approvals.digest import ActionDigest, DigestError, action_digest
from tether.approvals.model import AccessRequest, Ask
from tether.policy.rules import Approval
from tether.users.store import User


class Bell:
    """Wakes every waiter when something changed (long polls and the event stream)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def ring(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


class ActionDigests:
    """The digests of one request's action (with and without the HTTP body), made on demand;
    None when the action does not normalise (the engine denies it anyway), or when a rule
    binds the body and the caller gave none (an absent body is not an empty one)."""

    def __init__(self, request: Mapping[str, Any], body: bytes | None, default_schema: str):
        self.request, self.body, self.default_schema = request, body, default_schema
        self._made: dict[bool, ActionDigest | None] = {}

    def for_rule(self, approval: Approval | None) -> ActionDigest | None:
        bind_body = approval is not None and approval.bind_body
        if bind_body and self.body is None:
            return None  # the front-end did not read the body: nothing to bind, refuse
        if bind_body not in self._made:
            try:
                self._made[bind_body] = action_digest(
                    self.request, body=self.body, bind_body=bind_body,
                    default_schema=self.default_schema,
                )  # fmt: skip
            except DigestError:
                self._made[bind_body] = None
        return self._made[bind_body]


def names(spec: str, user: User, request: AccessRequest) -> bool:
    kind, _, name = spec.partition(":")
    if spec == "owner":
        return request.owner is not None and user.id == request.owner
    if kind == "user":
        return user.id == name
    return kind == "group" and name in user.groups


def pending_key(ask: Ask, approval: Approval) -> str:
    digest = "*" if approval.scope == "rule" else ask.action.digest
    parts = (ask.agent_id, ask.task_id, ask.rule_id, digest)
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def grant_row(request: AccessRequest, now: datetime) -> dict[str, Any]:
    return {
        "id": "gr_" + secrets.token_hex(12), "request_id": request.id,
        "agent_id": request.agent_id, "task_id": request.task_id, "rule_id": request.rule_id,
        "scope": request.scope, "digest": None if request.scope == "rule" else request.digest,
        "created_at": now, "expires_at": now + timedelta(seconds=request.valid_for),
        "revoked_at": None, "revoked_reason": None,
    }  # fmt: skip


def ident(value: object) -> str | None:
    if isinstance(value, Mapping):
        ident = value.get("id")
        if isinstance(ident, str) and ident:
            return ident
    return None


def delegation_user(request: Mapping[str, Any]) -> str | None:
    delegation = request.get("delegation")
    if isinstance(delegation, Mapping) and isinstance(delegation.get("user"), str):
        return str(delegation["user"])
    return None


def status_path(request_id: str) -> str:
    """The API path an agent polls for the request's decision."""
    return f"/v1/access-requests/{request_id}"


def pending_detail(pending: AccessRequest) -> str:
    """What a refusal says of the access request it raised."""
    return (
        f"access request {pending.id} is {pending.status} "
        f"({pending.approvals}/{pending.required} approvals); status: {status_path(pending.id)}"
    )
