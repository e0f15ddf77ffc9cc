"""Signing keys (token signer and CAs) and the admin API's tokens.

Security decisions:

* **The store never sees a plaintext private key.** ``private_encrypted`` is sealed by the
  caller (envelope encryption, ``tether.crypto.envelope``); a value that begins like a PEM,
  OpenSSH or JWK key is refused, to catch the mistake of handing one over unsealed.
* **One active key per purpose**, by a partial unique index: two nodes rotating at once
  cannot both activate a key. :func:`rotate_signing_key` demotes the active key before it
  inserts the new one, in the caller's transaction. ``retired`` is final.
* **Signing key rows are sealed** (migration 0020): every column, so that a row's
  ``state`` and ``retire_after`` cannot be changed without the master key (a rotated-out
  key kept verifying past its overlap, a retired one brought back). Only
  :func:`sealed_signing_keys`' admitted keys sign or verify; :func:`list_signing_keys`
  reads the rows unchecked, for ``tether audit verify``, which needs no master key.
* **Admin tokens are looked up by the hash of their secret**, and :func:`find_admin_token`
  only returns a token that is neither revoked nor expired at ``now``.
* **Admin token rows are sealed** (:mod:`tether.crypto.seal`, migration 0015): the HMAC
  under the master key of the id, name, hash, expiry and revocation time. A row planted or
  changed without the master key (a hash of the writer's choosing, an expiry pushed back,
  a revocation cleared) does not verify and :func:`find_admin_token` treats it as unknown,
  logging an error. ``last_used_at`` is not sealed: it grants nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import RowMapping, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.crypto.revisions import row_revision
from tether.crypto.seal import RowSealer, SealValue, with_revision
from tether.store.credentials import insert_revocation
from tether.store.schema import admin_tokens, signing_keys

KeyPurpose = Literal["access-token", "ssh-user-ca", "ssh-target-ca", "x509-ca"]
KeyState = Literal["active", "previous", "retired"]

# How plaintext private keys begin (PEM, raw OpenSSH, JWK); a sealed envelope begins otherwise.
_PLAINTEXT_KEY_STARTS = (b"-----BEGIN", b"openssh-key-v1", b"{")


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A signing key as stored; ``public`` is a JWK (JSON), an OpenSSH key or a PEM."""

    kid: str
    purpose: KeyPurpose
    algorithm: str
    public: str
    private_encrypted: bytes = field(repr=False)
    created_at: datetime
    active_from: datetime
    state: KeyState = "active"
    retire_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class AdminToken:
    """An admin API token; the hash of its secret is deliberately not part of the row."""

    id: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


# --- signing keys ------------------------------------------------------------------------------

SIGNING_KEYS = "signing_keys"
_SIGNING_KEY_COLUMNS = (
    "kid", "purpose", "algorithm", "public", "private_encrypted", "created_at", "active_from",
    "retire_after", "state",
)  # fmt: skip


def private_key_purpose(purpose: str) -> str:
    """The envelope purpose of a signing key's private part (column ``private_encrypted``;
    its name: the kid)."""
    return f"signing-key:{purpose}"


def signing_key_seal_columns(row: Mapping[str, Any] | RowMapping) -> dict[str, SealValue]:
    """The sealed columns of a ``signing_keys`` row: every column but the seal (its
    revision from migration 0024 on: a row sealed before it, revision 0, without it)."""
    return with_revision({name: row[name] for name in _SIGNING_KEY_COLUMNS}, row)


def _current(sealer: RowSealer, row: Mapping[str, Any] | RowMapping) -> bool:
    """Quietly: the row's seal verifies, and it is no older than this node admitted."""
    if not sealer.verify(SIGNING_KEYS, signing_key_seal_columns(row), row["seal"]):
        return False
    return not sealer.is_older(SIGNING_KEYS, str(row["kid"]), row_revision(row))


def _next_revision(sealer: RowSealer, row: Mapping[str, Any] | RowMapping) -> int:
    """The revision a change to the key ``row`` writes (:meth:`RowSealer.next_revision`)."""
    return sealer.next_revision(SIGNING_KEYS, str(row["kid"]), row_revision(row))


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """The keys of one purpose as read: those whose seal verifies, and those refused."""

    admitted: list[StoredKey]
    refused: list[StoredKey]


async def insert_signing_key(conn: AsyncConnection, sealer: RowSealer, key: StoredKey) -> None:
    """Store ``key``, sealed; a second active key of its purpose is an ``IntegrityError``."""
    if key.private_encrypted.lstrip().startswith(_PLAINTEXT_KEY_STARTS):
        raise ValueError("refusing a private key that is not encrypted")
    values: dict[str, Any] = {
        "kid": key.kid,
        "purpose": key.purpose,
        "algorithm": key.algorithm,
        "public": key.public,
        "private_encrypted": key.private_encrypted,
        "created_at": key.created_at,
        "active_from": key.active_from,
        "retire_after": key.retire_after,
        "state": key.state,
        "revision": 1,
    }
    values["seal"] = sealer.seal(SIGNING_KEYS, signing_key_seal_columns(values))
    await conn.execute(insert(signing_keys).values(values))


async def any_signing_key(conn: AsyncConnection) -> bool:
    """Whether the store holds any signing key, of any purpose and state."""
    return (await conn.execute(select(signing_keys.c.kid).limit(1))).first() is not None


async def list_signing_keys(
    conn: AsyncConnection, purpose: KeyPurpose, states: Collection[KeyState] | None = None
) -> list[StoredKey]:
    """The keys of ``purpose`` (in ``states`` if given) as the database holds them, seals
    unchecked, newest ``active_from`` first: for ``tether audit verify``, which checks each
    public key against its kid (and, with the master key, against its private part)."""
    return [_key(row) for row in await _signing_key_rows(conn, purpose, states)]


async def sealed_signing_keys(
    conn: AsyncConnection,
    sealer: RowSealer,
    purpose: KeyPurpose,
    states: Collection[KeyState] | None = None,
) -> SigningKeys:
    """The keys of ``purpose`` (in ``states`` if given), newest ``active_from`` first, split
    by whether their seal verifies and the row is no older than the newest this node
    admitted (:meth:`RowSealer.current`); each refused row is logged. Only admitted keys
    sign or verify anything."""
    found = SigningKeys([], [])
    for row in await _signing_key_rows(conn, purpose, states):
        what = f"{purpose} signing key {row['kid']!r}"
        columns, revision = signing_key_seal_columns(row), row_revision(row)
        admitted = sealer.admits(SIGNING_KEYS, columns, row["seal"], what=what) and (
            sealer.current(SIGNING_KEYS, str(row["kid"]), revision, what=what)
        )
        (found.admitted if admitted else found.refused).append(_key(row))
    return found


async def _signing_key_rows(
    conn: AsyncConnection, purpose: KeyPurpose, states: Collection[KeyState] | None
) -> list[RowMapping]:
    query = select(signing_keys).where(signing_keys.c.purpose == purpose)
    if states is not None:
        query = query.where(signing_keys.c.state.in_(list(states)))
    query = query.order_by(signing_keys.c.active_from.desc(), signing_keys.c.kid)
    return list((await conn.execute(query)).mappings())


async def set_signing_key_state(
    conn: AsyncConnection,
    sealer: RowSealer,
    kid: str,
    state: KeyState,
    retire_after: datetime | None = None,
) -> StoredKey | None:
    """Change a key's state (and ``retire_after``); None when unknown or already retired.

    The row is sealed again only if its seal verified: a row changed outside Tether gets
    its new state all the same and stays refused, never blessed."""
    live = (signing_keys.c.kid == kid, signing_keys.c.state != "retired")
    row = (await conn.execute(select(signing_keys).where(*live))).mappings().first()
    if row is None:
        return None
    values: dict[str, Any] = {"state": state, "retire_after": retire_after}
    values["revision"] = _next_revision(sealer, row)
    if sealer.verify(SIGNING_KEYS, signing_key_seal_columns(row), row["seal"]):
        values["seal"] = sealer.seal(SIGNING_KEYS, signing_key_seal_columns({**row, **values}))
    query = update(signing_keys).where(*live).values(values).returning(signing_keys)
    changed = (await conn.execute(query)).mappings().first()
    return None if changed is None else _key(changed)


async def rotate_signing_key(
    conn: AsyncConnection,
    sealer: RowSealer,
    new: StoredKey,
    retire_previous_after: datetime | None,
) -> list[str]:
    """Make ``new`` the active key of its purpose; returns the kids it demoted to previous.

    The old key stays as ``previous`` (still verifying what it signed) until
    ``retire_previous_after``; an active row whose seal does not verify is retired instead
    (it verifies nothing, and must not take the one active place). Run inside
    ``engine.begin()``.
    """
    if new.state != "active":
        raise ValueError("rotate_signing_key takes the new active key")
    active = select(signing_keys).where(
        signing_keys.c.purpose == new.purpose, signing_keys.c.state == "active"
    )
    demoted: list[str] = []
    for row in list((await conn.execute(active.with_for_update())).mappings()):
        revision = _next_revision(sealer, row)
        values: dict[str, Any] = {"state": "retired", "retire_after": row["retire_after"],
                                  "revision": revision}  # fmt: skip
        if _current(sealer, row):  # a row put back older than seen verifies nothing more
            values = {"state": "previous", "retire_after": retire_previous_after,
                      "revision": revision}  # fmt: skip
            values["seal"] = sealer.seal(SIGNING_KEYS, signing_key_seal_columns({**row, **values}))
            demoted.append(row["kid"])
        await conn.execute(
            update(signing_keys).where(signing_keys.c.kid == row["kid"]).values(values)
        )
    await insert_signing_key(conn, sealer, new)
    return demoted


# --- admin tokens ------------------------------------------------------------------------------


async def insert_admin_token(
    conn: AsyncConnection,
    sealer: RowSealer,
    *,
    id: str,
    name: str,
    token_hash: bytes,
    now: datetime,
    expires_at: datetime | None = None,
) -> AdminToken:
    """Record an admin token by the hash of its secret (``identity.digest``)."""
    values = {
        "id": id,
        "name": name,
        "token_hash": token_hash,
        "created_at": now,
        "expires_at": expires_at,
        "revoked_at": None,
    }
    values["seal"] = sealer.seal(ADMIN_TOKENS, admin_seal_columns(values))
    query = insert(admin_tokens).values(values).returning(*_ADMIN_COLUMNS)
    return _admin((await conn.execute(query)).mappings().one())


async def find_admin_token(
    conn: AsyncConnection, sealer: RowSealer, token_hash: bytes, now: datetime
) -> AdminToken | None:
    """The token with this hash if it is usable at ``now`` (not revoked, not expired) and
    its row's seal verifies; None otherwise (a row that does not verify is logged)."""
    query = select(admin_tokens).where(
        admin_tokens.c.token_hash == token_hash,
        admin_tokens.c.revoked_at.is_(None),
        or_(admin_tokens.c.expires_at.is_(None), admin_tokens.c.expires_at > now),
    )
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        return None
    what = f"admin token {row['id']!r}"
    if not sealer.admits(ADMIN_TOKENS, admin_seal_columns(row), row["seal"], what=what):
        return None
    return _admin(row)


async def list_admin_tokens(conn: AsyncConnection) -> list[AdminToken]:
    query = select(*_ADMIN_COLUMNS).order_by(admin_tokens.c.created_at, admin_tokens.c.id)
    return [_admin(row) for row in (await conn.execute(query)).mappings()]


async def revoke_admin_token(
    conn: AsyncConnection, sealer: RowSealer, token_id: str, now: datetime, *, by: str = "tether"
) -> bool:
    """Revoke a token; False when it is unknown or was revoked already.

    The row is sealed again with its revocation time, but only if its seal verified: a row
    changed outside Tether is revoked all the same and stays refused, never blessed. The
    revocation is also recorded in the revocation list (:func:`admin_token_revocation`,
    under the ledger, in nodes' copies), so that the row put back as it was, live, is
    still refused by every node that polled it."""
    live = (admin_tokens.c.id == token_id, admin_tokens.c.revoked_at.is_(None))
    row = (await conn.execute(select(admin_tokens).where(*live))).mappings().first()
    if row is None:
        return False
    values: dict[str, Any] = {"revoked_at": now}
    if sealer.verify(ADMIN_TOKENS, admin_seal_columns(row), row["seal"]):
        values["seal"] = sealer.seal(ADMIN_TOKENS, admin_seal_columns({**row, **values}))
    if (await conn.execute(update(admin_tokens).where(*live).values(values))).rowcount != 1:
        return False
    await insert_revocation(
        conn, sealer, kind="token", value=admin_token_revocation(token_id),
        reason="admin token revoked", revoked_by=by, now=now, expires_at=row["expires_at"],
    )  # fmt: skip
    return True


def admin_token_revocation(token_id: str) -> str:
    """The revocation list's value (kind ``token``) for admin token ``token_id``: never a
    token's jti (those have no ``:``)."""
    return f"admin-token:{token_id}"


async def touch_admin_token(conn: AsyncConnection, token_id: str, now: datetime) -> None:
    """Move ``last_used_at`` forward to ``now`` (never backward)."""
    used = admin_tokens.c.last_used_at
    await conn.execute(
        update(admin_tokens)
        .where(admin_tokens.c.id == token_id, or_(used.is_(None), used < now))
        .values(last_used_at=now)
    )


ADMIN_TOKENS = "admin_tokens"
_ADMIN_COLUMNS = [c for c in admin_tokens.c if c.name not in ("token_hash", "seal")]


def admin_seal_columns(row: Mapping[str, Any] | RowMapping) -> dict[str, SealValue]:
    """The sealed columns of an ``admin_tokens`` row (as written, or as read back)."""
    names = ("id", "name", "token_hash", "expires_at", "revoked_at")
    return {name: row[name] for name in names}


def _key(row: RowMapping) -> StoredKey:
    return StoredKey(
        kid=row["kid"],
        purpose=row["purpose"],
        algorithm=row["algorithm"],
        public=row["public"],
        private_encrypted=bytes(row["private_encrypted"]),
        created_at=row["created_at"],
        active_from=row["active_from"],
        state=row["state"],
        retire_after=row["retire_after"],
    )


def _admin(row: RowMapping) -> AdminToken:
    return AdminToken(
        id=row["id"],
        name=row["name"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )
