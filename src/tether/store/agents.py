"""Agents, the runtimes they were attested in, their join tokens, and offboarding.

Security decisions:

* **Offboarded is final.** :func:`set_agent_state` only moves between ``active`` and
  ``disabled`` and never touches an offboarded agent; only :func:`offboard_agent` offboards,
  and it revokes the agent and expires its unused join tokens in the caller's transaction.
* **A join token is consumed at most once**, by one conditional ``UPDATE`` (unused, not
  expired, right secret, agent active) whose row count decides: of any number of concurrent
  consumers, on any number of nodes, exactly one wins. A wrong secret consumes nothing.
* **Join token rows are sealed** (:mod:`tether.crypto.seal`, migration 0015): the HMAC
  under the master key of the id, hash, agent, runtime labels, expiry and use. A row planted
  or changed without the master key (a token of the writer's choosing for an existing
  agent, an expiry pushed back, a use cleared) does not verify and
  :func:`consume_join_token` treats it as unknown, logging an error; the consuming
  ``UPDATE`` also requires the seal it verified, so the row cannot change in between.
* **A join token used is also a revocation** (kind ``token``, value
  :func:`join_token_revocation`, until the token's own expiry), written in the consuming
  transaction: its row put back unused as it was (a restored backup, or someone holding
  the token's text and write access to the database) verifies, but every node that holds
  the revocation (in its list, or in its copy after the whole database was put back)
  refuses it (:func:`tether.identity.grants`). Without this a join token pasted into a CI
  log would join again after any rollback.
* **Agent rows are sealed** (migration 0016): the HMAC under the master key of the id,
  owner, labels and state (:func:`tether.store.identity.agent_seal_columns`). Whoever can
  write to the database could otherwise enable a disabled agent again or give it the
  labels a broader rule matches. :func:`verified_agent` raises :class:`AgentUnverified`
  for a row that does not verify (the node refuses its credentials: ``check_live``), and
  nothing is issued to it (:func:`tether.store.identity.insert_if_agent_active`).
  :func:`set_agent_state` and :func:`offboard_agent` seal again only a row whose seal
  verified: a row changed outside Tether stays refused, never blessed. ``last_seen_at``,
  ``purpose`` and the times are not sealed (nothing is granted on them); :func:`get_agent`
  reads a row unverified, for display.
* **A row put back is refused** (migration 0022): each change raises the row's sealed
  ``revision`` (:func:`next_revision`), and a node refuses a row older than one it
  admitted (:mod:`tether.crypto.revisions`): disabling an agent cannot be undone by
  writing its earlier row back.
* **Runtime rows are sealed** (migration 0019): everything an attestation writes (agent,
  platform, labels, attester, last attestation, address). An SSH session's runtime labels
  and a renewal's bound come from this row: :func:`verified_runtime` answers None for a
  row that does not verify (refused like an unknown runtime).
* **A runtime never changes hands**: re-attesting a runtime id under another agent is
  refused (:class:`RuntimeOfAnotherAgent`) rather than rewriting whose runtime it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    RowMapping,
    and_,
    delete,
    exists,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.crypto.revisions import row_revision
from tether.crypto.seal import RowSealer, SealValue
from tether.store.credentials import Revocation, insert_revocation, lock_revocations
from tether.store.database import StoreError
from tether.store.identity import (
    AGENTS,
    Labels,
    RuntimeOfAnotherAgent,
    agent_admitted,
    agent_seal_columns,
    frozen_labels,
    insert_if_agent_active,
    upsert_insert,
)
from tether.store.schema import agents, join_tokens, runtimes

AgentState = Literal["active", "disabled", "offboarded"]
JOIN_TOKENS = "join_tokens"


@dataclass(frozen=True, slots=True)
class Agent:
    """A non-human identity, owned by a person or team."""

    id: str
    owner: str
    purpose: str | None
    labels: Labels
    state: AgentState
    created_at: datetime
    updated_at: datetime
    last_seen_at: datetime | None
    revision: int = 0  # raised by each change (migration 0022, tether.crypto.revisions)


@dataclass(frozen=True, slots=True)
class Runtime:
    """Where an agent was attested to run; ``attested_by`` names the join method or issuer."""

    id: str
    agent_id: str
    platform: str
    labels: Labels
    attested_by: str
    first_seen_at: datetime
    last_seen_at: datetime
    address: str | None


@dataclass(frozen=True, slots=True)
class JoinToken:
    """A one-time join token; its secret's hash is deliberately not part of the row."""

    id: str
    agent_id: str
    runtime_labels: Labels
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    used_by_runtime: str | None


RUNTIMES = "runtimes"


def runtime_seal_columns(row: Mapping[str, Any] | RowMapping) -> dict[str, SealValue]:
    """The sealed columns of a ``runtimes`` row: what each attestation writes."""
    names = ("id", "agent_id", "platform", "labels", "attested_by", "last_seen_at", "address")
    return {name: row[name] for name in names}


class AgentUnverified(StoreError):
    """The agent's row does not verify (changed outside Tether): refuse whatever it asks."""


_JOIN_TOKEN_COLUMNS = [c for c in join_tokens.c if c.name not in ("token_hash", "seal")]


def join_seal_columns(row: Mapping[str, Any] | RowMapping) -> dict[str, SealValue]:
    """The sealed columns of a ``join_tokens`` row (as written, or as read back)."""
    names = ("id", "token_hash", "agent_id", "runtime_labels", "expires_at", "used_at",
             "used_by_runtime")  # fmt: skip
    return {name: row[name] for name in names}


@dataclass(frozen=True, slots=True)
class Offboarding:
    """What :func:`offboard_agent` did."""

    agent: Agent
    revocation: Revocation
    expired_join_tokens: int


# --- agents ------------------------------------------------------------------------------------


async def create_agent(
    conn: AsyncConnection,
    sealer: RowSealer,
    *,
    id: str,
    owner: str,
    now: datetime,
    purpose: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> Agent:
    """Record a new, active agent; a duplicate id is an ``IntegrityError``."""
    values = {
        "id": id,
        "owner": owner,
        "purpose": purpose,
        "labels": dict(labels or {}),
        "state": "active",
        "created_at": now,
        "updated_at": now,
        "last_seen_at": None,
        "revision": 1,
    }
    values["seal"] = sealer.seal(AGENTS, agent_seal_columns(values))
    row = (await conn.execute(insert(agents).values(values).returning(agents))).mappings().one()
    return _agent(row)


async def get_agent(conn: AsyncConnection, agent_id: str) -> Agent | None:
    """The agent as stored, its seal not checked: for display (use :func:`verified_agent`
    for anything that grants)."""
    row = (await conn.execute(select(agents).where(agents.c.id == agent_id))).mappings().first()
    return None if row is None else _agent(row)


async def verified_agent(conn: AsyncConnection, sealer: RowSealer, agent_id: str) -> Agent | None:
    """The agent, or None when there is none; :class:`AgentUnverified` when its row's seal
    does not verify (an error is logged)."""
    row = (await conn.execute(select(agents).where(agents.c.id == agent_id))).mappings().first()
    if row is None:
        return None
    if not agent_admitted(sealer, row):
        raise AgentUnverified(f"agent {agent_id!r}: its stored row does not verify")
    return _agent(row)


async def list_agents(
    conn: AsyncConnection,
    *,
    state: AgentState | None = None,
    owner: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[Agent]:
    """Agents matching every filter given (``labels``: each name has that value), by id."""
    where: list[ColumnElement[bool]] = []
    if state is not None:
        where.append(agents.c.state == state)
    if owner is not None:
        where.append(agents.c.owner == owner)
    for name, value in (labels or {}).items():
        where.append(agents.c.labels[name].as_string() == value)
    query = select(agents).where(*where).order_by(agents.c.id)
    return [_agent(row) for row in (await conn.execute(query)).mappings()]


async def set_agent_state(
    conn: AsyncConnection,
    sealer: RowSealer,
    agent_id: str,
    state: Literal["active", "disabled"],
    now: datetime,
) -> Agent | None:
    """Enable or disable an agent; None when it is unknown or offboarded (which is final).

    Sealed again only when its seal verified: an agent changed outside Tether can still be
    disabled (and stays refused), never enabled into a trusted row. A row older than one
    this node admitted (put back whole) is refused for enabling too, but disabling it
    seals it again, disabled, at a revision above both: the way back for an operator."""
    if state not in ("active", "disabled"):
        raise ValueError(f"set_agent_state cannot set {state!r}: use offboard_agent")
    found = (
        (await conn.execute(select(agents).where(agents.c.id == agent_id).with_for_update()))
        .mappings()
        .first()
    )
    if found is None or found["state"] == "offboarded":
        return None
    values: dict[str, Any] = {"state": state, "updated_at": now}
    values["revision"] = next_revision(sealer, found)
    # A row Tether wrote but older than one this node admitted (put back) may be sealed
    # again as disabled, which grants nothing: then reviewed, and enabled on purpose.
    genuine = state == "disabled" and sealer.verify(
        AGENTS, agent_seal_columns(found), found["seal"]
    )
    if agent_admitted(sealer, found) or genuine:
        values["seal"] = sealer.seal(AGENTS, agent_seal_columns({**found, **values}))
    elif state == "active":
        raise AgentUnverified(f"agent {agent_id!r}: its stored row does not verify")
    query = (
        update(agents)
        .where(
            agents.c.id == agent_id,
            agents.c.state != "offboarded",
            agents.c.seal.is_not_distinct_from(found["seal"]),  # the row verified, unchanged
        )
        .values(values)
        .returning(agents)
    )
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        raise StoreError(f"agent {agent_id!r} changed while its state was set; try again")
    return _agent(row)


def next_revision(sealer: RowSealer, found: Mapping[str, Any] | RowMapping) -> int:
    """The revision a change to the agent ``found`` writes (:meth:`RowSealer.next_revision`)."""
    return sealer.next_revision(AGENTS, str(found["id"]), row_revision(found))


async def touch_agent(conn: AsyncConnection, agent_id: str, now: datetime) -> None:
    """Move ``last_seen_at`` forward to ``now`` (never backward: nodes' calls may cross)."""
    seen = agents.c.last_seen_at
    await conn.execute(
        update(agents)
        .where(agents.c.id == agent_id, or_(seen.is_(None), seen < now))
        .values(last_seen_at=now)
    )


async def offboard_agent(
    conn: AsyncConnection,
    sealer: RowSealer,
    agent_id: str,
    *,
    reason: str,
    revoked_by: str,
    now: datetime,
    revocation_expires_at: datetime | None = None,
) -> Offboarding | None:
    """Offboard an agent: state, revocation and join tokens, all in the caller's transaction.

    Run it inside ``engine.begin()`` so that either all three happen or none. The agent
    revocation is what stops credentials already issued; by default it is never pruned
    (``revocation_expires_at`` None), since a credential issued concurrently on another
    node may outlive any bound computed here. None when the agent is unknown.
    """
    found = (
        (await conn.execute(select(agents).where(agents.c.id == agent_id).with_for_update()))
        .mappings()
        .first()
    )
    if found is None:
        return None
    # Offboarded whatever its seal says (refusing is always safe); sealed again only if
    # its seal verified.
    gone: dict[str, Any] = {"state": "offboarded", "updated_at": now}
    gone["revision"] = next_revision(sealer, found)
    if sealer.verify(AGENTS, agent_seal_columns(found), found["seal"]):
        gone["seal"] = sealer.seal(AGENTS, agent_seal_columns({**found, **gone}))
    query = update(agents).where(agents.c.id == agent_id).values(gone).returning(agents)
    row = (await conn.execute(query)).mappings().one()
    revocation, _ = await insert_revocation(
        conn,
        sealer,
        kind="agent",
        value=agent_id,
        reason=reason,
        revoked_by=revoked_by,
        now=now,
        expires_at=revocation_expires_at,
    )
    unused = and_(
        join_tokens.c.agent_id == agent_id,
        join_tokens.c.used_at.is_(None),
        join_tokens.c.expires_at > now,
    )
    expired = 0
    for token in (await conn.execute(select(join_tokens).where(unused))).mappings().all():
        values: dict[str, Any] = {"expires_at": now}
        # Sealed again only if its seal verified: a row changed outside Tether is expired
        # all the same and stays refused, never blessed.
        if sealer.verify(JOIN_TOKENS, join_seal_columns(token), token["seal"]):
            values["seal"] = sealer.seal(JOIN_TOKENS, join_seal_columns({**token, **values}))
        statement = update(join_tokens).where(unused, join_tokens.c.id == token["id"])
        expired += (await conn.execute(statement.values(values))).rowcount
    return Offboarding(_agent(row), revocation, expired)


# --- runtimes ----------------------------------------------------------------------------------


async def upsert_runtime(
    conn: AsyncConnection,
    sealer: RowSealer,
    *,
    id: str,
    agent_id: str,
    platform: str,
    attested_by: str,
    now: datetime,
    labels: Mapping[str, str] | None = None,
    address: str | None = None,
) -> Runtime:
    """Record an attestation of runtime ``id``: first sight inserts, later ones update.

    ``first_seen_at`` is kept; the rest is what the latest attestation said. Raises
    :class:`RuntimeOfAnotherAgent` when ``id`` is known under another agent.
    """
    values: dict[str, Any] = {
        "id": id,
        "agent_id": agent_id,
        "platform": platform,
        "labels": dict(labels or {}),
        "attested_by": attested_by,
        "first_seen_at": now,
        "last_seen_at": now,
        "address": address,
    }
    # Everything an attestation writes is sealed (not first_seen_at, which it keeps).
    values["seal"] = sealer.seal(RUNTIMES, runtime_seal_columns(values))
    stmt = upsert_insert(conn, runtimes).values(values)
    new = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=[runtimes.c.id],
        set_={
            "platform": new.platform,
            "labels": new.labels,
            "attested_by": new.attested_by,
            "last_seen_at": new.last_seen_at,
            "address": new.address,
            "seal": new.seal,
        },
        where=runtimes.c.agent_id == new.agent_id,
    )
    row = (await conn.execute(stmt.returning(runtimes))).mappings().first()
    if row is None:
        raise RuntimeOfAnotherAgent(f"runtime {id!r} belongs to another agent")
    return _runtime(row)


async def get_runtime(conn: AsyncConnection, runtime_id: str) -> Runtime | None:
    """The runtime as stored, its seal not checked: for display (use
    :func:`verified_runtime` for anything that grants or bounds)."""
    query = select(runtimes).where(runtimes.c.id == runtime_id)
    row = (await conn.execute(query)).mappings().first()
    return None if row is None else _runtime(row)


async def verified_runtime(
    conn: AsyncConnection, sealer: RowSealer, runtime_id: str
) -> Runtime | None:
    """The runtime, or None when there is none or its row's seal does not verify (an error
    is logged): its labels and last attestation are then nobody's to trust."""
    query = select(runtimes).where(runtimes.c.id == runtime_id)
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        return None
    what = f"runtime {runtime_id!r} (agent {row['agent_id']!r})"
    if not sealer.admits(RUNTIMES, runtime_seal_columns(row), row["seal"], what=what):
        return None
    return _runtime(row)


async def list_runtimes(conn: AsyncConnection, agent_id: str) -> list[Runtime]:
    """The runtimes of an agent, most recently seen first."""
    query = (
        select(runtimes)
        .where(runtimes.c.agent_id == agent_id)
        .order_by(runtimes.c.last_seen_at.desc(), runtimes.c.id)
    )
    return [_runtime(row) for row in (await conn.execute(query)).mappings()]


# --- join tokens -------------------------------------------------------------------------------


async def insert_join_token(
    conn: AsyncConnection,
    sealer: RowSealer,
    *,
    id: str,
    token_hash: bytes,
    agent_id: str,
    now: datetime,
    expires_at: datetime,
    runtime_labels: Mapping[str, str] | None = None,
) -> JoinToken:
    """Record a join token for an active agent (else :class:`AgentNotActive`).

    ``token_hash`` is ``identity.digest(secret)``; the secret itself never reaches the store.
    """
    values: dict[str, Any] = {
        "id": id,
        "token_hash": token_hash,
        "agent_id": agent_id,
        "runtime_labels": dict(runtime_labels or {}),
        "created_at": now,
        "expires_at": expires_at,
        "used_at": None,
        "used_by_runtime": None,
    }
    values["seal"] = sealer.seal(JOIN_TOKENS, join_seal_columns(values))
    await insert_if_agent_active(conn, sealer, join_tokens, values)
    token = await get_join_token(conn, id)
    assert token is not None  # just inserted in this transaction
    return token


async def get_join_token(conn: AsyncConnection, token_id: str) -> JoinToken | None:
    query = select(*_JOIN_TOKEN_COLUMNS).where(join_tokens.c.id == token_id)
    row = (await conn.execute(query)).mappings().first()
    return None if row is None else _join_token(row)


async def join_token_unused(
    conn: AsyncConnection, *, id: str, token_hash: bytes, now: datetime
) -> bool:
    """Whether join token ``id`` with this secret exists, unused and unexpired: a read-only
    first look, so that a request with a made-up token is refused before anything is recorded
    for it (:func:`consume_join_token` checks everything again, the seal included)."""
    query = select(join_tokens.c.id).where(
        join_tokens.c.id == id,
        join_tokens.c.token_hash == token_hash,
        join_tokens.c.used_at.is_(None),
        join_tokens.c.expires_at > now,
    )
    return (await conn.execute(query)).first() is not None


async def consume_join_token(
    conn: AsyncConnection,
    sealer: RowSealer,
    *,
    id: str,
    token_hash: bytes,
    runtime_id: str,
    now: datetime,
) -> JoinToken | None:
    """Use up join token ``id`` for ``runtime_id``; None unless this very call consumed it.

    The row found by id and secret must verify (its seal, else it is refused and logged);
    then a single ``UPDATE`` checks everything (secret, unused, unexpired, agent active,
    the seal just verified) and marks the token used, sealed as used; the database's row
    lock makes a concurrent second consumer find it used. The reason of a refusal is not
    told, so it cannot be used to probe tokens.
    """
    found = select(join_tokens).where(
        join_tokens.c.id == id, join_tokens.c.token_hash == token_hash
    )
    row = (await conn.execute(found)).mappings().first()
    if row is None:
        return None
    what = f"join token {row['id']!r} (agent {row['agent_id']!r})"
    if not sealer.admits(JOIN_TOKENS, join_seal_columns(row), row["seal"], what=what):
        return None
    used: dict[str, Any] = {"used_at": now, "used_by_runtime": runtime_id}
    used["seal"] = sealer.seal(JOIN_TOKENS, join_seal_columns({**row, **used}))
    # The revocations' lock before the token's row, the order an offboarding takes them in
    # (it expires the agent's unused join tokens after revoking it): never a deadlock.
    await lock_revocations(conn)
    agent_active = exists().where(agents.c.id == join_tokens.c.agent_id, agents.c.state == "active")
    query = (
        update(join_tokens)
        .where(
            join_tokens.c.id == id,
            join_tokens.c.token_hash == token_hash,
            join_tokens.c.used_at.is_(None),
            join_tokens.c.expires_at > now,
            join_tokens.c.seal == row["seal"],
            agent_active,
        )
        .values(used)
        .returning(*_JOIN_TOKEN_COLUMNS)
    )
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        return None
    await insert_revocation(
        conn, sealer, kind="token", value=join_token_revocation(id), reason="join token used",
        revoked_by="tether", now=now, expires_at=row["expires_at"],
    )  # fmt: skip
    return _join_token(row)


async def prune_join_tokens(conn: AsyncConnection, cutoff: datetime, limit: int = 1000) -> int:
    """Delete up to ``limit`` join tokens, used or not, that expired before ``cutoff``; how
    many. (One put back from a backup is refused all the same: its sealed expiry passed.)"""
    old = select(join_tokens.c.id).where(join_tokens.c.expires_at < cutoff).limit(limit)
    ids = list((await conn.execute(old)).scalars())
    if ids:
        await conn.execute(delete(join_tokens).where(join_tokens.c.id.in_(ids)))
    return len(ids)


def join_token_revocation(token_id: str) -> str:
    """The revocation list's value (kind ``token``) for join token ``token_id`` once used:
    never a token's jti (those have no ``:``)."""
    return f"join-token:{token_id}"


# --- rows --------------------------------------------------------------------------------------


def _agent(row: RowMapping) -> Agent:
    return Agent(
        id=row["id"],
        owner=row["owner"],
        purpose=row["purpose"],
        labels=frozen_labels(row["labels"]),
        state=row["state"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_seen_at=row["last_seen_at"],
        revision=row_revision(row),
    )


def _runtime(row: RowMapping) -> Runtime:
    return Runtime(
        id=row["id"],
        agent_id=row["agent_id"],
        platform=row["platform"],
        labels=frozen_labels(row["labels"]),
        attested_by=row["attested_by"],
        first_seen_at=row["first_seen_at"],
        last_seen_at=row["last_seen_at"],
        address=row["address"],
    )


def _join_token(row: RowMapping) -> JoinToken:
    return JoinToken(
        id=row["id"],
        agent_id=row["agent_id"],
        runtime_labels=frozen_labels(row["runtime_labels"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        used_at=row["used_at"],
        used_by_runtime=row["used_by_runtime"],
    )
