"""Pending OIDC sign-ins in the database (migration 0007), shared by every node.

A sign-in is one ``oidc_logins`` row from ``POST /v1/login/oidc`` until the CLI collects its
personal token, so the provider's callback and the CLI's poll may reach any node of a
deployment on one database.

Security decisions:

* **Only digests of the secrets are keys.** A row is found by the SHA-256 of its ``state``
  (what the callback presents) or of its poll id (what the CLI presents), each domain
  separated; the database never holds either secret, and a CHECK keeps the keys 32 bytes.
* **Sealed contents.** The PKCE verifier, the nonce and the poll id are sealed (AES-256-GCM,
  the row's digest as associated data) under a key derived from ``state``; the personal
  token under a key derived from the poll id. Someone who reads the table learns neither
  a verifier nor a token without the secret the browser or the CLI holds.
* **The state is single-use, atomically**: :func:`consume` is one conditional ``UPDATE``
  (``consumed_at IS NULL AND expires_at > now``) that PostgreSQL's row lock and SQLite's
  write lock serialise, so of two callbacks with the same state — on one node or two —
  exactly one proceeds; the sealed verifier is erased by the same statement.
* **The token is handed out once**: :func:`collect` deletes the row with one conditional
  ``DELETE``; only the caller whose statement removed it gets the token.
* **A sign-in is confirmed by a click, in the browser it completed in.** Once the callback
  has verified the ID token, the row waits (:func:`await_confirmation`): the poll id and the
  user are sealed under a fresh one-use secret that only the confirmation page holds, and
  :func:`confirm` spends it once. Whoever started a sign-in (and holds its poll id) cannot
  complete it with someone else's browser session: the person at the browser must confirm,
  seeing the code (:func:`user_code`) the terminal that started it shows.
* Rows expire (``expires_at``) and are deleted by :func:`prune`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    CheckConstraint,
    Column,
    Index,
    LargeBinary,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.store.schema import UTCDateTime, metadata

_ID_LABEL: Final = b"tether/oidc-login/id\x00"
_CODE_LABEL: Final = b"tether/oidc-login/code\x00"
_KEY_LABEL: Final = b"tether/oidc-login/key\x00"

oidc_logins = Table(
    "oidc_logins",
    metadata,
    Column("state_hash", LargeBinary(32), primary_key=True),
    Column("poll_hash", LargeBinary(32), nullable=False, unique=True),
    Column("sealed_start", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("consumed_at", UTCDateTime, nullable=True),
    Column("sealed_token", LargeBinary, nullable=True),
    Column("user_id", Text, nullable=True),
    Column("token_id", String(32), nullable=True),
    CheckConstraint("length(state_hash) = 32 AND length(poll_hash) = 32", name="digests"),
    Index("ix_oidc_logins_expires_at", "expires_at"),
)


class SealError(Exception):
    """A sealed value does not open with the secret presented."""


def lookup(secret: str) -> bytes:
    """The row key for ``state`` or a poll id."""
    return hashlib.sha256(_ID_LABEL + secret.encode("utf-8")).digest()


def seal(secret: str, plaintext: bytes) -> bytes:
    """``plaintext`` sealed under the key derived from ``secret``, bound to its row key."""
    key = hashlib.sha256(_KEY_LABEL + secret.encode("utf-8")).digest()
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, lookup(secret))


def unseal(secret: str, sealed: bytes) -> bytes:
    key = hashlib.sha256(_KEY_LABEL + secret.encode("utf-8")).digest()
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], lookup(secret))
    except (InvalidTag, ValueError):
        raise SealError("the sealed value does not open") from None


@dataclass(frozen=True, slots=True)
class Started:
    """What the callback needs, opened from a consumed row."""

    verifier: str
    nonce: str
    poll_id: str


async def insert_login(
    conn: AsyncConnection, state: str, started: Started, now: datetime, ttl: float
) -> None:
    body = json.dumps(
        {"verifier": started.verifier, "nonce": started.nonce, "poll_id": started.poll_id}
    ).encode()
    await conn.execute(
        insert(oidc_logins).values(
            state_hash=lookup(state), poll_hash=lookup(started.poll_id),
            sealed_start=seal(state, body), created_at=now,
            expires_at=now + timedelta(seconds=ttl),
        )
    )  # fmt: skip


def user_code(poll_id: str) -> str:
    """The code the CLI shows and the confirmation page repeats (``XXXX-XXXX``)."""
    text = base64.b32encode(hashlib.sha256(_CODE_LABEL + poll_id.encode("utf-8")).digest())
    return f"{text[:4].decode()}-{text[4:8].decode()}"


async def await_confirmation(
    conn: AsyncConnection,
    state: str,
    confirm: str,
    poll_id: str,
    user_id: str,
    groups: tuple[str, ...],
) -> None:
    """After the callback: the sign-in waits for :func:`confirm` with ``confirm``, with the
    verified user and its groups sealed under it (applied only once confirmed)."""
    body = json.dumps({"poll_id": poll_id, "user": user_id, "groups": list(groups)}).encode()
    await conn.execute(
        update(oidc_logins)
        .where(oidc_logins.c.state_hash == lookup(state), oidc_logins.c.sealed_token.is_(None))
        .values(sealed_start=seal(confirm, body))
    )


async def confirm(
    conn: AsyncConnection, state: str, secret: str, now: datetime
) -> tuple[str, str, tuple[str, ...]] | None:
    """Spend the confirmation of ``state`` (once): its poll id, user and the user's groups
    at the provider; None when it is unknown, expired, spent already or ``secret`` is not
    its secret."""
    table = oidc_logins.c
    key = lookup(state)
    alive = and_(table.state_hash == key, table.consumed_at.is_not(None),
                 table.sealed_token.is_(None), table.expires_at > now)  # fmt: skip
    sealed = await conn.scalar(select(table.sealed_start).where(alive))
    if not sealed:
        return None
    try:
        data = json.loads(unseal(secret, sealed))
    except SealError:
        return None
    spend = update(oidc_logins).where(alive, table.sealed_start == sealed).values(sealed_start=b"")
    if (await conn.execute(spend)).rowcount != 1:
        return None  # another confirmation spent it first
    groups = data.get("groups", [])
    return str(data["poll_id"]), str(data["user"]), tuple(str(g) for g in groups)


async def live_count(conn: AsyncConnection, now: datetime) -> int:
    query = select(func.count()).select_from(oidc_logins).where(oidc_logins.c.expires_at > now)
    return int(await conn.scalar(query) or 0)


async def consume(conn: AsyncConnection, state: str, now: datetime) -> Started | None:
    """Spend ``state``: what its sign-in started with, or None when it is unknown, spent
    or expired (or does not open)."""
    table = oidc_logins.c
    key = lookup(state)
    sealed = await conn.scalar(
        select(table.sealed_start).where(
            table.state_hash == key, table.consumed_at.is_(None), table.expires_at > now
        )
    )
    if sealed is None:
        return None
    spend = (
        update(oidc_logins)
        .where(and_(table.state_hash == key, table.consumed_at.is_(None), table.expires_at > now))
        .values(consumed_at=now, sealed_start=b"")
    )
    if (await conn.execute(spend)).rowcount != 1:
        return None  # another callback spent it first
    try:
        data = json.loads(unseal(state, sealed))
    except SealError:
        return None
    return Started(str(data["verifier"]), str(data["nonce"]), str(data["poll_id"]))


async def complete(
    conn: AsyncConnection,
    poll_id: str,
    token: str,
    user_id: str,
    token_id: str,
    now: datetime,
    ttl: float,
) -> None:
    """Leave the personal token, sealed, for the poll; collectable for ``ttl`` seconds."""
    await conn.execute(
        update(oidc_logins)
        .where(oidc_logins.c.poll_hash == lookup(poll_id))
        .values(
            sealed_token=seal(poll_id, token.encode("utf-8")), user_id=user_id,
            token_id=token_id, expires_at=now + timedelta(seconds=ttl),
        )
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Collected:
    token: str
    user_id: str
    token_id: str


async def poll_state(conn: AsyncConnection, poll_id: str, now: datetime) -> bool | None:
    """None for an unknown, expired or collected poll id; whether its token is ready."""
    table = oidc_logins.c
    row = (
        await conn.execute(
            select(table.sealed_token).where(
                table.poll_hash == lookup(poll_id), table.expires_at > now
            )
        )
    ).first()
    return None if row is None else row.sealed_token is not None


async def collect(conn: AsyncConnection, poll_id: str, now: datetime) -> Collected | None:
    """Take the completed sign-in of ``poll_id`` out of the table (once); None if another
    caller took it, or it is not ready, unknown or expired."""
    table = oidc_logins.c
    key = lookup(poll_id)
    row = (
        await conn.execute(
            select(table.sealed_token, table.user_id, table.token_id).where(
                table.poll_hash == key, table.expires_at > now, table.sealed_token.is_not(None)
            )
        )
    ).first()
    if row is None or row.user_id is None or row.token_id is None:
        return None
    taken = delete(oidc_logins).where(and_(table.poll_hash == key, table.sealed_token.is_not(None)))
    if (await conn.execute(taken)).rowcount != 1:
        return None
    try:
        token = unseal(poll_id, row.sealed_token).decode("utf-8")
    except SealError:
        return None
    return Collected(token, str(row.user_id), str(row.token_id))


async def prune(conn: AsyncConnection, now: datetime) -> int:
    """Delete expired sign-ins; how many."""
    return int(
        (await conn.execute(delete(oidc_logins).where(oidc_logins.c.expires_at <= now))).rowcount
    )
