"""What a grant and a pending request are bound to, and the small pieces the flow shares.

:func:`pending_key` is the database's uniqueness key of a pending request and
:func:`grant_key` the key a grant is found by (the grant row's ``digest`` column). Both
bind the same things: the agent, the task, the runtime and the delegating user the request
came with, the rule *as it is defined* (:func:`rule_fingerprint`: a changed rule is a new
rule, whose old grants and pending requests no longer count), and the action digest, or
``*`` for a rule-wide approval. :func:`grant_row` is the grant an approval makes;
:func:`names` whether an approver entry names a user. :class:`ActionDigests` computes an
action's digest once, and only when a rule needing approval is in play.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from tether.approvals.digest import ActionDigest, DigestError, action_digest, canonical_json
from tether.approvals.model import AccessRequest, Ask
from tether.policy.rules import Approval, Rule
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


def person(name: str | None) -> str | None:
    """A user name as user ids are written (NFKC, case-folded): an agent's owner or a
    delegating user recorded as ``Alice`` (or in full-width letters) is the user ``alice``."""
    return None if name is None else unicodedata.normalize("NFKC", name).casefold()


def names(spec: str, user: User, request: AccessRequest) -> bool:
    kind, _, name = spec.partition(":")
    if spec == "owner":
        return request.owner is not None and user.id == person(request.owner)
    if kind == "user":
        return user.id == name
    return kind == "group" and name in user.groups


def rule_fingerprint(rule: Rule) -> str:
    """The SHA-256 of a rule's definition as loaded (its description aside)."""
    source = {key: value for key, value in rule.source.items() if key != "description"}
    text = json.dumps(source, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)  # fmt: skip
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _binding(
    use: str,
    agent_id: str,
    task_id: str,
    rule: Rule,
    digest: str | None,
    runtime_id: str | None,
    delegation: str | None,
    chain: Sequence[str] = (),
    target: str | None = None,
) -> str:
    # A rule-wide key (digest None) names the target the grant was asked for: "an approval
    # for one target never covers another" holds for scope: rule too (an action's digest
    # holds its target already).
    action = digest if digest is not None else canonical_json(["*", target])
    document: dict[str, Any] = {
        "v": 2, "use": use, "agent": agent_id, "task": task_id, "rule": rule.id,
        "definition": rule_fingerprint(rule), "action": action,
        "runtime": runtime_id, "delegation": delegation,
    }  # fmt: skip
    if chain:  # a delegation chain's earlier users: bound too (none: the keys of before)
        document["chain"] = list(chain)
    return hashlib.sha256(canonical_json(document).encode("utf-8", "surrogatepass")).hexdigest()


def grant_key(
    agent_id: str,
    task_id: str,
    rule: Rule,
    digest: str | None,
    runtime_id: str | None,
    delegation: str | None,
    chain: Sequence[str] = (),
    target: str | None = None,
) -> str:
    """The key of a grant for ``digest`` (None: every action of the rule on ``target``)
    under ``rule`` as defined now, for this agent, task, runtime and delegating user (and
    the earlier users of its delegation chain)."""
    return _binding("grant", agent_id, task_id, rule, digest, runtime_id, delegation, chain,
                    target)  # fmt: skip


def grant_keys(
    agent_id: str,
    task_id: str,
    rule: Rule,
    digest: ActionDigest,
    runtime_id: str | None,
    delegation: str | None,
    chain: Sequence[str] = (),
) -> frozenset[str]:
    """The keys of the grants that would cover the action ``digest``: for it, or rule-wide
    on its target."""
    return frozenset(
        grant_key(agent_id, task_id, rule, bound, runtime_id, delegation, chain, digest.target)
        for bound in (digest.digest, None)
    )


def pending_key(ask: Ask, rule: Rule) -> str:
    assert rule.approval is not None
    digest = None if rule.approval.scope == "rule" else ask.action.digest
    return _binding("pending", ask.agent_id, ask.task_id, rule, digest, ask.runtime_id,
                    ask.delegation_user, ask.delegation_chain, ask.action.target)  # fmt: skip


def request_key(request: AccessRequest, rule: Rule) -> str:
    """The pending key ``request`` would have under ``rule`` as defined now (it differs from
    the stored one when the rule changed since the request)."""
    digest = None if request.scope == "rule" else request.digest
    return _binding("pending", request.agent_id, request.task_id, rule, digest, request.runtime_id,
                    request.delegation_user, request.delegation_chain,
                    request.target)  # fmt: skip


def grant_row(request: AccessRequest, rule: Rule, now: datetime) -> dict[str, Any]:
    """The grant ``request``'s approval makes; its ``digest`` column holds its key."""
    digest = None if request.scope == "rule" else request.digest
    key = grant_key(request.agent_id, request.task_id, rule, digest, request.runtime_id,
                    request.delegation_user, request.delegation_chain,
                    request.target)  # fmt: skip
    return {
        "id": "gr_" + secrets.token_hex(12), "request_id": request.id,
        "agent_id": request.agent_id, "task_id": request.task_id, "rule_id": request.rule_id,
        "scope": request.scope, "digest": key,
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


def delegation_chain(request: Mapping[str, Any]) -> tuple[str, ...]:
    """The earlier users of the request's delegation chain, outermost first (``()``: none;
    :mod:`tether.policychain` has already refused a malformed chain)."""
    delegation = request.get("delegation")
    chain = delegation.get("chain") if isinstance(delegation, Mapping) else None
    if not isinstance(chain, list):
        return ()
    return tuple(str(e["user"]) for e in chain if isinstance(e, Mapping) and "user" in e)


def status_path(request_id: str) -> str:
    """The API path an agent polls for the request's decision."""
    return f"/v1/access-requests/{request_id}"


def pending_detail(pending: AccessRequest) -> str:
    """What a refusal says of the access request it raised."""
    return (
        f"access request {pending.id} is {pending.status} "
        f"({pending.approvals}/{pending.required} approvals); status: {status_path(pending.id)}"
    )
