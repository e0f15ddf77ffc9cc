"""The revocation ledger: what makes a deleted revocation visible.

Row seals (:mod:`tether.crypto.seal`) prove that Tether wrote a row, not that a row is
still there; yet deleting a revocation is exactly what someone holding a stolen token
and write access to the database would do. So the ``revocations`` table has one sealed
companion row, ``revocation_ledger`` (migration 0021):

* ``entries``: how many revocations were ever recorded, ``pruned``: how many were pruned;
* ``digest`` and ``pruned_digest``: the XOR of the **tags** of those rows, where a row's
  tag is an HMAC of its columns under the row-seal key (another label than any seal),
  stored nowhere;
* ``seal``: the row seal of those four values.

The revocations present must then count ``entries - pruned`` and XOR to
``digest ^ pruned_digest`` (:func:`matches`). A row deleted, changed or planted breaks
that: its tag is a pseudo-random 256-bit value the writer cannot compute, so they cannot
make the XOR come out right by deleting or adding other rows either. A node that polls new
rows checks that they continue the ledger it trusts (:func:`continues`).

Security decisions:

* **Written in the revocation's transaction**, under the table lock that orders
  revocations (PostgreSQL) or SQLite's write lock: the ledger never lags its rows.
* **Read in the same statement as the rows** (:func:`tether.store.credentials.read_revocations`):
  one snapshot on both databases, so a revocation committed between two reads can never
  look like a planted one.
* **A ledger that does not verify is never written again** by a revocation or a prune
  (the revocation is recorded all the same: refusing more is always safe), so tampering
  stays visible until an operator re-adopts the list (:func:`adopt`).
* **Created with a database's first signing keys** (:func:`create_if_absent`, called by
  :func:`tether.identity.keystore.load_or_create`), never because it is missing: a writer
  who deletes the ledger and the revocations must also delete every signing key, which
  ends every token and certificate those revocations were about.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from sqlalchemy import RowMapping, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.crypto.seal import RowSealer, SealValue
from tether.store.identity import upsert_insert
from tether.store.schema import revocation_ledger

log = logging.getLogger(__name__)

LEDGER: Final = "revocation_ledger"
TAG_LABEL: Final = "revocations/ledger-tag"
TAGGED: Final = ("kind", "value", "reason", "revoked_by", "revoked_at", "expires_at")
_ZERO: Final = bytes(32)

Row: TypeAlias = Mapping[str, Any] | RowMapping


@dataclass(frozen=True, slots=True)
class Ledger:
    """The ledger's values (as verified by its seal)."""

    entries: int = 0
    digest: bytes = _ZERO
    pruned: int = 0
    pruned_digest: bytes = _ZERO

    def columns(self) -> dict[str, SealValue]:
        return {
            "entries": self.entries,
            "digest": self.digest.hex(),
            "pruned": self.pruned,
            "pruned_digest": self.pruned_digest.hex(),
        }

    def recorded(self, tags: bytes, count: int) -> Ledger:
        return Ledger(self.entries + count, xor(self.digest, tags), self.pruned, self.pruned_digest)

    def pruning(self, tags: bytes, count: int) -> Ledger:
        return Ledger(self.entries, self.digest, self.pruned + count, xor(self.pruned_digest, tags))


def xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(32, "big")


def tag(sealer: RowSealer, row: Row) -> bytes:
    """A revocation row's tag: a keyed digest of its columns (not its id)."""
    return sealer.mac(TAG_LABEL, {name: row[name] for name in TAGGED})


def tags(sealer: RowSealer, rows: Iterable[Row]) -> tuple[bytes, int]:
    """The XOR of the rows' tags, and how many rows."""
    total, count = 0, 0
    for row in rows:
        total ^= int.from_bytes(tag(sealer, row), "big")
        count += 1
    return total.to_bytes(32, "big"), count


MISSING: Final = (
    "the revocation ledger is missing: a database from before migration 0021 (adopt its "
    "revocations with `tether store seal`) or a ledger deleted outside Tether"
)
UNSEALED: Final = "the revocation ledger does not verify: it was changed outside Tether"
MISMATCH: Final = (
    "the revocations do not match their ledger: one was deleted, changed or added outside Tether"
)


def verified(sealer: RowSealer, row: Row | None) -> Ledger | str:
    """The ledger ``row`` holds if its seal verifies; else why not (:data:`MISSING`,
    :data:`UNSEALED`). Not logged here: a node logs when its list turns unverified."""
    if row is None:
        return MISSING
    try:
        ledger = Ledger(
            int(row["entries"]),
            bytes.fromhex(row["digest"]),
            int(row["pruned"]),
            bytes.fromhex(row["pruned_digest"]),
        )
    except (TypeError, ValueError):
        return UNSEALED
    if len(ledger.digest) != 32 or len(ledger.pruned_digest) != 32:
        return UNSEALED
    if not sealer.verify(LEDGER, ledger.columns(), row["seal"]):
        return UNSEALED
    return ledger


def matches(sealer: RowSealer, ledger: Ledger, present: Iterable[Row]) -> bool:
    """Whether ``present`` (every revocation row) is what ``ledger`` accounts for."""
    digest, count = tags(sealer, present)
    return count == ledger.entries - ledger.pruned and digest == xor(
        ledger.digest, ledger.pruned_digest
    )


def continues(sealer: RowSealer, before: Ledger, new: Iterable[Row], after: Ledger) -> bool:
    """Whether ``after`` is ``before`` plus exactly the rows ``new`` (prunes aside)."""
    digest, count = tags(sealer, new)
    grown = before.recorded(digest, count)
    return (grown.entries, grown.digest) == (after.entries, after.digest)


async def locked(conn: AsyncConnection, sealer: RowSealer) -> Ledger | None:
    """The ledger, its row locked for the caller's transaction; None (logged) if it does
    not verify."""
    query = select(revocation_ledger).where(revocation_ledger.c.id == 1).with_for_update()
    held = verified(sealer, (await conn.execute(query)).mappings().first())
    if isinstance(held, str):
        log.error("%s (docs/vault.md, Tampering with the database)", held)
        return None
    return held


async def write(conn: AsyncConnection, sealer: RowSealer, ledger: Ledger) -> None:
    values = {**ledger.columns(), "seal": sealer.seal(LEDGER, ledger.columns())}
    await conn.execute(update(revocation_ledger).where(revocation_ledger.c.id == 1).values(values))


async def record(conn: AsyncConnection, sealer: RowSealer, row: Row) -> None:
    """Account for a revocation just inserted in this transaction."""
    ledger = await locked(conn, sealer)
    if ledger is None:
        log.error("revocation of %s %r recorded; the revocation ledger is left as it is",
                  row["kind"], row["value"])  # fmt: skip
        return
    await write(conn, sealer, ledger.recorded(tag(sealer, row), 1))


async def create_if_absent(conn: AsyncConnection, sealer: RowSealer) -> None:
    """An empty ledger, for a new database (with its first signing keys); a ledger that
    is there already is left as it is."""
    empty = Ledger()
    values = {"id": 1, **empty.columns(), "seal": sealer.seal(LEDGER, empty.columns())}
    stmt = upsert_insert(conn, revocation_ledger).values(values).on_conflict_do_nothing()
    await conn.execute(stmt)


async def adopt(conn: AsyncConnection, sealer: RowSealer, present: Iterable[Row]) -> int | None:
    """The ledger rebuilt from the revocations ``present``, when it is missing or its seal
    was cleared (``NULL``: an operator's decision); the number of revocations adopted, or
    None when the ledger is there with a seal (right or wrong: never blessed here)."""
    query = select(revocation_ledger).where(revocation_ledger.c.id == 1).with_for_update()
    row = (await conn.execute(query)).mappings().first()
    if row is not None and row["seal"] is not None:
        return None
    digest, count = tags(sealer, present)
    ledger = Ledger(count, digest)
    if row is None:
        await create_if_absent(conn, sealer)
    await write(conn, sealer, ledger)
    return count
