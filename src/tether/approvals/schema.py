"""The approval tables, for queries; migration 0006 (``v0006_approvals``) creates them.

Security rules the database holds as well as the code:

* **One pending request per action.** ``pending_key`` (a digest of agent, task, rule and
  action digest, or ``*`` for a rule-wide request) is set while a request is pending and
  cleared when it is decided, and it is UNIQUE: two concurrent identical requests, on one
  node or two, make one row. A CHECK ties it to the status.
* **Distinct approvers.** A vote's key is (request, user): nobody votes twice.
* **Sealed** (migrations 0017 and 0018, :mod:`tether.approvals.store`): what a request
  was made with (everything but its status and times of decision), each vote, each grant.
* **One grant per request**, bound to agent, task, rule and (for ``scope = 'action'``) the
  action digest, with a hard expiry; revoking sets ``revoked_at``, never deletes. Sealed
  (migration 0017, :mod:`tether.approvals.store`): a grant whose seal does not verify
  counts for nothing.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from tether.store.schema import UTCDateTime, metadata

STATUSES = ("pending", "approved", "denied", "cancelled", "expired")

access_requests = Table(
    "access_requests",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("agent_id", Text, nullable=False),
    Column("runtime_id", Text, nullable=True),
    Column("task_id", Text, nullable=False),
    Column("delegation_user", Text, nullable=True),
    Column("delegation_chain", JSON, nullable=True),  # 0014: a chain's earlier users
    Column("owner", Text, nullable=True),
    Column("target", Text, nullable=False),
    Column("kind", String(8), nullable=False),
    Column("action", JSON, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("rule_id", Text, nullable=False),
    Column("scope", String(8), nullable=False),
    Column("required", Integer, nullable=False),
    Column("approvers", JSON, nullable=False),
    Column("allow_self", Boolean, nullable=False),
    Column("valid_for", Integer, nullable=False),
    Column("reason", Text, nullable=True),
    Column("status", String(16), nullable=False),
    Column("pending_key", String(64), nullable=True, unique=True),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("decided_at", UTCDateTime, nullable=True),
    Column("decided_reason", Text, nullable=True),
    Column("revision", Integer, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("seal", Text, nullable=True),  # 0018: the columns written once; null: no vote
    CheckConstraint(
        "status IN ('pending', 'approved', 'denied', 'cancelled', 'expired')", name="status"
    ),
    CheckConstraint("scope IN ('action', 'rule')", name="scope"),
    CheckConstraint("required >= 1 AND valid_for >= 1", name="positive"),
    CheckConstraint("(status = 'pending') = (pending_key IS NOT NULL)", name="pending_key"),
    Index("ix_access_requests_status_updated_at", "status", "updated_at"),
    Index("ix_access_requests_agent_id_task_id", "agent_id", "task_id"),
)

approval_votes = Table(
    "approval_votes",
    metadata,
    Column("request_id", String(40), ForeignKey("access_requests.id"), primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("vote", String(8), nullable=False),
    Column("reason", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("seal", Text, nullable=True),  # 0018: tether.crypto.seal; null: does not count
    CheckConstraint("vote IN ('approve', 'deny')", name="vote"),
)

grants = Table(
    "grants",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("request_id", String(40), ForeignKey("access_requests.id"), nullable=False, unique=True),
    Column("agent_id", Text, nullable=False),
    Column("task_id", Text, nullable=False),
    Column("rule_id", Text, nullable=False),
    Column("scope", String(8), nullable=False),
    Column("digest", String(64), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("revoked_reason", Text, nullable=True),
    Column("seal", Text, nullable=True),  # 0017: tether.crypto.seal; null: not counted
    CheckConstraint("scope IN ('action', 'rule')", name="scope"),
    CheckConstraint("scope = 'rule' OR digest IS NOT NULL", name="action_has_digest"),
    Index("ix_grants_agent_id_task_id_rule_id", "agent_id", "task_id", "rule_id"),
)
