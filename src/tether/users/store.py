"""Repository functions for users, roles, groups and personal API tokens.

Each takes an ``AsyncConnection`` and leaves the transaction to the caller, and takes the
clock's ``now`` rather than reading one (the conventions of :mod:`tether.store.identity`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.store.identity import upsert_insert
from tether.users.schema import group_members, user_groups, user_roles, user_tokens, users


@dataclass(frozen=True, slots=True)
class User:
    """A human: identity, state, roles and groups (never the password hash)."""

    id: str
    display_name: str | None
    email: str | None
    source: str
    state: str
    roles: frozenset[str]
    groups: frozenset[str]
    has_totp: bool
    created_at: datetime

    @property
    def active(self) -> bool:
        return self.state == "active"


@dataclass(frozen=True, slots=True)
class UserToken:
    """A personal API token's record (its secret is never stored)."""

    id: str
    user_id: str
    name: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


async def insert_user(
    conn: AsyncConnection,
    *,
    id: str,
    source: str,
    now: datetime,
    password_hash: str | None = None,
    display_name: str | None = None,
    email: str | None = None,
) -> None:
    await conn.execute(
        insert(users).values(
            id=id, display_name=display_name, email=email, source=source,
            password_hash=password_hash, totp_secret=None, totp_last_step=None,
            state="active", created_at=now, updated_at=now,
        )
    )  # fmt: skip


async def credentials_row(conn: AsyncConnection, user_id: str) -> RowMapping | None:
    """The user's row with its password hash and TOTP fields (for login only)."""
    result = await conn.execute(select(users).where(users.c.id == user_id))
    return result.mappings().first()


async def get_user(conn: AsyncConnection, user_id: str) -> User | None:
    row = await credentials_row(conn, user_id)
    if row is None:
        return None
    return await _user(conn, row)


async def user_state(conn: AsyncConnection, user_id: str) -> str | None:
    """The user's state (``active``, ``disabled``), None for an id Tether has no user of."""
    state = await conn.scalar(select(users.c.state).where(users.c.id == user_id))
    return None if state is None else str(state)


async def list_users(conn: AsyncConnection) -> list[User]:
    rows = (await conn.execute(select(users).order_by(users.c.id))).mappings().all()
    return [await _user(conn, row) for row in rows]


async def _user(conn: AsyncConnection, row: RowMapping) -> User:
    roles = await conn.scalars(select(user_roles.c.role).where(user_roles.c.user_id == row["id"]))
    groups = await conn.scalars(
        select(group_members.c.group_name).where(group_members.c.user_id == row["id"])
    )
    return User(
        id=row["id"], display_name=row["display_name"], email=row["email"],
        source=row["source"], state=row["state"], roles=frozenset(roles),
        groups=frozenset(groups), has_totp=row["totp_secret"] is not None,
        created_at=row["created_at"],
    )  # fmt: skip


async def update_user(conn: AsyncConnection, user_id: str, now: datetime, **values: object) -> bool:
    """Set columns of one user; False when there is no such user."""
    result = await conn.execute(
        update(users).where(users.c.id == user_id).values(updated_at=now, **values)
    )
    return result.rowcount == 1


async def spend_totp_step(
    conn: AsyncConnection, user_id: str, last: int | None, step: int, now: datetime
) -> bool:
    """Record ``step`` as used if the stored last step is still ``last``; False otherwise."""
    stored = users.c.totp_last_step
    same = stored.is_(None) if last is None else stored == last
    result = await conn.execute(
        update(users).where(users.c.id == user_id, same).values(totp_last_step=step, updated_at=now)
    )
    return result.rowcount == 1


async def set_roles(conn: AsyncConnection, user_id: str, roles: Iterable[str]) -> None:
    await conn.execute(delete(user_roles).where(user_roles.c.user_id == user_id))
    for role in sorted(set(roles)):
        await conn.execute(insert(user_roles).values(user_id=user_id, role=role))


async def set_groups(
    conn: AsyncConnection, user_id: str, groups: Iterable[str], now: datetime
) -> None:
    """Make ``groups`` exactly the user's groups, creating any group that does not exist."""
    await conn.execute(delete(group_members).where(group_members.c.user_id == user_id))
    for name in sorted(set(groups)):
        stmt = upsert_insert(conn, user_groups).values(name=name, description=None, created_at=now)
        await conn.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))
        await conn.execute(insert(group_members).values(group_name=name, user_id=user_id))


async def group_member_ids(conn: AsyncConnection, group: str) -> set[str]:
    """The active members of ``group``."""
    rows = await conn.scalars(
        select(group_members.c.user_id)
        .join(users, users.c.id == group_members.c.user_id)
        .where(group_members.c.group_name == group, users.c.state == "active")
    )
    return set(rows)


# --- personal API tokens --------------------------------------------------------------------


async def insert_token(
    conn: AsyncConnection,
    *,
    id: str,
    user_id: str,
    name: str,
    token_hash: bytes,
    now: datetime,
    expires_at: datetime,
) -> UserToken:
    await conn.execute(
        insert(user_tokens).values(
            id=id, user_id=user_id, name=name, token_hash=token_hash, created_at=now,
            expires_at=expires_at, revoked_at=None, last_used_at=None,
        )
    )  # fmt: skip
    return UserToken(id, user_id, name, now, expires_at, None, None)


async def find_token(conn: AsyncConnection, token_hash: bytes, now: datetime) -> UserToken | None:
    """The unexpired, unrevoked token with this digest whose user is active, else None."""
    result = await conn.execute(
        select(user_tokens)
        .join(users, users.c.id == user_tokens.c.user_id)
        .where(
            user_tokens.c.token_hash == token_hash,
            user_tokens.c.revoked_at.is_(None),
            user_tokens.c.expires_at > now,
            users.c.state == "active",
        )
    )
    row = result.mappings().first()
    return None if row is None else _token(row)


async def touch_token(conn: AsyncConnection, token_id: str, now: datetime) -> None:
    await conn.execute(
        update(user_tokens).where(user_tokens.c.id == token_id).values(last_used_at=now)
    )


async def list_tokens(conn: AsyncConnection, user_id: str | None) -> list[UserToken]:
    query = select(user_tokens).order_by(user_tokens.c.created_at, user_tokens.c.id)
    if user_id is not None:
        query = query.where(user_tokens.c.user_id == user_id)
    return [_token(row) for row in (await conn.execute(query)).mappings()]


async def revoke_token(
    conn: AsyncConnection, token_id: str, now: datetime, user_id: str | None = None
) -> bool:
    """Revoke one token (only the user's own when ``user_id`` is given); False if none."""
    query = update(user_tokens).where(
        user_tokens.c.id == token_id, user_tokens.c.revoked_at.is_(None)
    )
    if user_id is not None:
        query = query.where(user_tokens.c.user_id == user_id)
    return (await conn.execute(query.values(revoked_at=now))).rowcount == 1


async def revoke_user_tokens(
    conn: AsyncConnection, user_id: str, now: datetime, *, keep_hash: bytes | None = None
) -> int:
    """Revoke every live token of the user but the one whose digest is ``keep_hash``; how
    many were revoked."""
    query = update(user_tokens).where(
        user_tokens.c.user_id == user_id, user_tokens.c.revoked_at.is_(None)
    )
    if keep_hash is not None:
        query = query.where(user_tokens.c.token_hash != keep_hash)
    result = await conn.execute(query.values(revoked_at=now))
    return int(result.rowcount)


def _token(row: RowMapping) -> UserToken:
    return UserToken(
        row["id"], row["user_id"], row["name"], row["created_at"], row["expires_at"],
        row["revoked_at"], row["last_used_at"],
    )  # fmt: skip
