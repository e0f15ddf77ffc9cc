"""Row seals: an HMAC over the security-relevant columns of a stored row.

Whoever can write to Tether's database without holding the master key (a DBA, a restored
backup, an SQL injection in another application on the same server, a compromised
replica) could otherwise point a target at a server of theirs, or plant an admin token.
Each sealed row carries ``seal = HMAC-SHA256(key, canonical(table, columns))`` with
``key = HKDF(master, "tether/row-seal/v1")``; the code that reads a row to grant something
recomputes it and refuses the row when it differs or is missing (docs/vault.md,
"Tampering with the database").

Security decisions:

* **Key separation.** The seal key is derived from the master key for this purpose only
  (:meth:`MasterKey.derive`), never shared with the envelope's key-encryption key.
* **An unambiguous encoding.** The MAC'd bytes are the canonical JSON (sorted keys, no
  whitespace, ASCII escapes) of ``["tether/row-seal/v1", table, [[column, value]...]]``
  where every value carries its type: ``["str", "a"]``, ``["int", "1"]``, ``["null"]``,
  ``["time", "2026-11-30T10:00:00.000000+00:00"]``, ``["map", [[key, value]...]]``... Two
  different (table, columns) tuples never encode alike: JSON text parses back to exactly
  one tagged structure, and the tags tell ``1`` from ``"1"``, ``True`` from ``1``, a list
  from a map and ``None`` from a missing key. The column names are part of the bytes, so a
  seal never verifies a row of another table or another set of columns.
* **Constant-time comparison** (:func:`hmac.compare_digest`) of the stored seal with the
  expected one; a seal that is not text (a value of another type written to the column
  behind Tether's back) simply does not verify.
* **What a seal cannot see.** A deleted row, or a whole row put back as it was earlier
  (seal included), verifies: a seal proves that Tether wrote this row, not that it is the
  latest one it wrote. For rows whose state goes back and forth a node's sealer also
  remembers the newest revision it admitted (:meth:`RowSealer.current`,
  :mod:`tether.crypto.revisions`); deleted revocations have their ledger
  (:mod:`tether.store.revocation_ledger`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

from tether.crypto.masterkey import MasterKey
from tether.crypto.revisions import RowRevisions, row_revision

log = logging.getLogger(__name__)

SEAL_INFO: Final = b"tether/row-seal/v1"
_LABEL: Final = "tether/row-seal/v1"

SealValue: TypeAlias = (
    "bool | int | float | str | bytes | datetime | Mapping[str, SealValue]"
    " | Sequence[SealValue] | None"
)
"""What a sealed column may hold: scalars, times, and JSON-like maps and lists."""


class SealEncodingError(ValueError):
    """A value that has no canonical encoding (a naive time, NaN, a non-text map key)."""


def canonical(table: str, columns: Mapping[str, SealValue]) -> bytes:
    """The bytes a row's seal is the MAC of; injective on ``(table, columns)``."""
    fields = [[name, _tagged(columns[name])] for name in sorted(columns)]
    text = json.dumps([_LABEL, table, fields], ensure_ascii=True, separators=(",", ":"))
    return text.encode("ascii")


def _tagged(value: SealValue) -> list[object]:
    # bool before int: True is an int to Python, not to a seal.
    if value is None:
        return ["null"]
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", str(value)]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SealEncodingError("a sealed number must be finite")
        return ["float", value.hex()]
    if isinstance(value, str):
        return ["str", value]
    if isinstance(value, bytes | bytearray | memoryview):
        return ["bytes", bytes(value).hex()]
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise SealEncodingError("a sealed time must be timezone-aware")
        return ["time", value.astimezone(UTC).isoformat(timespec="microseconds")]
    if isinstance(value, Mapping):
        items: list[object] = []
        for key in sorted(value):
            if not isinstance(key, str):
                raise SealEncodingError("a sealed map's keys must be text")
            items.append([key, _tagged(value[key])])
        return ["map", items]
    if isinstance(value, Sequence):
        return ["list", [_tagged(item) for item in value]]
    raise SealEncodingError(f"cannot seal a value of type {type(value).__name__}")


class RowSealer:
    """Computes and checks row seals under one master key; safe to share between threads.
    A node's sealer also holds the node's :class:`RowRevisions` (:meth:`witnessed`)."""

    __slots__ = ("_key", "revisions")

    def __init__(self, master_key: MasterKey, revisions: RowRevisions | None = None) -> None:
        self._key = master_key.derive(SEAL_INFO)
        self.revisions = revisions

    def witnessed(self, revisions: RowRevisions) -> RowSealer:
        """A sealer with the same key that remembers, in ``revisions``, the newest revision
        of each row it admits (:meth:`current`): one node's."""
        sealer = RowSealer.__new__(RowSealer)
        sealer._key, sealer.revisions = self._key, revisions
        return sealer

    def __repr__(self) -> str:
        return "RowSealer()"

    def mac(self, table: str, columns: Mapping[str, SealValue]) -> bytes:
        """The 32-byte MAC :meth:`seal` encodes. Under another ``table`` label it is also a
        keyed digest that is stored nowhere (the revocation ledger's per-row tags)."""
        return hmac.new(self._key, canonical(table, columns), hashlib.sha256).digest()

    def seal(self, table: str, columns: Mapping[str, SealValue]) -> str:
        """The seal of a row: 43 characters of unpadded base64url."""
        mac = self.mac(table, columns)
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def verify(self, table: str, columns: Mapping[str, SealValue], seal: object) -> bool:
        """Whether ``seal`` (as read from the row) is this row's seal; False when missing."""
        if not isinstance(seal, str):
            return False
        try:
            expected = self.seal(table, columns)
        except SealEncodingError:
            return False
        presented = seal.encode("utf-8", "surrogatepass")
        return hmac.compare_digest(expected.encode("ascii"), presented)

    def admits(
        self, table: str, columns: Mapping[str, SealValue], seal: object, *, what: str
    ) -> bool:
        """:meth:`verify`, logging an error naming ``what`` (a row kind and its key) when
        the row is refused: the one message an operator looks for after tampering."""
        if self.verify(table, columns, seal):
            return True
        state = "it has no seal" if seal is None else "its seal does not verify"
        log.error(
            "%s refused: %s: the row was changed outside Tether "
            "(docs/vault.md, Tampering with the database)",
            what, state,
        )  # fmt: skip
        return False

    def saw(self, table: str, key: str, revision: int) -> None:
        """A row this node just wrote, once committed: never admit an older one again (a
        no-op without :class:`RowRevisions`)."""
        if self.revisions is not None:
            self.revisions.advance(table, key, revision)

    def is_older(self, table: str, key: str, revision: int) -> bool:
        """Quietly, changing nothing: whether the row is older than the newest this sealer
        admitted (never, without :class:`RowRevisions`)."""
        return self.revisions is not None and self.revisions.older(table, key, revision) is not None

    def next_revision(self, table: str, key: str, revision: int) -> int:
        """The revision a change to a row at ``revision`` writes: one above both it and the
        newest this sealer admitted (a row a node writes is never older than one it saw)."""
        mark = 0 if self.revisions is None else self.revisions.mark(table, key)
        return max(revision, mark) + 1

    def current(
        self, table: str, key: str, revision: int, *, what: str, quiet: bool = False
    ) -> bool:
        """Whether a row whose seal verified, at ``revision``, is no older than the newest
        this sealer admitted (always, without :class:`RowRevisions`); when it is current its
        mark moves up to it, when it is older an error naming ``what`` is logged (unless
        ``quiet``: the caller logs once)."""
        if self.revisions is None:
            return True
        newer = self.revisions.older(table, key, revision)
        if newer is None:
            self.revisions.advance(table, key, revision)
            return True
        if not quiet:
            log_older(what, revision, newer)
        return False


def with_revision(columns: dict[str, SealValue], row: Mapping[Any, Any]) -> dict[str, SealValue]:
    """``columns`` with the row's revision when it has one: a row written before its table
    carried revisions (revision 0) was sealed without it, and still verifies."""
    if revision := row_revision(row):
        columns["revision"] = revision
    return columns


def log_older(what: str, revision: int, newer: int) -> None:
    """The error for a row older than one the node admitted."""
    log.error(
        "%s refused: its row is revision %d, older than revision %d this node saw: the "
        "database was put back to an earlier state (docs/vault.md, Tampering with the "
        "database)",
        what, revision, newer,
    )  # fmt: skip
