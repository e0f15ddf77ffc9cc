"""The audit tables, for queries; migration 0003 (``v0003_audit``) creates them.

``audit_events`` holds one row per event, every field a column (so that search can use
indexes and verification recomputes each hash from exactly what is stored); ``action``,
``detail`` and ``actor_chain`` are canonical JSON text (:func:`tether.audit.canonical.json_text`),
not a JSON column type, so that what is read back is byte for byte what was hashed.
``audit_checkpoints`` holds the signed checkpoints. Both are append-only: the migration
installs triggers that refuse ``UPDATE`` and ``DELETE`` on them, except (migration 0026) the
deletion of rows up to the newest signed marker of ``audit_prunes``, which
:mod:`tether.audit.prune` writes once the rows it deletes are archived.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, String, Table, Text

from tether.store.schema import UTCDateTime, metadata

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("id", String(64), nullable=False),
    Column("time", UTCDateTime, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("agent", Text, nullable=True),
    Column("runtime", Text, nullable=True),
    Column("task", Text, nullable=True),
    Column("user", Text, nullable=True),
    Column("actor_chain", Text, nullable=False),
    Column("target", Text, nullable=True),
    Column("action", Text, nullable=False),
    Column("decision", String(32), nullable=True),
    Column("rule", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Column("policy_version", Text, nullable=True),
    Column("session_id", Text, nullable=True),
    Column("source_ip", Text, nullable=True),
    Column("bytes_in", BigInteger, nullable=True),
    Column("bytes_out", BigInteger, nullable=True),
    Column("rows", BigInteger, nullable=True),
    Column("duration_ms", Float(precision=53), nullable=True),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_events_time", "time"),
    Index("ix_audit_events_agent_seq", "agent", "seq"),
    Index("ix_audit_events_session_id_seq", "session_id", "seq"),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("time", UTCDateTime, nullable=False),
    Column("kid", Text, nullable=False),
    Column("signature", Text, nullable=False),  # base64url Ed25519 signature
)

audit_prunes = Table(
    "audit_prunes",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("time", UTCDateTime, nullable=False),
    Column("archive_sha256", String(64), nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("kid", Text, nullable=False),
    Column("signature", Text, nullable=False),  # base64url Ed25519 signature
)
