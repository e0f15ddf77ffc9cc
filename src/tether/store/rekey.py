"""Rotating the master key: everything the database holds under it, moved to a new one in
one transaction (``tether store rekey``).

Under the master key are the envelope ciphertexts (signing keys' private parts, vault
secrets, users' TOTP secrets: :data:`ENCRYPTED`), the row seals (:data:`RESEALED`) and the
revocation ledger (its seal, and its digest of keyed tags). :func:`rekey` opens each
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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, and_, bindparam, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.approvals.schema import access_requests, approval_votes
from tether.approvals.store import request_seal_columns, vote_seal_columns
from tether.crypto.envelope import DecryptionError, EnvelopeCipher
from tether.crypto.seal import RowSealer
from tether.store import revocation_ledger as ledger
from tether.store.credentials import lock_revocations
from tether.store.keys import private_key_purpose
from tether.store.schema import revocation_ledger, revocations, signing_keys
from tether.store.sealing import SEALED, SealedTable, shown
from tether.users.schema import users
from tether.users.store import TOTP_PURPOSE
from tether.vault.schema import vault_secrets
from tether.vault.secrets import PURPOSE as SECRET_PURPOSE

_BATCH = 500  # rows sealed again per statement


class RekeyRefused(Exception):
    """Ciphertexts that open under neither key: nothing was changed."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__(f"{len(failures)} ciphertext(s) do not open under the current key")
        self.failures = failures


@dataclass(frozen=True)
class Encrypted:
    """A column of envelope ciphertexts: its table, the column naming each (the envelope's
    name), whether it holds text (base64url) or bytes, and the envelope purpose of a row."""

    table: Table
    name: str
    column: str
    text: bool
    purpose: Callable[[RowMapping], str]


ENCRYPTED: tuple[Encrypted, ...] = (
    Encrypted(signing_keys, "kid", "private_encrypted", False,
              lambda row: private_key_purpose(row["purpose"])),
    Encrypted(vault_secrets, "name", "ciphertext", True, lambda _row: SECRET_PURPOSE),
    Encrypted(users, "id", "totp_secret", True, lambda _row: TOTP_PURPOSE),
)  # fmt: skip


def _row_columns(
    columns: Callable[[Mapping[str, Any] | RowMapping], dict[str, Any]],
) -> Callable[[AsyncConnection, RowMapping], Any]:
    async def read(_conn: AsyncConnection, row: RowMapping) -> dict[str, Any]:
        return columns(row)

    return read


# Every sealed table: those `tether store seal` adopts, and the approvals' requests and votes
# (never adopted: tether.store.sealing), keyed here by the first column of their key.
RESEALED: tuple[SealedTable, ...] = (
    *SEALED,
    SealedTable(access_requests, "id", _row_columns(request_seal_columns)),
    SealedTable(approval_votes, "request_id", _row_columns(vote_seal_columns)),
)


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
        # Which rows verify under the old key, judged on their columns as they stand (the
        # ciphertexts among them are about to change).
        standing = {sealed.table.name: await _standing(conn, sealed, old.sealer, new.sealer)
                    for sealed in RESEALED}  # fmt: skip
        failures: list[str] = []
        for encrypted in ENCRYPTED:
            await _reencrypt(conn, encrypted, old, new, report, failures)
        if failures:
            raise RekeyRefused(failures)  # rolls the transaction back
        for sealed in RESEALED:
            await _reseal(conn, sealed, standing[sealed.table.name], new.sealer, report)
        await _reledger(conn, old.sealer, new.sealer, report)
    return report


def _key(sealed: SealedTable, row: RowMapping) -> tuple[Any, ...]:
    return tuple(row[column.name] for column in sealed.table.primary_key.columns)


def _shown_key(key: tuple[Any, ...]) -> str:
    return "/".join(shown(str(part)) for part in key)


async def _standing(
    conn: AsyncConnection, sealed: SealedTable, old: RowSealer, new: RowSealer
) -> dict[tuple[Any, ...], str]:
    """Each row's standing: ``old`` (its seal verifies under the old key), ``new`` (under
    the new one: an earlier run), ``unsealed`` or ``refused``."""
    found: dict[tuple[Any, ...], str] = {}
    name = sealed.table.name
    for row in (await conn.execute(select(sealed.table))).mappings().all():
        seal = row["seal"]
        if seal is None:
            found[_key(sealed, row)] = "unsealed"
            continue
        columns = await sealed.columns(conn, row)
        if old.verify(name, columns, seal):
            found[_key(sealed, row)] = "old"
        elif new.verify(name, columns, seal):
            found[_key(sealed, row)] = "new"
        else:
            found[_key(sealed, row)] = "refused"
    return found


async def _reencrypt(
    conn: AsyncConnection,
    encrypted: Encrypted,
    old: EnvelopeCipher,
    new: EnvelopeCipher,
    report: RekeyReport,
    failures: list[str],
) -> None:
    table, column = encrypted.table, encrypted.table.c[encrypted.column]
    rows = (await conn.execute(select(table).where(column.is_not(None)))).mappings().all()
    for row in rows:
        name, purpose, value = str(row[encrypted.name]), encrypted.purpose(row), row[column.name]
        where = f"{table.name} {shown(name)}"
        try:
            plain = _open(old, value, encrypted.text, purpose, name)
        except DecryptionError as error:
            try:
                _open(new, value, encrypted.text, purpose, name)
            except DecryptionError:
                failures.append(f"{where}: {error}")
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


def _open(cipher: EnvelopeCipher, value: Any, text: bool, purpose: str, name: str) -> bytes:
    if text:
        return cipher.decrypt_text(value, purpose=purpose, name=name)
    return cipher.decrypt(bytes(value), purpose=purpose, name=name)


async def _reseal(
    conn: AsyncConnection,
    sealed: SealedTable,
    standing: dict[tuple[Any, ...], str],
    new: RowSealer,
    report: RekeyReport,
) -> None:
    table, name = sealed.table, sealed.table.name
    keys = list(table.primary_key.columns)
    # One statement per batch of rows (executemany): a table of issued credentials can be
    # large. Bind names of their own: a column's name is taken in an UPDATE's SET.
    statement = (
        update(table)
        .where(and_(*[column == bindparam(f"key_{column.name}") for column in keys]))
        .values(seal=bindparam("new_seal"))
    )
    batch: list[dict[str, Any]] = []
    for row in (await conn.execute(select(table))).mappings().all():
        key = _key(sealed, row)
        state = standing.get(key, "refused")  # a row that appeared meanwhile: not ours
        if state == "new":
            report.count(report.already, name)
        elif state == "old":
            seal = new.seal(name, await sealed.columns(conn, row))
            batch.append({**{f"key_{c.name}": v for c, v in zip(keys, key, strict=True)},
                          "new_seal": seal})  # fmt: skip
            report.count(report.moved, name)
            if len(batch) >= _BATCH:
                await conn.execute(statement, batch)
                batch = []
        else:
            why = "no seal" if state == "unsealed" else "its seal does not verify"
            report.left.append(f"{name} {_shown_key(key)} ({why})")
    if batch:
        await conn.execute(statement, batch)


async def _reledger(
    conn: AsyncConnection, old: RowSealer, new: RowSealer, report: RekeyReport
) -> None:
    """The ledger under the new key, from the revocations present, when they match it under
    the old one: the same counts, the present rows' tags as its digest."""
    query = select(revocation_ledger).where(revocation_ledger.c.id == 1)
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        return  # a database no node started on: its first start makes it
    present = (await conn.execute(select(revocations))).mappings().all()
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
