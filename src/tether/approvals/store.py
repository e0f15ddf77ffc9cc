"""Repository functions for access requests, votes and grants.

Each takes an ``AsyncConnection`` (the caller owns the transaction) and the caller's
``now``. :func:`lock_pending` is how a vote serialises with every other vote on the same
request, on one node or several: its first statement is an ``UPDATE`` of the request row,
which takes PostgreSQL's row lock and SQLite's write lock before anything is read, so two
approvers can never both count "one approval so far" and both miss the quorum (or both
reach it).

A vote counts while its voter is an active user (:func:`load` reads each voter's state):
the approval of a user disabled since does not count towards a pending request's quorum,
and :func:`revoke_short_of_quorum` revokes the live grants that disabling a user leaves
without enough approvals. :func:`lock_voters` makes a count and a concurrent disable of a
voter serialise, so a quorum is never reached on a vote whose user was being disabled.

Security decision: **grants are sealed** (migration 0017, :mod:`tether.crypto.seal`): the
HMAC under the master key of a grant's id, request, agent, task, rule, scope, key
(``digest``), expiry and revocation time. A grant is what turns ``approval_required`` into
an allow, so a row planted or changed in the database (an approval nobody gave, an expiry
pushed back, a revocation cleared) must not count: :func:`held_rules` and
:func:`live_grant_request` count only grants whose seal verifies (the others are logged as
an error), and a revocation seals the row again only when its seal verified.

**Requests and votes are sealed too** (migration 0018), when written (neither changes
afterwards: a request's status and decision times are not sealed). :func:`load` with the
sealer, as a vote and the quorum checks read a request, refuses a request whose seal does
not verify (:class:`~tether.approvals.model.Conflict`: its quorum, approvers or reason
may have been changed) and counts only the votes whose seal verifies (a planted vote would
otherwise complete a quorum with one genuine approval).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.approvals.model import AccessRequest, Conflict, Grant, Vote
from tether.approvals.schema import access_requests, approval_votes, grants
from tether.crypto.seal import RowSealer, SealValue
from tether.store.identity import upsert_insert
from tether.users.schema import users

GRANTS = "grants"
_GRANT_SEALED = ("id", "request_id", "agent_id", "task_id", "rule_id", "scope", "digest",
                 "expires_at", "revoked_at")  # fmt: skip


def grant_seal_columns(row: Mapping[str, Any] | RowMapping) -> dict[str, SealValue]:
    """The sealed columns of a ``grants`` row (as written, or as read back)."""
    return {name: row[name] for name in _GRANT_SEALED}


REQUESTS = "access_requests"
VOTES = "approval_votes"
_REQUEST_SEALED = ("id", "agent_id", "runtime_id", "task_id", "delegation_user",
                   "delegation_chain", "owner", "target", "kind", "action", "digest",
                   "rule_id", "scope", "required", "approvers", "allow_self", "valid_for",
                   "reason", "requested_at", "expires_at")  # fmt: skip


def request_seal_columns(row: Mapping[str, Any] | RowMapping) -> dict[str, SealValue]:
    """The sealed columns of an ``access_requests`` row: all it was made with."""
    return {name: row[name] for name in _REQUEST_SEALED}


def vote_seal_columns(row: Mapping[str, Any] | RowMapping) -> dict[str, SealValue]:
    """The sealed columns of an ``approval_votes`` row."""
    return {name: row[name] for name in ("request_id", "user_id", "vote")}


def _grant_admitted(sealer: RowSealer, row: RowMapping) -> bool:
    what = f"grant {row['id']!r} (request {row['request_id']!r})"
    return sealer.admits(GRANTS, grant_seal_columns(row), row["seal"], what=what)


async def expire_stale(conn: AsyncConnection, pending_key: str, now: datetime) -> None:
    """Give up the key of a pending request whose time to be decided has passed."""
    await conn.execute(
        update(access_requests)
        .where(access_requests.c.pending_key == pending_key, access_requests.c.expires_at <= now)
        .values(
            status="expired", pending_key=None, decided_at=now, updated_at=now,
            revision=access_requests.c.revision + 1,
        )
    )  # fmt: skip


async def expire_due(conn: AsyncConnection, now: datetime) -> list[str]:
    """Mark every pending request past its deadline ``expired``; their ids."""
    due = list(
        await conn.scalars(
            select(access_requests.c.id).where(
                access_requests.c.status == "pending", access_requests.c.expires_at <= now
            )
        )
    )
    for request_id in due:
        await decide(conn, request_id, "expired", "nobody decided in time", now)
    return due


PENDING_ATTEMPTS = 3


async def insert_pending(
    conn: AsyncConnection, sealer: RowSealer, values: Mapping[str, Any]
) -> str:
    """Insert a pending request unless one holds its key; the id of the one that does.

    The insert and the read of the holder are two statements, and on PostgreSQL (read
    committed: each statement sees what was committed before it began) a decision of the
    holding request can commit between them: the insert found the key held, the read finds
    it given up. The key is then free, so the insert is tried again (it now inserts, or
    finds a request that took the key meanwhile). Each retry needs yet another decision to
    land in that gap; after ``PENDING_ATTEMPTS`` the request is refused as a conflict (409)
    rather than failing unexplained. SQLite serialises writing transactions, so there the
    first attempt always answers."""
    key = values["pending_key"]
    values = {**values, "seal": sealer.seal(REQUESTS, request_seal_columns(values))}
    for _attempt in range(PENDING_ATTEMPTS):
        stmt = upsert_insert(conn, access_requests).values(**values)
        await conn.execute(stmt.on_conflict_do_nothing(index_elements=["pending_key"]))
        found = await conn.scalar(
            select(access_requests.c.id).where(access_requests.c.pending_key == key)
        )
        if found is not None:  # just inserted, or held by a committed pending request
            return str(found)
    raise Conflict("the access request was decided while another was raised for it; ask again")


async def load(
    conn: AsyncConnection, request_id: str, sealer: RowSealer | None = None
) -> AccessRequest | None:
    """The request, its votes and grant. With ``sealer`` (to count votes or decide): a
    request whose seal does not verify raises :class:`Conflict`, and only the votes whose
    seal verifies count; without, as stored (to show)."""
    row = (
        (await conn.execute(select(access_requests).where(access_requests.c.id == request_id)))
        .mappings()
        .first()
    )
    if row is None:
        return None
    if sealer is not None:
        what = f"access request {request_id!r}"
        if not sealer.admits(REQUESTS, request_seal_columns(row), row["seal"], what=what):
            raise Conflict(
                f"access request {request_id}: its stored row does not verify "
                "(changed outside Tether, or made before the seals); ask again"
            )
    return await _full(conn, row, sealer)


async def search(
    conn: AsyncConnection,
    *,
    status: str | None = None,
    agent_id: str | None = None,
    limit: int = 100,
) -> list[AccessRequest]:
    query = select(access_requests).order_by(
        access_requests.c.requested_at.desc(), access_requests.c.id
    )
    if status is not None:
        query = query.where(access_requests.c.status == status)
    if agent_id is not None:
        query = query.where(access_requests.c.agent_id == agent_id)
    rows = (await conn.execute(query.limit(limit))).mappings().all()
    return [await _full(conn, row) for row in rows]


async def changed_since(conn: AsyncConnection, since: datetime, limit: int) -> list[AccessRequest]:
    """Requests updated at or after ``since``, oldest change first (the event stream)."""
    query = (
        select(access_requests)
        .where(access_requests.c.updated_at >= since)
        .order_by(access_requests.c.updated_at, access_requests.c.id)
        .limit(limit)
    )
    return [await _full(conn, row) for row in (await conn.execute(query)).mappings().all()]


async def lock_pending(conn: AsyncConnection, request_id: str, now: datetime) -> bool:
    """Lock a request that is still pending and not past its deadline; False otherwise."""
    result = await conn.execute(
        update(access_requests)
        .where(
            access_requests.c.id == request_id,
            access_requests.c.status == "pending",
            access_requests.c.expires_at > now,
        )
        .values(revision=access_requests.c.revision + 1, updated_at=now)
    )
    return result.rowcount == 1


async def insert_vote(
    conn: AsyncConnection,
    sealer: RowSealer,
    request_id: str,
    user_id: str,
    vote: str,
    reason: str | None,
    now: datetime,
) -> None:
    values = {"request_id": request_id, "user_id": user_id, "vote": vote}
    seal = sealer.seal(VOTES, vote_seal_columns(values))
    await conn.execute(
        insert(approval_votes).values(**values, reason=reason, created_at=now, seal=seal)
    )


async def decide(
    conn: AsyncConnection, request_id: str, status: str, reason: str | None, now: datetime
) -> bool:
    """Move a pending request to ``status`` and give up its pending key; False when it
    was not pending."""
    result = await conn.execute(
        update(access_requests)
        .where(access_requests.c.id == request_id, access_requests.c.status == "pending")
        .values(
            status=status, pending_key=None, decided_at=now, decided_reason=reason,
            updated_at=now,
        )
    )  # fmt: skip
    return result.rowcount == 1


async def pending_key_of(conn: AsyncConnection, request_id: str) -> str | None:
    """The key a pending request holds (None once decided)."""
    found = await conn.scalar(
        select(access_requests.c.pending_key).where(access_requests.c.id == request_id)
    )
    return None if found is None else str(found)


async def insert_grant(conn: AsyncConnection, sealer: RowSealer, values: Mapping[str, Any]) -> None:
    sealed = {**values, "seal": sealer.seal(GRANTS, grant_seal_columns(values))}
    await conn.execute(insert(grants).values(**sealed))


async def held_rules(
    conn: AsyncConnection,
    sealer: RowSealer,
    *,
    agent_id: str,
    task_id: str,
    keys: Mapping[str, Collection[str]],
    now: datetime,
) -> set[str]:
    """The rules of ``keys`` (rule id -> the grant keys that would cover the action, see
    :func:`tether.approvals.binding.grant_keys`) with a live grant whose seal verifies."""
    matches = [
        and_(grants.c.rule_id == rule, grants.c.digest.in_(sorted(found)))
        for rule, found in keys.items()
        if found
    ]
    if not matches:
        return set()
    rows = await conn.execute(
        select(grants).where(
            grants.c.agent_id == agent_id,
            grants.c.task_id == task_id,
            grants.c.revoked_at.is_(None),
            grants.c.expires_at > now,
            or_(*matches),
        )
    )
    return {str(row["rule_id"]) for row in rows.mappings() if _grant_admitted(sealer, row)}


async def live_grant_request(
    conn: AsyncConnection,
    sealer: RowSealer,
    *,
    agent_id: str,
    task_id: str,
    rule_id: str,
    keys: Collection[str],
    now: datetime,
) -> str | None:
    """The request id of a live grant covering this action (one of its ``keys``) whose seal
    verifies, if any (the one that expires last)."""
    rows = await conn.execute(
        select(grants)
        .where(
            grants.c.agent_id == agent_id,
            grants.c.task_id == task_id,
            grants.c.rule_id == rule_id,
            grants.c.revoked_at.is_(None),
            grants.c.expires_at > now,
            grants.c.digest.in_(sorted(keys)),
        )
        .order_by(grants.c.expires_at.desc())
    )
    for row in rows.mappings():
        if _grant_admitted(sealer, row):
            return str(row["request_id"])
    return None


async def revoke_grants(
    conn: AsyncConnection, sealer: RowSealer, where: Any, reason: str, now: datetime
) -> list[str]:
    """Revoke the live grants matching ``where``; the ids of their requests. Each is sealed
    again only if its seal verified: a revocation never blesses a changed row (and a
    grant that does not verify counts for nothing anyway)."""
    live = and_(where, grants.c.revoked_at.is_(None))
    rows = (await conn.execute(select(grants).where(live).with_for_update())).mappings().all()
    revoked: list[str] = []
    for row in rows:
        values: dict[str, Any] = {"revoked_at": now, "revoked_reason": reason}
        if sealer.verify(GRANTS, grant_seal_columns(row), row["seal"]):
            values["seal"] = sealer.seal(GRANTS, grant_seal_columns({**row, **values}))
        done = await conn.execute(
            update(grants).where(grants.c.id == row["id"], grants.c.revoked_at.is_(None))
            .values(values)
        )  # fmt: skip
        if done.rowcount == 1:
            revoked.append(str(row["request_id"]))
    return revoked


async def cancel_for(
    conn: AsyncConnection, sealer: RowSealer, column: str, value: str, reason: str, now: datetime
) -> list[str]:
    """Cancel the pending requests and revoke the live grants whose ``column`` is ``value``;
    the ids of the requests affected."""
    pending = list(
        await conn.scalars(
            select(access_requests.c.id).where(
                access_requests.c[column] == value, access_requests.c.status == "pending"
            )
        )
    )
    for request_id in pending:
        await decide(conn, request_id, "cancelled", reason, now)
    affected = set(pending)
    if column in ("agent_id", "task_id"):
        covered = grants.c[column] == value
    else:  # a runtime: the grants of the requests it raised
        covered = grants.c.request_id.in_(
            select(access_requests.c.id).where(access_requests.c[column] == value)
        )
    affected.update(await revoke_grants(conn, sealer, covered, reason, now))
    return sorted(affected)


async def lock_voters(conn: AsyncConnection, request_id: str) -> None:
    """Share-lock the user rows of the request's voters until the transaction ends.

    On PostgreSQL a disable (an ``UPDATE`` of the user's row) either commits before this
    (the count then reads the voter as disabled) or waits for the vote's transaction to
    commit (its grant is then there for :func:`revoke_short_of_quorum` to see). SQLite
    serialises writing transactions anyway and ignores the clause."""
    voters = select(approval_votes.c.user_id).where(approval_votes.c.request_id == request_id)
    await conn.execute(select(users.c.id).where(users.c.id.in_(voters)).with_for_update(read=True))


async def revoke_short_of_quorum(
    conn: AsyncConnection, sealer: RowSealer, user_id: str, reason: str, now: datetime
) -> list[str]:
    """Revoke the live grants ``user_id`` approved that no longer have their ``required``
    approvals of active users (call it in the transaction disabling the user); the ids of
    their requests.

    The grants' rows are locked first, so two approvers of one grant disabled at once are
    counted one after the other (each count then sees the other's disable)."""
    approved_by = select(approval_votes.c.request_id).where(
        approval_votes.c.user_id == user_id, approval_votes.c.vote == "approve"
    )
    live = and_(
        grants.c.request_id.in_(approved_by),
        grants.c.revoked_at.is_(None),
        grants.c.expires_at > now,
    )
    await conn.execute(update(grants).where(live).values(revoked_at=grants.c.revoked_at))
    revoked: list[str] = []
    for request_id in list(await conn.scalars(select(grants.c.request_id).where(live))):
        try:
            found = await load(conn, request_id, sealer)
        except Conflict:  # a request that does not verify: its grant is revoked too
            found = None
            revoked.extend(
                await revoke_grants(conn, sealer, grants.c.request_id == request_id, reason, now)
            )
        if found is not None and found.approvals < found.required:
            covered = grants.c.request_id == request_id
            revoked.extend(await revoke_grants(conn, sealer, covered, reason, now))
    return sorted(revoked)


async def _full(
    conn: AsyncConnection, row: RowMapping, sealer: RowSealer | None = None
) -> AccessRequest:
    votes = (
        await conn.execute(
            select(approval_votes, users.c.state)
            .outerjoin(users, users.c.id == approval_votes.c.user_id)
            .where(approval_votes.c.request_id == row["id"])
            .order_by(approval_votes.c.created_at, approval_votes.c.user_id)
        )
    ).mappings()
    grant_row = (
        (await conn.execute(select(grants).where(grants.c.request_id == row["id"])))
        .mappings()
        .first()
    )
    return AccessRequest(
        id=row["id"], agent_id=row["agent_id"], runtime_id=row["runtime_id"],
        task_id=row["task_id"], delegation_user=row["delegation_user"], owner=row["owner"],
        target=row["target"], kind=row["kind"], action=row["action"], digest=row["digest"],
        rule_id=row["rule_id"], scope=row["scope"], required=row["required"],
        approvers=tuple(row["approvers"]), allow_self=bool(row["allow_self"]),
        valid_for=row["valid_for"], reason=row["reason"], status=row["status"],
        requested_at=row["requested_at"], expires_at=row["expires_at"],
        decided_at=row["decided_at"], decided_reason=row["decided_reason"],
        revision=row["revision"],
        delegation_chain=tuple(row["delegation_chain"] or ()),
        votes=tuple(
            Vote(v["user_id"], v["vote"], v["reason"], v["created_at"],
                 v["state"] == "active" and _vote_counts(sealer, v))
            for v in votes
        ),
        grant=None if grant_row is None else _grant(grant_row), updated_at=row["updated_at"],
    )  # fmt: skip


def _vote_counts(sealer: RowSealer | None, vote: RowMapping) -> bool:
    if sealer is None:
        return True  # shown as stored; counted only through load(..., sealer)
    what = f"vote of {vote['user_id']!r} on access request {vote['request_id']!r}"
    return sealer.admits(VOTES, vote_seal_columns(vote), vote["seal"], what=what)


def _grant(row: RowMapping) -> Grant:
    return Grant(
        row["id"], row["request_id"], row["agent_id"], row["task_id"], row["rule_id"],
        row["scope"], row["digest"], row["created_at"], row["expires_at"], row["revoked_at"],
    )  # fmt: skip


def ids(requests: Iterable[AccessRequest]) -> list[str]:
    return [r.id for r in requests]
