"""The identity store: conventions shared by its repository modules, and its errors.

The repository functions live in ``agents`` (agents, runtimes, join tokens, offboarding),
``credentials`` (issued credentials and revocations) and ``keys`` (signing keys and admin
tokens). Each takes an ``AsyncConnection`` and leaves the transaction to the caller::

    async with store.engine.begin() as conn:
        agent = await agents.create_agent(conn, id="ag-1", owner="alice", now=clock())

Conventions, each a security decision:

* **The clock is the caller's.** Every function that stamps or compares a time takes
  ``now``; nothing reads the system clock, so several nodes and the tests agree on time.
* **Times are aware UTC** (``schema.UTCDateTime``): naive values are refused on write.
* **Secrets are never stored**, only their SHA-256 (:func:`digest`), and the database
  refuses a ``token_hash`` that is not 32 bytes long.
* **Rules hold in the database too**: CHECKs, unique keys and foreign keys back the rules
  the functions follow, so a bug above or a second node cannot break them. Their
  violations surface as ``sqlalchemy.exc.IntegrityError``; refusals that are decided by a
  query (not a constraint) raise the errors below.

Errors::

    StoreError (tether.store.database)
    ├── AgentNotActive          a credential for an agent that is unknown, disabled or gone,
    │                           or whose row does not verify (sealed, like the users')
    ├── UserDisabled            a delegated credential for a user who is disabled
    └── RuntimeOfAnotherAgent   a runtime id already recorded for a different agent
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, Table, exists, insert, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.crypto.revisions import row_revision
from tether.crypto.seal import RowSealer, SealValue, with_revision
from tether.store.database import StoreError
from tether.store.schema import agents

Labels = Mapping[str, str]
AGENTS = "agents"


class AgentNotActive(StoreError):
    """The agent is unknown, disabled or offboarded: nothing may be issued to it."""


class UserDisabled(StoreError):
    """The user a delegated credential acts for is disabled: nothing may be issued for them."""


class RuntimeOfAnotherAgent(StoreError):
    """The runtime id is already recorded for another agent; runtimes never change hands."""


def agent_seal_columns(row: Mapping[str, Any] | RowMapping) -> dict[str, SealValue]:
    """The sealed columns of an ``agents`` row (as written, or as read back): who it is,
    whose it is, the labels policies match on, its state and, from migration 0022, its
    revision (a row sealed before it, revision 0, was sealed without one)."""
    return with_revision({name: row[name] for name in ("id", "owner", "labels", "state")}, row)


def agent_admitted(
    sealer: RowSealer, row: Mapping[str, Any] | RowMapping, *, quiet: bool = False
) -> bool:
    """Whether an ``agents`` row's seal verifies and the row is no older than the newest
    this node admitted (:meth:`RowSealer.current`); an error is logged when not, unless
    ``quiet`` (a caller that logs a refusal once, not at every poll)."""
    what, columns = f"agent {row['id']!r}", agent_seal_columns(row)
    if quiet:
        sealed = sealer.verify(AGENTS, columns, row["seal"])
    else:
        sealed = sealer.admits(AGENTS, columns, row["seal"], what=what)
    revision = row_revision(row)
    return sealed and sealer.current(AGENTS, str(row["id"]), revision, what=what, quiet=quiet)


def digest(secret: str | bytes) -> bytes:
    """The SHA-256 of a token secret: what the store keeps and looks tokens up by."""
    data = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(data).digest()


def frozen_labels(value: Mapping[str, Any] | None) -> Labels:
    """Labels as read from a JSON column, read-only (rows are shared, never edited)."""
    return MappingProxyType({str(k): str(v) for k, v in (value or {}).items()})


def upsert_insert(conn: AsyncConnection, table: Table) -> sqlite.Insert | postgresql.Insert:
    """An INSERT that can take ``ON CONFLICT``, in the dialect of ``conn``.

    Both supported backends have the same clause; a single statement is atomic where a
    select-then-insert would race with another node.
    """
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise StoreError(f"unsupported database dialect {name!r}")


async def insert_if_agent_active(
    conn: AsyncConnection,
    sealer: RowSealer,
    table: Table,
    values: dict[str, Any],
    *,
    unless: ColumnElement[bool] | None = None,
) -> None:
    """Insert one row into ``table`` only while ``values["agent_id"]`` is an active agent
    whose row's seal verifies (and ``unless`` does not hold).

    The agent's row is read and its seal verified, then one ``INSERT ... SELECT ... WHERE
    EXISTS`` statement inserts only while that row is still active *with that very seal*:
    checking the agent first and inserting after would let an offboarding commit in
    between, and a row changed outside Tether in between would not be the one verified.
    Raises :class:`AgentNotActive`.
    """
    agent_id = values["agent_id"]
    found = (await conn.execute(select(agents).where(agents.c.id == agent_id))).mappings().first()
    if found is None or found["state"] != "active" or not agent_admitted(sealer, found):
        raise AgentNotActive(f"agent {agent_id!r} is not active")
    active = exists().where(
        agents.c.id == agent_id, agents.c.state == "active", agents.c.seal == found["seal"]
    )
    row = select(*(literal(v, table.c[k].type).label(k) for k, v in values.items())).where(active)
    if unless is not None:
        row = row.where(~unless)
    result = await conn.execute(insert(table).from_select(list(values), row))
    if result.rowcount != 1:
        raise AgentNotActive(f"agent {agent_id!r} is not active")
