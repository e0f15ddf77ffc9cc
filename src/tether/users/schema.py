"""The humans' tables, for queries; migration 0006 (``v0006_approvals``) creates them.

``users`` holds local users (an argon2 password hash, an optional TOTP secret encrypted
under the master key) and users first seen through OIDC (no password). ``user_roles`` and
``group_members`` are the roles and groups approvals and the admin API resolve against.
``user_tokens`` holds personal API tokens as SHA-256 digests only, each with an expiry.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    text,
)

from tether.store.schema import UTCDateTime, metadata

ROLES = ("admin", "approver", "auditor")

users = Table(
    "users",
    metadata,
    Column("id", Text, primary_key=True),
    Column("display_name", Text, nullable=True),
    Column("email", Text, nullable=True),
    Column("source", String(16), nullable=False),
    Column("password_hash", Text, nullable=True),
    Column("totp_secret", Text, nullable=True),  # envelope ciphertext (purpose user.totp)
    Column("totp_last_step", BigInteger, nullable=True),  # a TOTP code is used once
    Column("state", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("seal", Text, nullable=True),  # 0015: tether.crypto.seal (with roles and groups)
    # 0023: raised by one at each seal, sealed (tether.crypto.revisions)
    Column("revision", Integer, nullable=False, server_default=text("0")),
    CheckConstraint("source IN ('local', 'oidc')", name="source"),
    CheckConstraint("state IN ('active', 'disabled')", name="state"),
)

user_roles = Table(
    "user_roles",
    metadata,
    Column("user_id", Text, ForeignKey("users.id"), primary_key=True),
    Column("role", String(16), primary_key=True),
    CheckConstraint("role IN ('admin', 'approver', 'auditor')", name="role"),
)

user_groups = Table(
    "user_groups",
    metadata,
    Column("name", Text, primary_key=True),
    Column("description", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

group_members = Table(
    "group_members",
    metadata,
    Column("group_name", Text, ForeignKey("user_groups.name"), primary_key=True),
    Column("user_id", Text, ForeignKey("users.id"), primary_key=True),
)

user_tokens = Table(
    "user_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", Text, ForeignKey("users.id"), nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("token_hash", LargeBinary(32), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("seal", Text, nullable=True),  # 0015: tether.crypto.seal; null: refused
    CheckConstraint("length(token_hash) = 32", name="token_hash_is_digest"),
)
