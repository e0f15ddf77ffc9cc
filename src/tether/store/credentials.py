"""Issued credentials (what went to whom, and where) and revocations.

Security decisions:

* **Nothing is issued to an agent that is not active**, checked in the inserting statement
  itself (:class:`~tether.store.identity.AgentNotActive`), and a credential's runtime must
  be one of its agent's runtimes (a composite foreign key).
* **Nothing is issued for a disabled user** (a delegated credential: its subject is the
  user, its actor chain names the users it was further delegated through and, innermost,
  the agent): :class:`~tether.store.identity.UserDisabled` when any user of the chain is
  disabled. Disabling a user revokes every live credential delegated by them, as subject or
  anywhere in the chain (:func:`revoke_delegations`, in the transaction that disables). The
  two cannot cross: the insert reads the rows of every user of the chain ``FOR SHARE`` on
  PostgreSQL (the disabling ``UPDATE`` waits for it, then its sweep sees the credential; an
  insert after the ``UPDATE`` waits and then reads ``disabled``), and checks the states
  again in the inserting statement (SQLite has one writer at a time).
* **Revocation ids follow commit order**, so a node that polls ``id > cursor`` and keeps
  the highest id it saw never skips an entry. On PostgreSQL a sequence hands out ids at
  insert time while transactions may commit in another order; :func:`insert_revocation`
  therefore takes an ``EXCLUSIVE`` lock on the table (readers are not blocked) so writers go
  one at a time. SQLite has a single writer anyway, and ``AUTOINCREMENT`` keeps it from
  reusing the id of a pruned newest row.
* **Every revocation is accounted for in the sealed revocation ledger**, in its own
  transaction (:mod:`tether.store.revocation_ledger`), and read back with the ledger in one
  statement (:func:`read_revocations`): a revocation deleted, changed or planted behind
  Tether's back is seen by the next node that loads them.
* **Records go once useless** (:func:`prune_records`, ``identity.record_retention``): a
  record is deleted only long after it expired, and never while a record of its renewal
  family is kept (revoking an old token by its jti then still finds the family and ends
  it). Nothing checks a credential against its record but SSH certificates, which are live;
  the issuance itself stays in the audit trail (``token.issued``).
* **Revoking is idempotent and never weakened**: revoking again returns the existing entry
  unchanged. :func:`is_revoked` ignores ``expires_at`` (an entry past it is revoked still,
  only prunable).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, RowMapping, Text, cast, delete, exists, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from tether.crypto.seal import RowSealer, SealValue
from tether.store import revocation_ledger as ledger
from tether.store.identity import UserDisabled, insert_if_agent_active, upsert_insert
from tether.store.schema import credentials, revocation_ledger, revocations
from tether.users.schema import users

CredentialKind = Literal["access_token", "ssh_certificate", "x509_certificate"]
log = logging.getLogger(__name__)

RevocationKind = Literal["token", "agent", "task", "runtime"]


@dataclass(frozen=True, slots=True)
class Credential:
    """A credential as issued. ``subject`` is the user of a delegated token, else the agent;
    ``actor_chain`` lists the actors of a delegation, outermost first."""

    jti: str
    kind: CredentialKind
    agent_id: str
    subject: str
    scope: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    runtime_id: str | None = None
    task_id: str | None = None
    actor_chain: tuple[str, ...] | None = None
    serial: str | None = None
    key_thumbprint: str | None = None
    task_purpose: str | None = None  # None: recorded before migration 0008
    groups: tuple[str, ...] | None = None  # the delegating user's groups (delegated only)
    token_jti: str | None = None  # a certificate's issuing token
    derived_from: tuple[str, ...] | None = None  # jtis of the tokens it was derived from
    family: str | None = None  # its renewal family (a certificate: its token's); 0012
    # A delegation chain's earlier users (those of ``actor_chain`` but the agent), each with
    # their groups, outermost first; None when not a chain or recorded before migration 0013.
    act_groups: tuple[tuple[str, tuple[str, ...]], ...] | None = None

    @property
    def delegators(self) -> tuple[str, ...]:
        """The users of a delegated credential's chain: the subject and every actor but the
        innermost, which is the agent (``Claims.delegators``); empty when not delegated."""
        if not self.actor_chain:
            return ()
        return tuple(dict.fromkeys((self.subject, *self.actor_chain[:-1])))


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revoked token, agent, task or runtime; prunable after ``expires_at`` if set."""

    id: int
    kind: RevocationKind
    value: str
    reason: str
    revoked_by: str
    revoked_at: datetime
    expires_at: datetime | None


# --- credentials -------------------------------------------------------------------------------

CREDENTIALS = "credentials"
# Every column of a record (it never changes once written: revocations are rows of their own).
_CREDENTIAL_SEALED = (
    "jti", "kind", "agent_id", "runtime_id", "task_id", "subject", "actor_chain", "scope",
    "issued_at", "expires_at", "serial", "key_thumbprint", "task_purpose", "user_groups",
    "token_jti", "derived_from", "family", "act_groups",
)  # fmt: skip


def credential_seal_columns(row: Mapping[str, Any] | RowMapping) -> dict[str, SealValue]:
    """The sealed columns of a ``credentials`` row (as written, or as read back)."""
    return {name: row[name] for name in _CREDENTIAL_SEALED}


def credential_admitted(sealer: RowSealer, row: Mapping[str, Any] | RowMapping) -> bool:
    """Whether a ``credentials`` row's seal verifies (an error is logged when not)."""
    what = f"credential record {row['jti']!r} ({row['kind']}, agent {row['agent_id']!r})"
    return sealer.admits(CREDENTIALS, credential_seal_columns(row), row["seal"], what=what)


async def insert_credential(
    conn: AsyncConnection, sealer: RowSealer, credential: Credential
) -> None:
    """Record an issued credential; :class:`AgentNotActive` unless its agent is active
    (and its row verifies: ``sealer``)."""
    values: dict[str, Any] = {
        "jti": credential.jti,
        "kind": credential.kind,
        "agent_id": credential.agent_id,
        "runtime_id": credential.runtime_id,
        "task_id": credential.task_id,
        "subject": credential.subject,
        "actor_chain": None if credential.actor_chain is None else list(credential.actor_chain),
        "scope": list(credential.scope),
        "issued_at": credential.issued_at,
        "expires_at": credential.expires_at,
        "serial": credential.serial,
        "key_thumbprint": credential.key_thumbprint,
        "task_purpose": credential.task_purpose,
        "user_groups": None if credential.groups is None else list(credential.groups),
        "token_jti": credential.token_jti,
        "derived_from": None if credential.derived_from is None else list(credential.derived_from),
        "family": credential.family,
        "act_groups": None
        if credential.act_groups is None
        else [{"sub": sub, "groups": list(groups)} for sub, groups in credential.act_groups],
    }
    values["seal"] = sealer.seal(CREDENTIALS, credential_seal_columns(values))
    if not credential.actor_chain:
        await insert_if_agent_active(conn, sealer, credentials, values)
        return
    # Delegated: no user of the chain may be disabled, now or when the row is inserted.
    chain = sorted(credential.delegators)  # one lock order for every transaction
    states = await conn.execute(
        select(users.c.id, users.c.state)
        .where(users.c.id.in_(chain))
        .order_by(users.c.id)
        .with_for_update(read=True)
    )
    for user_id, state in states.all():
        if state == "disabled":
            raise UserDisabled(f"user {user_id!r} is disabled")
    disabled = exists().where(users.c.id.in_(chain), users.c.state == "disabled")
    await insert_if_agent_active(conn, sealer, credentials, values, unless=disabled)


async def revoke_delegations(
    conn: AsyncConnection,
    sealer: RowSealer,
    user_id: str,
    *,
    reason: str,
    revoked_by: str,
    now: datetime,
) -> list[str]:
    """Revoke every live credential delegated by ``user_id``: its subject is the user, or
    the user is an actor of its chain (a delegated token was the actor token of a further
    delegation, :attr:`Credential.delegators`). Each is a ``token`` entry prunable when it
    expires; the ids revoked.

    Run in the transaction that disables the user, after its ``UPDATE`` (see the module
    docstring: a credential recorded concurrently is either seen here or refused). The
    chain is JSON; a text match narrows the rows read (``LIKE``, on both backends) and the
    exact test is made here.
    """
    named = cast(credentials.c.actor_chain, Text).contains(f'"{user_id}"', autoescape=True)
    query = select(
        credentials.c.jti,
        credentials.c.expires_at,
        credentials.c.subject,
        credentials.c.actor_chain,
    ).where(
        credentials.c.actor_chain.is_not(None),
        credentials.c.expires_at > now,
        or_(credentials.c.subject == user_id, named),
    )
    revoked: list[str] = []
    for jti, expires_at, subject, chain in (
        await conn.execute(query.order_by(credentials.c.jti))
    ).all():
        users_of_chain = (subject, *(_strings(chain) or ())[:-1])
        if user_id not in users_of_chain:
            continue
        await insert_revocation(
            conn, sealer, kind="token", value=jti, reason=reason, revoked_by=revoked_by,
            now=now, expires_at=expires_at,
        )  # fmt: skip
        revoked.append(jti)
    return revoked


async def list_credentials(
    conn: AsyncConnection,
    *,
    agent_id: str | None = None,
    task_id: str | None = None,
    runtime_id: str | None = None,
    live_at: datetime | None = None,
) -> list[Credential]:
    """Credentials matching every filter given (at least one id), in issue order.

    ``live_at`` keeps those that have not expired at that time.
    """
    where: list[ColumnElement[bool]] = []
    if agent_id is not None:
        where.append(credentials.c.agent_id == agent_id)
    if task_id is not None:
        where.append(credentials.c.task_id == task_id)
    if runtime_id is not None:
        where.append(credentials.c.runtime_id == runtime_id)
    if not where:
        raise ValueError("list_credentials needs an agent_id, task_id or runtime_id")
    if live_at is not None:
        where.append(credentials.c.expires_at > live_at)
    query = select(credentials).where(*where).order_by(credentials.c.issued_at, credentials.c.jti)
    return [_credential(row) for row in (await conn.execute(query)).mappings()]


async def family_of(conn: AsyncConnection, jti: str) -> str | None:
    """The renewal family of the access token ``jti`` as recorded; None for anything else
    (a certificate, a token Tether has no record of, or one recorded before migration
    0012). Revoking a certificate never reaches the family of the token it was issued
    under: only a token is a member."""
    query = select(credentials.c.family).where(
        credentials.c.jti == jti, credentials.c.kind == "access_token"
    )
    family: str | None = (await conn.execute(query)).scalar_one_or_none()
    return family


async def live_lineage(
    conn: AsyncConnection, jti: str, family: str, now: datetime, limit: int
) -> list[str]:
    """Up to ``limit`` ids of the credentials live at ``now`` that revoking the token
    ``jti`` of renewal family ``family`` (its own jti when it has none) ends, in issue
    order: the token, the tokens of the family and the certificates issued under them, and
    whatever names the token or the family in its ``derived_from`` (delegations,
    certificate-bound tokens, and their certificates). For the audit event of the
    revocation; the revocation itself does not depend on it. The lineage is JSON: a text
    match narrows the rows read (as :func:`revoke_delegations` does), the exact test is made
    here."""
    names = [
        cast(credentials.c.derived_from, Text).contains(f'"{value}"', autoescape=True)
        for value in dict.fromkeys((jti, family))
    ]
    query = (
        select(credentials.c.jti, credentials.c.family, credentials.c.derived_from)
        .where(
            credentials.c.expires_at > now,
            or_(credentials.c.jti == jti, credentials.c.family == family, *names),
        )
        .order_by(credentials.c.issued_at, credentials.c.jti)
    )
    ended: list[str] = []
    for row_jti, row_family, derived in (await conn.execute(query)).all():
        sources = _strings(derived) or ()
        if row_jti == jti or row_family == family or jti in sources or family in sources:
            ended.append(row_jti)
            if len(ended) == limit:
                break
    return ended


# --- revocations -------------------------------------------------------------------------------


async def insert_revocation(
    conn: AsyncConnection,
    sealer: RowSealer,
    *,
    kind: RevocationKind,
    value: str,
    reason: str,
    revoked_by: str,
    now: datetime,
    expires_at: datetime | None = None,
) -> tuple[Revocation, bool]:
    """Revoke ``(kind, value)``; returns the entry and whether this call created it (and
    accounted for it in the revocation ledger, :mod:`tether.store.revocation_ledger`).

    ``expires_at`` must not come before the expiry of the longest credential the entry can
    affect; None keeps it forever.
    """
    await lock_revocations(conn)
    values = {
        "kind": kind,
        "value": value,
        "reason": reason,
        "revoked_by": revoked_by,
        "revoked_at": now,
        "expires_at": expires_at,
    }
    stmt = upsert_insert(conn, revocations).values(values)
    stmt = stmt.on_conflict_do_nothing(index_elements=[revocations.c.kind, revocations.c.value])
    row = (await conn.execute(stmt.returning(revocations))).mappings().first()
    if row is not None:
        await ledger.record(conn, sealer, row)
        return _revocation(row), True
    existing = select(revocations).where(revocations.c.kind == kind, revocations.c.value == value)
    return _revocation((await conn.execute(existing)).mappings().one()), False


async def lock_revocations(conn: AsyncConnection) -> None:
    """Revocation writers one at a time (ids in commit order; the ledger with them)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("LOCK TABLE revocations IN EXCLUSIVE MODE"))


@dataclass(frozen=True, slots=True)
class RevocationRead:
    """Entries after a cursor, oldest first, and the ledger row as it stood in the same
    snapshot (None: there is none); ``cursor`` is the id to poll after next time."""

    entries: tuple[Revocation, ...]
    rows: tuple[RowMapping, ...]
    ledger: Mapping[str, Any] | None
    cursor: int


_LEDGER_COLUMNS = [c.label(f"ledger_{c.name}") for c in revocation_ledger.c]


async def read_revocations(conn: AsyncConnection, after_id: int) -> RevocationRead:
    """Every entry with an id above ``after_id`` and the ledger, in **one statement** (one
    snapshot on SQLite and PostgreSQL alike): the ledger LEFT JOIN the new entries. No
    ledger row, no result at all (``ledger`` None, entries read on their own then)."""
    query = (
        select(*_LEDGER_COLUMNS, revocations)
        .select_from(revocation_ledger.outerjoin(revocations, revocations.c.id > after_id))
        .order_by(revocations.c.id)
    )
    found = list((await conn.execute(query)).mappings())
    if not found:
        plain = select(revocations).where(revocations.c.id > after_id).order_by(revocations.c.id)
        rows = tuple((await conn.execute(plain)).mappings())
        held = None
    else:
        rows = tuple(row for row in found if row["id"] is not None)
        held = {c.name: found[0][f"ledger_{c.name}"] for c in revocation_ledger.c}
    entries = tuple(_revocation(row) for row in rows)
    cursor = max(after_id, entries[-1].id) if entries else after_id
    return RevocationRead(entries, rows, held, cursor)


async def is_revoked(conn: AsyncConnection, kind: RevocationKind, value: str) -> bool:
    query = select(revocations.c.id).where(revocations.c.kind == kind, revocations.c.value == value)
    return (await conn.execute(query)).first() is not None


async def prune_revocations(conn: AsyncConnection, sealer: RowSealer, now: datetime) -> int:
    """Delete the entries whose ``expires_at`` has passed, accounting for them in the
    ledger; returns how many. Nothing is pruned unless the ledger verifies and accounts for
    exactly the entries present: a prune never deletes the evidence of a change made
    outside Tether."""
    await lock_revocations(conn)
    held = await ledger.locked(conn, sealer)
    present = (await conn.execute(select(revocations))).mappings().all()
    if held is None or not ledger.matches(sealer, held, present):
        log.error("revocations not pruned: %s", ledger.MISMATCH if held else "see above")
        return 0
    rows = [row for row in present if row["expires_at"] is not None and row["expires_at"] <= now]
    if not rows:
        return 0
    ids = [row["id"] for row in rows]
    await conn.execute(delete(revocations).where(revocations.c.id.in_(ids)))
    digest, count = ledger.tags(sealer, rows)
    await ledger.write(conn, sealer, held.pruning(digest, count))
    return count


async def prune_records(conn: AsyncConnection, cutoff: datetime, limit: int = 1000) -> int:
    """Delete up to ``limit`` credential records that expired before ``cutoff`` and whose
    renewal family has no record expiring at or after it; how many."""
    kept = aliased(credentials)
    family_kept = exists().where(kept.c.family == credentials.c.family, kept.c.expires_at >= cutoff)
    head_kept = exists().where(kept.c.family == credentials.c.jti, kept.c.expires_at >= cutoff)
    old = select(credentials.c.jti).where(
        credentials.c.expires_at < cutoff, ~family_kept, ~head_kept
    )
    jtis = list((await conn.execute(old.limit(limit))).scalars())
    if not jtis:
        return 0
    await conn.execute(delete(credentials).where(credentials.c.jti.in_(jtis)))
    return len(jtis)


# --- rows --------------------------------------------------------------------------------------


def _strings(value: Sequence[Any] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(str(v) for v in value)


def _credential(row: RowMapping) -> Credential:
    return Credential(
        jti=row["jti"],
        kind=row["kind"],
        agent_id=row["agent_id"],
        subject=row["subject"],
        scope=_strings(row["scope"]) or (),
        issued_at=row["issued_at"],
        expires_at=row["expires_at"],
        runtime_id=row["runtime_id"],
        task_id=row["task_id"],
        actor_chain=_strings(row["actor_chain"]),
        serial=row["serial"],
        key_thumbprint=row["key_thumbprint"],
        task_purpose=row["task_purpose"],
        groups=_strings(row["user_groups"]),
        token_jti=row["token_jti"],
        derived_from=_strings(row["derived_from"]),
        family=row["family"],
        act_groups=_act_groups(row["act_groups"]),
    )


def _act_groups(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    """The recorded ``act_groups``; None (no groups for anyone) for anything else."""
    if not isinstance(value, list):
        return None
    entries: list[tuple[str, tuple[str, ...]]] = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("sub"), str):
            return None
        groups = entry.get("groups")
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            return None
        entries.append((entry["sub"], tuple(groups)))
    return tuple(entries)


def _revocation(row: RowMapping) -> Revocation:
    return Revocation(
        id=row["id"],
        kind=row["kind"],
        value=row["value"],
        reason=row["reason"],
        revoked_by=row["revoked_by"],
        revoked_at=row["revoked_at"],
        expires_at=row["expires_at"],
    )
