"""Records of policy loads: every attempt to load the policy directory, accepted or refused."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.store.schema import policy_loads

LoadStatus = Literal["active", "rejected"]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PolicyLoad:
    """One load attempt. ``version`` and ``rule_count`` are None when the set was rejected."""

    status: LoadStatus
    file_count: int
    version: str | None = None
    rule_count: int | None = None
    error: str | None = None
    loaded_at: datetime = field(default_factory=_now)
    id: int | None = None


async def insert_policy_load(conn: AsyncConnection, load: PolicyLoad) -> int:
    """Insert ``load`` and return its id."""
    values = {
        "version": load.version,
        "loaded_at": load.loaded_at,
        "file_count": load.file_count,
        "rule_count": load.rule_count,
        "status": load.status,
        "error": load.error,
    }
    result = await conn.execute(insert(policy_loads).values(values).returning(policy_loads.c.id))
    return int(result.scalar_one())


async def select_policy_loads(conn: AsyncConnection, limit: int) -> list[PolicyLoad]:
    """The ``limit`` most recent loads, newest first."""
    query = select(policy_loads).order_by(policy_loads.c.id.desc()).limit(limit)
    rows = (await conn.execute(query)).mappings().all()
    return [_from_row(row) for row in rows]


def _from_row(row: Any) -> PolicyLoad:
    loaded_at: datetime = row["loaded_at"]
    if loaded_at.tzinfo is None:  # SQLite keeps no zone; Tether always writes UTC
        loaded_at = loaded_at.replace(tzinfo=UTC)
    return PolicyLoad(
        id=row["id"],
        version=row["version"],
        loaded_at=loaded_at,
        file_count=row["file_count"],
        rule_count=row["rule_count"],
        status=row["status"],
        error=row["error"],
    )
