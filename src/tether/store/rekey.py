"""Rotating the master key: everything the database holds under it, moved to a new one in
one transaction (``tether store rekey``).

Under the master key are the envelope ciphertexts (signing keys' private parts, vault
secrets, users' TOTP secrets), the row seals and the revocation ledger (its seal, and its
digest of keyed tags): :mod:`tether.store.integrity` lists them. :func:`rekey` opens each
ciphertext with the old key and encrypts it afresh under the new one, seals again under the
new key every row whose seal verifies under the old one, and rebuilds the ledger under the
new key from the revocations present, once they match the old ledger. Nothing else changes:
tokens, certificates and audit checkpoints are signed by the signing keys, which stay the
same keys, only encrypted under the new master key.

Security decisions:

* **A row keeps its standing.** A row sealed under the old key is sealed under the new one;
  a row without a seal stays without (``tether store seal`` decides about those); a row
  whose seal does not verify is left as it is, so it is refused under the new key as it was
  under the old: rotating never blesses a tampered row. The same holds for a ledger that
  does not verify. Such rows are reported.
* **A ciphertext that does not open stops everything** (:class:`RekeyRefused`, listing
  them): left under the old key it would be lost with it, so nothing is changed until an
  operator has looked.
* **Resumable.** A ciphertext or seal already under the new key counts as done, so running
  it again with the same new key after an interruption (the transaction committed, the key
  file not yet swapped) finishes the job and changes nothing twice.
* Nodes must be stopped: a node still running holds the old key in memory and would write
  rows the new key refuses (running ``rekey`` again with the same new key moves them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.crypto.envelope import DecryptionError, EnvelopeCipher
from tether.crypto.seal import RowSealer
from tether.store import revocation_ledger as ledger
from tether.store.credentials import lock_revocations, read_revocations
from tether.store.integrity import (
    ENCRYPTED,
    SEALED_TABLES,
    Encrypted,
    Standing,
    pages,
    row_key,
    row_standing,
    shown_key,
    standing,
)
from tether.store.schema import revocation_ledger
from tether.store.sealing import SealedTable, shown


class RekeyRefused(Exception):
    """Ciphertexts that open under neither key: nothing was changed."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__(f"{len(failures)} ciphertext(s) do not open under the current key")
        self.failures = failures


@dataclass
class RekeyReport:
    """What :func:`rekey` did, by table: ``moved`` (re-encrypted or sealed again under the new
    key), ``already`` (under the new key before: an earlier run), and ``left``: rows left as
    they were, ``table key (why)``: without a seal, or refused under either key."""

    moved: dict[str, int] = field(default_factory=dict)
    already: dict[str, int] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)

    def count(self, into: dict[str, int], table: str) -> None:
        into[table] = into.get(table, 0) + 1


async def rekey(engine: AsyncEngine, old: EnvelopeCipher, new: EnvelopeCipher) -> RekeyReport:
    """Move everything the database holds under ``old`` to ``new``, in one transaction;
    :class:`RekeyRefused` (and nothing changed) when a ciphertext opens under neither."""
    if old.key_id == new.key_id:
        raise ValueError("the new master key is the current one")
    report = RekeyReport()
    async with engine.begin() as conn:
        await lock_revocations(conn)
        # Which rows of a table holding ciphertexts verify under the old key, judged on
        # their columns as they stand (the ciphertexts are about to change). The other
        # tables, issued credentials among them, are judged a page at a time as they are
        # sealed again: memory stays bounded however many rows they hold.
        encrypted_tables = {encrypted.table.name for encrypted in ENCRYPTED}
        standings = {sealed.table.name: await standing(conn, sealed, old.sealer, new.sealer)
                     for sealed in SEALED_TABLES
                     if sealed.table.name in encrypted_tables}  # fmt: skip
        failures: list[str] = []
        for encrypted in ENCRYPTED:
            await _reencrypt(conn, encrypted, old, new, report, failures)
        if failures:
            raise RekeyRefused(failures)  # rolls the transaction back
        for sealed in SEALED_TABLES:
            known = standings.get(sealed.table.name)
            await _reseal(conn, sealed, known, old.sealer, new.sealer, report)
        await _reledger(conn, old.sealer, new.sealer, report)
    return report


async def _reencrypt(
    conn: AsyncConnection,
    encrypted: Encrypted,
    old: EnvelopeCipher,
    new: EnvelopeCipher,
    report: RekeyReport,
    failures: list[str],
) -> None:
    table, column = encrypted.table, encrypted.table.c[encrypted.column]
    rows = [row async for page in pages(conn, table, column.is_not(None)) for row in page]
    for row in rows:
        name, purpose, value = str(row[encrypted.name]), encrypted.purpose(row), row[column.name]
        try:
            plain = encrypted.open(old, row)
        except DecryptionError as error:
            try:
                encrypted.open(new, row)
            except DecryptionError:
                failures.append(f"{table.name} {shown(name)}: {error}")
                continue
            report.count(report.already, table.name)
            continue
        fresh: str | bytes = (
            new.encrypt_text(plain, purpose=purpose, name=name)
            if encrypted.text
            else new.encrypt(plain, purpose=purpose, name=name)
        )
        key = table.c[encrypted.name]
        statement = update(table).where(key == row[encrypted.name], column == value)
        await conn.execute(statement.values({column.name: fresh}))
        report.count(report.moved, table.name)


async def _reseal(
    conn: AsyncConnection,
    sealed: SealedTable,
    standings: dict[tuple[Any, ...], Standing] | None,
    old: RowSealer,
    new: RowSealer,
    report: RekeyReport,
) -> None:
    """Seal again under ``new`` each row whose seal verifies under ``old``: as ``standings``
    judged it before its ciphertexts moved, or, without them, as the row stands."""
    table, name = sealed.table, sealed.table.name
    keys = list(table.primary_key.columns)
    # One statement per page of rows (executemany). Bind names of their own: a column's
    # name is taken in an UPDATE's SET.
    statement = (
        update(table)
        .where(and_(*[column == bindparam(f"key_{column.name}") for column in keys]))
        .values(seal=bindparam("new_seal"))
    )
    async for page in pages(conn, table):
        batch: list[dict[str, Any]] = []
        for row in page:
            key = row_key(sealed, row)
            if standings is None:
                state = await row_standing(conn, sealed, row, old, new)
            else:
                state = standings.get(key, "refused")  # a row that appeared meanwhile
            if state == "new":
                report.count(report.already, name)
            elif state == "old":
                seal = new.seal(name, await sealed.columns(conn, row))
                batch.append({**{f"key_{c.name}": v for c, v in zip(keys, key, strict=True)},
                              "new_seal": seal})  # fmt: skip
                report.count(report.moved, name)
            else:
                why = "no seal" if state == "unsealed" else "its seal does not verify"
                report.left.append(f"{name} {shown_key(key)} ({why})")
        if batch:
            await conn.execute(statement, batch)


async def _reledger(
    conn: AsyncConnection, old: RowSealer, new: RowSealer, report: RekeyReport
) -> None:
    """The ledger under the new key, from the revocations present, when they match it under
    the old one: the same counts, the present rows' tags as its digest."""
    read = await read_revocations(conn, 0)  # the ledger and the rows in one statement
    row, present = read.ledger, read.rows
    if row is None:
        return  # a database no node started on: its first start makes it
    held = ledger.verified(old, row)
    if isinstance(held, ledger.Ledger) and ledger.matches(old, held, present):
        digest, _count = ledger.tags(new, present)
        await ledger.write(conn, new, ledger.Ledger(held.entries, digest, held.pruned))
        report.count(report.moved, revocation_ledger.name)
        return
    again = ledger.verified(new, row)
    if isinstance(again, ledger.Ledger) and ledger.matches(new, again, present):
        report.count(report.already, revocation_ledger.name)
        return
    report.left.append(f"{revocation_ledger.name} 1 (the revocations do not match it)")
