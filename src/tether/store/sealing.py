"""The sealed tables, and adopting the rows written before they were sealed.

Migrations 0015, 0016, 0017, 0019 and 0020 added a nullable ``seal`` column to each table of
:data:`SEALED`; Tether computes it on every write and refuses a row whose seal is missing or wrong
(:mod:`tether.crypto.seal`). The migration cannot seal the rows already there (it does not
hold the master key), so those rows are refused until an operator adopts them with
``tether store seal`` (:func:`adopt`).

Security decision: **adoption is explicit, never automatic.** A node that sealed unsealed
rows on its own (at start, say) would seal a row planted in the database behind its back
just as well as a genuine one written before the upgrade, and whatever marker recorded
"adoption done" would sit in the same database, where the one who planted the row can
delete it. Only an operator's ``tether store seal``, which lists every row it seals, turns
an unsealed row into a trusted one; a node only counts unsealed rows at start and logs
them as an error (:func:`unsealed`).

The revocation ledger (migration 0021, :mod:`tether.store.revocation_ledger`) is adopted the
same way: when it is missing (a database from before 0021) or its seal was cleared by an
operator, :func:`adopt` rebuilds it from the revocations as they stand. A database no node
has started on yet (no signing key) has no ledger and needs none: its first start makes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.approvals.schema import grants
from tether.approvals.store import grant_seal_columns
from tether.crypto.seal import RowSealer, SealValue
from tether.store import revocation_ledger as ledger
from tether.store.agents import join_seal_columns, runtime_seal_columns
from tether.store.credentials import credential_seal_columns, lock_revocations
from tether.store.identity import agent_seal_columns
from tether.store.keys import admin_seal_columns, any_signing_key, signing_key_seal_columns
from tether.store.schema import (
    admin_tokens,
    agents,
    credentials,
    join_tokens,
    revocation_ledger,
    revocations,
    runtimes,
    signing_keys,
)
from tether.users.schema import user_tokens, users
from tether.users.store import token_seal_columns, user_columns
from tether.vault import targets as target_store
from tether.vault.schema import targets

Columns = Callable[[AsyncConnection, RowMapping], Awaitable[dict[str, SealValue]]]


@dataclass(frozen=True)
class SealedTable:
    """A table whose rows carry a seal: its key column and its sealed columns (which may
    read other tables: a user's roles and groups)."""

    table: Table
    key: str
    columns: Columns


def _of_row(columns: Callable[[Mapping[str, Any] | RowMapping], dict[str, SealValue]]) -> Columns:
    async def read(_conn: AsyncConnection, row: RowMapping) -> dict[str, SealValue]:
        return columns(row)

    return read


SEALED: tuple[SealedTable, ...] = (
    SealedTable(targets, "name", _of_row(target_store.seal_columns)),
    SealedTable(admin_tokens, "id", _of_row(admin_seal_columns)),
    SealedTable(join_tokens, "id", _of_row(join_seal_columns)),
    SealedTable(users, "id", user_columns),
    SealedTable(user_tokens, "id", _of_row(token_seal_columns)),
    SealedTable(agents, "id", _of_row(agent_seal_columns)),  # migration 0016
    SealedTable(grants, "id", _of_row(grant_seal_columns)),  # migration 0017
    SealedTable(credentials, "jti", _of_row(credential_seal_columns)),  # migration 0019
    SealedTable(runtimes, "id", _of_row(runtime_seal_columns)),  # migration 0019
    SealedTable(signing_keys, "kid", _of_row(signing_key_seal_columns)),  # migration 0020
)


def shown(key: str) -> str:
    """A row's key as printed for an operator: a key that is not plain printable ASCII
    without spaces is shown quoted and escaped, so that a key planted in the database
    cannot forge or hide a line of the listing, or pass for another one."""
    plain = key.isascii() and key.isprintable() and " " not in key
    return key if key and plain else ascii(key)


async def unsealed(engine: AsyncEngine) -> dict[str, list[str]]:
    """The keys of the rows without a seal, by table (tables without any left out)."""
    found: dict[str, list[str]] = {}
    async with engine.connect() as conn:
        for sealed in SEALED:
            key = sealed.table.c[sealed.key]
            query = select(key).where(sealed.table.c.seal.is_(None)).order_by(key)
            keys = [str(value) for value in (await conn.execute(query)).scalars()]
            if keys:
                found[sealed.table.name] = keys
        query = select(revocation_ledger.c.seal).where(revocation_ledger.c.id == 1)
        held = (await conn.execute(query)).first()
        started = await any_signing_key(conn)  # else the first start makes the ledger
        if (held is None and started) or (held is not None and held.seal is None):
            found[revocation_ledger.name] = ["missing" if held is None else "unsealed"]
    return found


async def adopt(engine: AsyncEngine, sealer: RowSealer) -> dict[str, list[str]]:
    """Seal every row that has no seal, as it stands; the keys sealed, by table.

    Rows whose seal is present but wrong are left as they are (refused): adoption is for
    rows written before the seals existed, never a way to bless a tampered row.
    """
    done: dict[str, list[str]] = {}
    async with engine.begin() as conn:
        for sealed in SEALED:
            table, key = sealed.table, sealed.table.c[sealed.key]
            query = select(table).where(table.c.seal.is_(None)).with_for_update()
            rows = (await conn.execute(query)).mappings()
            for row in list(rows):
                seal = sealer.seal(table.name, await sealed.columns(conn, row))
                statement = (
                    update(table)
                    .where(key == row[sealed.key], table.c.seal.is_(None))
                    .values(seal=seal)
                )
                if (await conn.execute(statement)).rowcount == 1:
                    done.setdefault(table.name, []).append(str(row[sealed.key]))
        if await any_signing_key(conn):  # else the first start makes the ledger
            await lock_revocations(conn)
            present = (await conn.execute(select(revocations))).mappings().all()
            adopted = await ledger.adopt(conn, sealer, present)
            if adopted is not None:
                done[revocation_ledger.name] = [f"revocations={adopted}"]
    return {name: sorted(keys) for name, keys in done.items()}
