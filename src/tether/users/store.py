"""Repository functions for users, roles, groups and personal API tokens.

Each takes an ``AsyncConnection`` and leaves the transaction to the caller, and takes the
clock's ``now`` rather than reading one (the conventions of :mod:`tether.store.identity`).

Security decision: **a user is sealed** (:mod:`tether.crypto.seal`, migration 0015). The
``users`` row's ``seal`` is the HMAC under the master key of the user's id, source,
password hash, TOTP secret, state, roles and groups (the latter two from ``user_roles`` and
``group_members``). :func:`get_user` and :func:`credentials_row`, through which every login,
personal token and approver check reads a user, return None for a user whose seal is
missing or does not verify (logged as an error): whoever can write to the database without
the master key cannot set a password hash, a role, a group or a state of their choosing.
The writer (:class:`tether.users.service.UserService`) seals again after each change, but
only a user whose seal verified before it: a user changed outside Tether stays refused.
Each seal raises the user's sealed ``revision`` (migration 0023), and a node refuses a user
older than one it admitted (:mod:`tether.crypto.revisions`): a user disabled or demoted
cannot be put back as they were. Not sealed: display name, e-mail, ``totp_last_step`` (the
last TOTP step spent, written at each login) and the timestamps; nothing is granted on them.

**Personal API tokens are sealed** too: the id, user, hash, expiry and revocation time of
each ``user_tokens`` row. :func:`find_token` treats a row that does not verify as unknown
(logged), so a token planted for an existing user, an expiry pushed back or a revocation
cleared opens nothing; revoking seals again, only a row that verified.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, delete, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.crypto.revisions import row_revision
from tether.crypto.seal import RowSealer, SealValue, with_revision
from tether.store.credentials import insert_revocation
from tether.store.identity import upsert_insert
from tether.users.schema import group_members, user_groups, user_roles, user_tokens, users

USERS = "users"
USER_TOKENS = "user_tokens"
# The envelope purpose of a user's TOTP secret (column totp_secret; its name: the user id).
TOTP_PURPOSE = "user.totp"

log = logging.getLogger(__name__)


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


def user_seal_columns(
    row: Mapping[str, Any] | RowMapping, roles: Iterable[str], groups: Iterable[str]
) -> dict[str, SealValue]:
    """The sealed columns of a user: its ``users`` row's, its roles and its groups, and from
    migration 0023 its revision (a user sealed before it, revision 0, was sealed without)."""
    sealed: dict[str, SealValue] = {
        name: row[name] for name in ("id", "source", "password_hash", "totp_secret", "state")
    }
    sealed["roles"] = sorted(set(roles))
    sealed["groups"] = sorted(set(groups))
    return with_revision(sealed, row)


async def _roles_and_groups(conn: AsyncConnection, user_id: str) -> tuple[list[str], list[str]]:
    roles = await conn.scalars(select(user_roles.c.role).where(user_roles.c.user_id == user_id))
    groups = await conn.scalars(
        select(group_members.c.group_name).where(group_members.c.user_id == user_id)
    )
    return list(roles), list(groups)


async def _verified_row(
    conn: AsyncConnection, sealer: RowSealer, user_id: str
) -> tuple[RowMapping, list[str], list[str]] | None:
    """The user's row, roles and groups if the user exists, its seal verifies and it is no
    older than the newest this node admitted (:meth:`RowSealer.current`)."""
    row = (await conn.execute(select(users).where(users.c.id == user_id))).mappings().first()
    if row is None:
        return None
    roles, groups = await _roles_and_groups(conn, user_id)
    if not sealer.verify(USERS, user_seal_columns(row, roles, groups), row["seal"]):
        state = "it has no seal" if row["seal"] is None else "its seal does not verify"
        log.error(
            "user %r refused: %s: the user was changed outside Tether (its row, roles or "
            "groups; docs/vault.md, Tampering with the database)",
            user_id, state,
        )  # fmt: skip
        return None
    if not sealer.current(USERS, user_id, row_revision(row), what=f"user {user_id!r}"):
        return None
    return row, roles, groups


async def credentials_row(
    conn: AsyncConnection, sealer: RowSealer, user_id: str
) -> RowMapping | None:
    """The user's row with its password hash and TOTP fields (for login only); None when
    there is no such user or its seal does not verify."""
    found = await _verified_row(conn, sealer, user_id)
    return None if found is None else found[0]


async def get_user(conn: AsyncConnection, sealer: RowSealer, user_id: str) -> User | None:
    """The user, or None when there is no such user or its seal does not verify."""
    found = await _verified_row(conn, sealer, user_id)
    return None if found is None else _user_of(*found)


UserStanding = Literal["intact", "older", "refused", "missing"]


async def user_standing(conn: AsyncConnection, sealer: RowSealer, user_id: str) -> UserStanding:
    """Quietly, for writers: ``intact`` (its seal verifies and it is current), ``older``
    (its seal verifies, but this node admitted a newer revision: put back), ``refused``
    (its seal does not verify) or ``missing``."""
    row = (await conn.execute(select(users).where(users.c.id == user_id))).mappings().first()
    if row is None:
        return "missing"
    roles, groups = await _roles_and_groups(conn, user_id)
    if not sealer.verify(USERS, user_seal_columns(row, roles, groups), row["seal"]):
        return "refused"
    return "older" if sealer.is_older(USERS, user_id, row_revision(row)) else "intact"


async def user_intact(conn: AsyncConnection, sealer: RowSealer, user_id: str) -> bool:
    """Whether the user exists, its seal verifies and it is current (quietly: for writers)."""
    return await user_standing(conn, sealer, user_id) == "intact"


async def seal_user(conn: AsyncConnection, sealer: RowSealer, user_id: str) -> int:
    """Seal the user as it now stands (its row, roles and groups), at a revision one above
    both its own and the newest this node admitted, in the caller's transaction; only for a
    user just written by Tether (see the module docstring). The revision: the caller
    records it with the sealer once the transaction committed."""
    row = (await conn.execute(select(users).where(users.c.id == user_id))).mappings().one()
    roles, groups = await _roles_and_groups(conn, user_id)
    revision = sealer.next_revision(USERS, user_id, row_revision(row))
    seal = sealer.seal(USERS, user_seal_columns({**row, "revision": revision}, roles, groups))
    await conn.execute(
        update(users).where(users.c.id == user_id).values(seal=seal, revision=revision)
    )
    return revision


async def user_columns(conn: AsyncConnection, row: RowMapping) -> dict[str, SealValue]:
    """The sealed columns of a ``users`` row read back (for ``tether store seal``)."""
    roles, groups = await _roles_and_groups(conn, row["id"])
    return user_seal_columns(row, roles, groups)


async def user_state(conn: AsyncConnection, user_id: str) -> str | None:
    """The user's state (``active``, ``disabled``), None for an id Tether has no user of."""
    state = await conn.scalar(select(users.c.state).where(users.c.id == user_id))
    return None if state is None else str(state)


async def list_users(conn: AsyncConnection) -> list[User]:
    rows = (await conn.execute(select(users).order_by(users.c.id))).mappings().all()
    return [await _user(conn, row) for row in rows]


async def _user(conn: AsyncConnection, row: RowMapping) -> User:
    return _user_of(row, *await _roles_and_groups(conn, row["id"]))


def _user_of(row: RowMapping, roles: list[str], groups: list[str]) -> User:
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


async def group_member_ids(conn: AsyncConnection, sealer: RowSealer, group: str) -> set[str]:
    """The active members of ``group`` whose seal verifies."""
    rows = await conn.scalars(
        select(group_members.c.user_id)
        .join(users, users.c.id == group_members.c.user_id)
        .where(group_members.c.group_name == group, users.c.state == "active")
    )
    return {user_id for user_id in rows if await get_user(conn, sealer, user_id) is not None}


# --- personal API tokens --------------------------------------------------------------------


def token_seal_columns(row: Mapping[str, Any] | RowMapping) -> dict[str, SealValue]:
    """The sealed columns of a ``user_tokens`` row (as written, or as read back)."""
    return {name: row[name] for name in ("id", "user_id", "token_hash", "expires_at", "revoked_at")}


async def insert_token(
    conn: AsyncConnection,
    sealer: RowSealer,
    *,
    id: str,
    user_id: str,
    name: str,
    token_hash: bytes,
    now: datetime,
    expires_at: datetime,
) -> UserToken:
    values: dict[str, Any] = {
        "id": id, "user_id": user_id, "name": name, "token_hash": token_hash,
        "created_at": now, "expires_at": expires_at, "revoked_at": None, "last_used_at": None,
    }  # fmt: skip
    values["seal"] = sealer.seal(USER_TOKENS, token_seal_columns(values))
    await conn.execute(insert(user_tokens).values(values))
    return UserToken(id, user_id, name, now, expires_at, None, None)


async def find_token(
    conn: AsyncConnection, sealer: RowSealer, token_hash: bytes, now: datetime
) -> UserToken | None:
    """The unexpired, unrevoked token with this digest whose user is active and whose seal
    verifies, else None (the user's own seal is checked by :func:`get_user`)."""
    result = await conn.execute(
        select(*user_tokens.c)
        .join(users, users.c.id == user_tokens.c.user_id)
        .where(
            user_tokens.c.token_hash == token_hash,
            user_tokens.c.revoked_at.is_(None),
            user_tokens.c.expires_at > now,
            users.c.state == "active",
        )
    )
    row = result.mappings().first()
    if row is None:
        return None
    what = f"personal token {row['id']!r} (user {row['user_id']!r})"
    if not sealer.admits(USER_TOKENS, token_seal_columns(row), row["seal"], what=what):
        return None
    return _token(row)


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
    conn: AsyncConnection,
    sealer: RowSealer,
    token_id: str,
    now: datetime,
    user_id: str | None = None,
) -> bool:
    """Revoke one token (only the user's own when ``user_id`` is given); False if none."""
    where = [user_tokens.c.id == token_id, user_tokens.c.revoked_at.is_(None)]
    if user_id is not None:
        where.append(user_tokens.c.user_id == user_id)
    return await _revoke(conn, sealer, where, now) == 1


async def revoke_user_tokens(
    conn: AsyncConnection,
    sealer: RowSealer,
    user_id: str,
    now: datetime,
    *,
    keep_hash: bytes | None = None,
) -> int:
    """Revoke every live token of the user but the one whose digest is ``keep_hash``; how
    many were revoked."""
    where = [user_tokens.c.user_id == user_id, user_tokens.c.revoked_at.is_(None)]
    if keep_hash is not None:
        where.append(user_tokens.c.token_hash != keep_hash)
    return await _revoke(conn, sealer, where, now)


async def _revoke(
    conn: AsyncConnection, sealer: RowSealer, where: list[ColumnElement[bool]], now: datetime
) -> int:
    """Revoke the live tokens matching ``where``, each sealed again with its revocation
    time if its seal verified (a row changed outside Tether is revoked, never blessed), and
    recorded in the revocation list (:func:`personal_token_revocation`: under the ledger,
    in nodes' copies), so that the row put back as it was, live, is still refused."""
    revoked = 0
    for row in (await conn.execute(select(user_tokens).where(*where))).mappings().all():
        values: dict[str, Any] = {"revoked_at": now}
        if sealer.verify(USER_TOKENS, token_seal_columns(row), row["seal"]):
            values["seal"] = sealer.seal(USER_TOKENS, token_seal_columns({**row, **values}))
        statement = update(user_tokens).where(*where, user_tokens.c.id == row["id"])
        done = (await conn.execute(statement.values(values))).rowcount
        if done:
            await insert_revocation(
                conn, sealer, kind="token", value=personal_token_revocation(row["id"]),
                reason="personal token revoked", revoked_by=f"user:{row['user_id']}", now=now,
                expires_at=row["expires_at"],
            )  # fmt: skip
        revoked += done
    return revoked


def personal_token_revocation(token_id: str) -> str:
    """The revocation list's value (kind ``token``) for personal token ``token_id``: never
    a token's jti (those have no ``:``)."""
    return f"user-token:{token_id}"


def _token(row: RowMapping) -> UserToken:
    return UserToken(
        row["id"], row["user_id"], row["name"], row["created_at"], row["expires_at"],
        row["revoked_at"], row["last_used_at"],
    )  # fmt: skip
