"""approvals: users, roles, groups, personal API tokens, access requests, votes and grants.

Constraints carry the security rules into the database (see ``tether.approvals.schema``
and ``tether.users.schema``): token secrets are 32-byte digests only; a pending request
holds a UNIQUE ``pending_key`` (two identical concurrent requests make one row) that a
decided request gives up; a user votes once per request; a request has at most one grant,
and a grant bound to one action carries that action's digest.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    _users()
    _requests()


def downgrade() -> None:
    op.drop_index("ix_grants_agent_id_task_id_rule_id", table_name="grants")
    op.drop_table("grants")
    op.drop_table("approval_votes")
    op.drop_index("ix_access_requests_agent_id_task_id", table_name="access_requests")
    op.drop_index("ix_access_requests_status_updated_at", table_name="access_requests")
    op.drop_table("access_requests")
    op.drop_index("ix_user_tokens_user_id", table_name="user_tokens")
    for table in ("user_tokens", "group_members", "user_groups", "user_roles", "users"):
        op.drop_table(table)


def _users() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text, nullable=True),
        sa.Column("email", sa.Text, nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=True),
        sa.Column("totp_secret", sa.Text, nullable=True),
        sa.Column("totp_last_step", sa.BigInteger, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.CheckConstraint("source IN ('local', 'oidc')", name=op.f("ck_users_source")),
        sa.CheckConstraint("state IN ('active', 'disabled')", name=op.f("ck_users_state")),
    )
    op.create_table(
        "user_roles",
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "role", name=op.f("pk_user_roles")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_roles_user_id_users")
        ),
        sa.CheckConstraint(
            "role IN ('admin', 'approver', 'auditor')", name=op.f("ck_user_roles_role")
        ),
    )
    op.create_table(
        "user_groups",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_user_groups")),
    )
    op.create_table(
        "group_members",
        sa.Column("group_name", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("group_name", "user_id", name=op.f("pk_group_members")),
        sa.ForeignKeyConstraint(
            ["group_name"],
            ["user_groups.name"],
            name=op.f("fk_group_members_group_name_user_groups"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_group_members_user_id_users")
        ),
    )
    op.create_table(
        "user_tokens",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.Column("last_used_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_user_tokens_token_hash")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_tokens_user_id_users")
        ),
        sa.CheckConstraint(
            "length(token_hash) = 32", name=op.f("ck_user_tokens_token_hash_is_digest")
        ),
    )
    op.create_index("ix_user_tokens_user_id", "user_tokens", ["user_id"])


def _requests() -> None:
    op.create_table(
        "access_requests",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("agent_id", sa.Text, nullable=False),
        sa.Column("runtime_id", sa.Text, nullable=True),
        sa.Column("task_id", sa.Text, nullable=False),
        sa.Column("delegation_user", sa.Text, nullable=True),
        sa.Column("owner", sa.Text, nullable=True),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("action", sa.JSON, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("rule_id", sa.Text, nullable=False),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("required", sa.Integer, nullable=False),
        sa.Column("approvers", sa.JSON, nullable=False),
        sa.Column("allow_self", sa.Boolean, nullable=False),
        sa.Column("valid_for", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("pending_key", sa.String(64), nullable=True),
        sa.Column("requested_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("decided_at", _TS, nullable=True),
        sa.Column("decided_reason", sa.Text, nullable=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_requests")),
        sa.UniqueConstraint("pending_key", name=op.f("uq_access_requests_pending_key")),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'denied', 'cancelled', 'expired')",
            name=op.f("ck_access_requests_status"),
        ),
        sa.CheckConstraint("scope IN ('action', 'rule')", name=op.f("ck_access_requests_scope")),
        sa.CheckConstraint(
            "required >= 1 AND valid_for >= 1", name=op.f("ck_access_requests_positive")
        ),
        sa.CheckConstraint(
            "(status = 'pending') = (pending_key IS NOT NULL)",
            name=op.f("ck_access_requests_pending_key"),
        ),
    )
    op.create_index(
        "ix_access_requests_status_updated_at", "access_requests", ["status", "updated_at"]
    )
    op.create_index(
        "ix_access_requests_agent_id_task_id", "access_requests", ["agent_id", "task_id"]
    )
    op.create_table(
        "approval_votes",
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("vote", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("request_id", "user_id", name=op.f("pk_approval_votes")),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["access_requests.id"],
            name=op.f("fk_approval_votes_request_id_access_requests"),
        ),
        sa.CheckConstraint("vote IN ('approve', 'deny')", name=op.f("ck_approval_votes_vote")),
    )
    op.create_table(
        "grants",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("agent_id", sa.Text, nullable=False),
        sa.Column("task_id", sa.Text, nullable=False),
        sa.Column("rule_id", sa.Text, nullable=False),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("digest", sa.String(64), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.Column("revoked_reason", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_grants")),
        sa.UniqueConstraint("request_id", name=op.f("uq_grants_request_id")),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["access_requests.id"],
            name=op.f("fk_grants_request_id_access_requests"),
        ),
        sa.CheckConstraint("scope IN ('action', 'rule')", name=op.f("ck_grants_scope")),
        sa.CheckConstraint(
            "scope = 'rule' OR digest IS NOT NULL", name=op.f("ck_grants_action_has_digest")
        ),
    )
    op.create_index(
        "ix_grants_agent_id_task_id_rule_id", "grants", ["agent_id", "task_id", "rule_id"]
    )
