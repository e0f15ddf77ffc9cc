"""Admin API tokens: created on first start (shown once) or by ``tether admin-token create``.

A token reads ``tat_<id>.<secret>``; the store keeps the SHA-256 of the whole text only
(:func:`tether.store.identity.digest`), so a copy of the database opens no admin API.

Security decisions:

* **Looked up by hash.** The presented text is hashed and the hash is the lookup key, so
  no comparison ever runs over the secret itself: the time a lookup takes depends on a
  SHA-256 output the caller cannot steer, not on how much of a secret they guessed.
* **Shown once.** The secret exists in memory while it is created and printed, never again;
  losing it means creating another (``tether admin-token create`` works on the database
  directly, with no server and no other token, for exactly that recovery).
* Expired and revoked tokens are refused by the store's lookup itself, and so is a row
  whose seal does not verify (:mod:`tether.store.keys`): a row planted in the database
  with the hash of a token of the writer's choosing opens nothing.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy.ext.asyncio import AsyncEngine

from tether.crypto.seal import RowSealer
from tether.identity.revocation import RevocationSet
from tether.store import keys as key_store
from tether.store.identity import digest
from tether.store.keys import admin_token_revocation

log = logging.getLogger(__name__)

ADMIN_TOKEN_PREFIX: Final = "tat_"  # noqa: S105 - a public prefix, not a secret
MAX_PRESENTED: Final = 256


async def create_admin_token(
    engine: AsyncEngine, sealer: RowSealer, *, name: str, now: datetime, ttl: int | None = None
) -> tuple[str, key_store.AdminToken]:
    """A new admin token: its text (to show once) and its record."""
    token_id = secrets.token_hex(6)
    text = f"{ADMIN_TOKEN_PREFIX}{token_id}.{secrets.token_urlsafe(32)}"
    expires = None if ttl is None else now + timedelta(seconds=ttl)
    async with engine.begin() as conn:
        record = await key_store.insert_admin_token(
            conn,
            sealer,
            id=token_id,
            name=name,
            token_hash=digest(text),
            now=now,
            expires_at=expires,
        )
    return text, record


async def first_admin_token(engine: AsyncEngine, sealer: RowSealer, *, now: datetime) -> str | None:
    """On a store without any admin token, create one and return its text; else None."""
    async with engine.connect() as conn:
        if await key_store.list_admin_tokens(conn):
            return None
    text, _record = await create_admin_token(engine, sealer, name="initial", now=now)
    return text


async def find_admin_token(
    engine: AsyncEngine,
    sealer: RowSealer,
    presented: str,
    *,
    now: datetime,
    revoked: RevocationSet | None = None,
) -> key_store.AdminToken | None:
    """The usable token whose text is ``presented`` (its last use recorded), else None;
    also None when the node's ``revoked`` list holds its revocation (its row live again:
    put back from an earlier state, logged)."""
    if not presented.startswith(ADMIN_TOKEN_PREFIX) or len(presented) > MAX_PRESENTED:
        return None
    async with engine.begin() as conn:
        token = await key_store.find_admin_token(conn, sealer, digest(presented), now)
        if token is None:
            return None
        if revoked is not None and revoked.holds("token", admin_token_revocation(token.id)):
            log.error("admin token %r refused: it is revoked, but its row is live: the "
                      "database was put back to an earlier state (docs/vault.md, Tampering "
                      "with the database)", token.id)  # fmt: skip
            return None
        await key_store.touch_admin_token(conn, token.id, now)
    return token
