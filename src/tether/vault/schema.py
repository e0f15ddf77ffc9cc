"""The vault tables, for queries; migration 0005 (``v0005_vault``) creates them.

``vault_secrets.ciphertext`` is the envelope ciphertext (text form of
:meth:`tether.crypto.envelope.EnvelopeCipher.encrypt`); the plaintext is never stored.
``targets.spec`` is the JSON form of the target's validated spec model; ``targets.seal``
(migration 0015) its row seal (:mod:`tether.crypto.seal`).
"""

from __future__ import annotations

from sqlalchemy import JSON, CheckConstraint, Column, Index, Integer, String, Table, Text, text

from tether.store.schema import UTCDateTime, metadata

vault_secrets = Table(
    "vault_secrets",
    metadata,
    Column("name", Text, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("ciphertext", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("version >= 1", name="version"),
)

targets = Table(
    "targets",
    metadata,
    Column("name", Text, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("spec", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("seal", Text, nullable=True),  # 0015: tether.crypto.seal; null: refused
    # 0025: raised by one at each change through Tether, sealed (tether.crypto.revisions)
    Column("revision", Integer, nullable=False, server_default=text("0")),
    CheckConstraint("kind IN ('http', 'ssh', 'postgres')", name="kind"),
    Index("ix_targets_kind", "kind"),
)
