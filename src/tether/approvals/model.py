"""The values of the approval flow, and its errors.

Errors (each carries the HTTP status the API answers with)::

    ApprovalError
    ├── NotFound        no such access request (404)
    ├── NotAllowed      this user may not vote on it: not an approver, or self-approval (403)
    ├── Conflict        not pending any more, or the user already voted (409)
    └── Unusable        the rule is unknown or needs no approval, the action does not parse (400)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tether.approvals.digest import ActionDigest


class ApprovalError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ApprovalError):
    status = 404


class NotAllowed(ApprovalError):
    status = 403


class Conflict(ApprovalError):
    status = 409


class Unusable(ApprovalError):
    status = 400


@dataclass(frozen=True, slots=True)
class Ask:
    """What a front-end (or an agent asking ahead) wants approved."""

    agent_id: str
    task_id: str
    rule_id: str
    action: ActionDigest
    runtime_id: str | None = None
    delegation_user: str | None = None
    reason: str | None = None
    delegation_chain: tuple[str, ...] = ()  # a chain's earlier users, outermost first


@dataclass(frozen=True, slots=True)
class Vote:
    user_id: str
    vote: str  # approve | deny
    reason: str | None
    created_at: datetime
    counts: bool = True  # the voter is an active user now (a disabled user's vote does not)


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    request_id: str
    agent_id: str
    task_id: str
    rule_id: str
    scope: str
    digest: str | None
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None

    def live(self, now: datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """One access request with its votes and, once approved, its grant."""

    id: str
    agent_id: str
    runtime_id: str | None
    task_id: str
    delegation_user: str | None
    owner: str | None
    target: str
    kind: str
    action: Mapping[str, Any]
    digest: str
    rule_id: str
    scope: str
    required: int
    approvers: tuple[str, ...]
    allow_self: bool
    valid_for: int
    reason: str | None
    status: str
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_reason: str | None
    revision: int
    votes: tuple[Vote, ...] = ()
    grant: Grant | None = field(default=None)
    updated_at: datetime | None = None
    delegation_chain: tuple[str, ...] = ()  # a chain's earlier users, outermost first

    @property
    def approvals(self) -> int:
        """The approvals that count: those of voters who are active users now."""
        return sum(1 for v in self.votes if v.vote == "approve" and v.counts)

    def to_json(self) -> dict[str, Any]:
        grant = self.grant
        return {
            "id": self.id,
            "status": self.status,
            "agent_id": self.agent_id,
            "runtime_id": self.runtime_id,
            "task_id": self.task_id,
            "delegation_user": self.delegation_user,
            "delegation_chain": list(self.delegation_chain),
            "owner": self.owner,
            "target": self.target,
            "kind": self.kind,
            "action": dict(self.action),
            "digest": self.digest,
            "rule": self.rule_id,
            "scope": self.scope,
            "required_approvals": self.required,
            "approvals": self.approvals,
            "approvers": list(self.approvers),
            "valid_for": self.valid_for,
            "reason": self.reason,
            "requested_at": self.requested_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "decided_at": None if self.decided_at is None else self.decided_at.isoformat(),
            "decided_reason": self.decided_reason,
            "revision": self.revision,
            "votes": [_vote_json(v) for v in self.votes],
            "grant": None
            if grant is None
            else {
                "expires_at": grant.expires_at.isoformat(),
                "revoked": grant.revoked_at is not None,
            },
        }


def _vote_json(vote: Vote) -> dict[str, Any]:
    return {
        "user": vote.user_id,
        "vote": vote.vote,
        "reason": vote.reason,
        "at": vote.created_at.isoformat(),
        "counts": vote.counts,
    }
