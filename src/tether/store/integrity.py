"""What the database holds under the master key, and checking all of it (``tether store
verify``; :mod:`tether.store.rekey` moves the same things to a new key).

Under the master key are the envelope ciphertexts (:data:`ENCRYPTED`: signing keys' private
parts, vault secrets, users' TOTP secrets), the row seals of every sealed table
(:data:`SEALED_TABLES`: those ``tether store seal`` adopts, and the approvals' requests and
votes) and the revocation ledger. A node checks each of them when it reads it, and refuses
what does not verify; :func:`check` reads everything once, offline, and names every row a
node would refuse: after an incident, after a restore, or from a monitoring job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Table, select, tuple_
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.approvals.schema import access_requests, approval_votes
from tether.approvals.store import request_seal_columns, vote_seal_columns
from tether.crypto.envelope import DecryptionError, EnvelopeCipher
from tether.crypto.revisions import REVISED_TABLES, RowRevisions
from tether.crypto.seal import RowSealer
from tether.store import revocation_ledger as ledger
from tether.store.credentials import read_revocations
from tether.store.keys import any_signing_key, private_key_purpose
from tether.store.schema import revocation_ledger, signing_keys
from tether.store.sealing import SEALED, SealedTable, shown
from tether.users.schema import users
from tether.users.store import TOTP_PURPOSE
from tether.vault.schema import vault_secrets
from tether.vault.secrets import PURPOSE as SECRET_PURPOSE

Standing = Literal["old", "new", "unsealed", "refused"]


@dataclass(frozen=True)
class Encrypted:
    """A column of envelope ciphertexts: its table, the column naming each (the envelope's
    name), whether it holds text (base64url) or bytes, and the envelope purpose of a row."""

    table: Table
    name: str
    column: str
    text: bool
    purpose: Callable[[RowMapping], str]

    def open(self, cipher: EnvelopeCipher, row: RowMapping) -> bytes:
        """The plaintext of ``row``'s ciphertext (:class:`DecryptionError` if it does not open)."""
        name, purpose, value = str(row[self.name]), self.purpose(row), row[self.column]
        if self.text:
            return cipher.decrypt_text(value, purpose=purpose, name=name)
        return cipher.decrypt(bytes(value), purpose=purpose, name=name)


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
# (never adopted: tether.store.sealing). Rows are named by their primary key.
SEALED_TABLES: tuple[SealedTable, ...] = (
    *SEALED,
    SealedTable(access_requests, "id", _row_columns(request_seal_columns)),
    SealedTable(approval_votes, "request_id", _row_columns(vote_seal_columns)),
)


def row_key(sealed: SealedTable, row: RowMapping) -> tuple[Any, ...]:
    """A row's primary key."""
    return tuple(row[column.name] for column in sealed.table.primary_key.columns)


def shown_key(key: tuple[Any, ...]) -> str:
    """A primary key as printed for an operator (parts joined by ``/``, each :func:`shown`)."""
    return "/".join(shown(str(part)) for part in key)


PAGE = 1000  # rows read at a time: a table of issued credentials can be large


async def pages(
    conn: AsyncConnection, table: Table, *where: Any, size: int = PAGE
) -> AsyncIterator[list[RowMapping]]:
    """``table``'s rows (those matching ``where``) in primary-key order, ``size`` at a
    time, each page read afresh after the last key of the one before: memory stays one page
    however large the table, and updating other columns of a row between pages is safe."""
    keys = list(table.primary_key.columns)
    last: tuple[Any, ...] | None = None
    while True:
        query = select(table).where(*where).order_by(*keys).limit(size)
        if last is not None:
            query = query.where(tuple_(*keys) > tuple_(*last))
        rows = list((await conn.execute(query)).mappings())
        if rows:
            yield rows
        if len(rows) < size:
            return
        last = tuple(rows[-1][column.name] for column in keys)


async def row_standing(
    conn: AsyncConnection,
    sealed: SealedTable,
    row: RowMapping,
    old: RowSealer,
    new: RowSealer | None = None,
) -> Standing:
    """A row's standing: ``old`` (its seal verifies under ``old``), ``new`` (under ``new``),
    ``unsealed`` or ``refused``."""
    seal = row["seal"]
    if seal is None:
        return "unsealed"
    columns = await sealed.columns(conn, row)
    if old.verify(sealed.table.name, columns, seal):
        return "old"
    if new is not None and new.verify(sealed.table.name, columns, seal):
        return "new"
    return "refused"


async def standing(
    conn: AsyncConnection, sealed: SealedTable, old: RowSealer, new: RowSealer | None = None
) -> dict[tuple[Any, ...], Standing]:
    """Each row's standing (:func:`row_standing`), by primary key."""
    found: dict[tuple[Any, ...], Standing] = {}
    async for page in pages(conn, sealed.table):
        for row in page:
            found[row_key(sealed, row)] = await row_standing(conn, sealed, row, old, new)
    return found


@dataclass
class IntegrityReport:
    """What :func:`check` read (rows by table) and found: one line per row a node refuses,
    ``KIND TABLE KEY (why)`` (``unsealed``, ``refused``, ``unreadable``, ``older``)."""

    checked: dict[str, int] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)


async def check(
    engine: AsyncEngine, cipher: EnvelopeCipher, revisions: RowRevisions | None = None
) -> IntegrityReport:
    """Every seal, ciphertext and the revocation ledger, checked under ``cipher``: each row
    read once, the ledger with the revocations in one statement (one snapshot: a revocation
    committed meanwhile, by a node that runs, never reads as a mismatch). With a node's
    ``revisions`` (its file), also each agent row older than one that node admitted."""
    report = IntegrityReport()
    async with engine.connect() as conn:
        for sealed in SEALED_TABLES:
            name = sealed.table.name
            report.checked[name] = 0
            if revisions is not None and name in REVISED_TABLES:  # small tables: read whole
                report.findings.extend(await _older(conn, sealed, cipher.sealer, revisions))
            async for page in pages(conn, sealed.table):
                report.checked[name] += len(page)
                for row in page:
                    state = await row_standing(conn, sealed, row, cipher.sealer)
                    key = shown_key(row_key(sealed, row))
                    if state == "unsealed":
                        report.findings.append(f"unsealed {name} {key}")
                    elif state == "refused":
                        report.findings.append(f"refused {name} {key} (its seal does not verify)")
        for encrypted in ENCRYPTED:
            column = encrypted.table.c[encrypted.column]
            async for page in pages(conn, encrypted.table, column.is_not(None)):
                for row in page:
                    try:
                        encrypted.open(cipher, row)
                    except DecryptionError as error:
                        where = f"{encrypted.table.name} {shown(str(row[encrypted.name]))}"
                        report.findings.append(f"unreadable {where} ({error})")
        problem = await _ledger_problem(conn, cipher.sealer)
        report.checked[revocation_ledger.name] = 1
        if problem is not None:
            report.findings.append(f"refused {revocation_ledger.name} 1 ({problem})")
    return report


async def _older(
    conn: AsyncConnection, sealed: SealedTable, sealer: RowSealer, revisions: RowRevisions
) -> list[str]:
    """``older TABLE KEY (...)`` for each row whose seal verifies but which is older than
    the newest that node admitted (put back: :mod:`tether.crypto.revisions`)."""
    rows = await standing(conn, sealed, sealer)
    table = sealed.table
    found: list[str] = []
    (key_column,) = table.primary_key.columns
    query = select(key_column, table.c.revision).order_by(key_column)
    for key, revision in (await conn.execute(query)).all():
        newer = revisions.older(table.name, str(key), int(revision))
        if newer is not None and rows.get((key,)) == "old":
            found.append(f"older {table.name} {shown(str(key))} (revision {revision}, the "
                         f"node admitted revision {newer})")  # fmt: skip
    return found


async def _ledger_problem(conn: AsyncConnection, sealer: RowSealer) -> str | None:
    read = await read_revocations(conn, 0)
    if read.ledger is None and not await any_signing_key(conn):
        return None  # a database no node started on: its first start makes the ledger
    held = ledger.verified(sealer, read.ledger)
    if isinstance(held, str):
        return held
    return None if ledger.matches(sealer, held, read.rows) else ledger.MISMATCH
