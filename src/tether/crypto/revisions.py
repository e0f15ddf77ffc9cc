"""The newest revision of each sealed row one node has seen: what makes a row put back visible.

A row seal (:mod:`tether.crypto.seal`) proves that Tether wrote a row, not that it is the
latest one it wrote: an agent disabled after a leak, then its row put back as it was
before (a restored backup, or someone holding a stolen token and write access to the
database), verifies, and the agent works again. So the rows whose state can go back and
forth carry a ``revision`` that every change through Tether raises by one, covered by the
seal, and each node remembers the highest revision of each row it admitted
(:class:`RowRevisions`, kept across restarts in ``<data_dir>/revisions.json``:
:mod:`tether.identity.revision_copy`). A row older than that is refused like a row whose
seal does not verify, and the refusal is logged. The rows revised: agents (migration 0022:
enabled, disabled, offboarded), users (0023: state, roles, groups, password, TOTP),
signing keys (0024: active, previous, retired) and targets (0025: replaced, removed).

Security decisions:

* **A mark only moves forward, and only on a row whose seal verified** (the seal covers
  the revision): a revision written behind Tether's back never raises a mark, so it can
  never make a genuine later row look old.
* **Equal is current.** The row a node last admitted is admitted again; only an older one
  is refused.
* **It only ever adds refusals**, as the revocation copy does: a node that never saw the
  later row (a new node, or one whose file was removed) cannot tell, and admits what the
  seal admits.

Pure: no I/O; the node's file is written by :mod:`tether.identity.revision_copy`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

# The tables whose rows carry a revision.
REVISED_TABLES: Final = ("agents", "users", "signing_keys", "targets")
MAX_KEY_LENGTH: Final = 4096
MAX_REVISION: Final = 2**62  # far beyond any count of changes; keeps the file's numbers exact


def row_revision(row: Mapping[Any, Any]) -> int:
    """A revised row's revision (0: written before its table carried one)."""
    return int(row.get("revision") or 0)


@dataclass(frozen=True, slots=True)
class Mark:
    """The newest revision of row ``key`` of ``table`` a node has seen."""

    table: str
    key: str
    revision: int


class RowRevisions:
    """One node's marks; ``version`` moves whenever a mark does (what its copy follows)."""

    __slots__ = ("_marks", "version")

    def __init__(self) -> None:
        self._marks: dict[tuple[str, str], int] = {}
        self.version = 0

    def __len__(self) -> int:
        return len(self._marks)

    def mark(self, table: str, key: str) -> int:
        """The newest revision seen of the row (0 when none was)."""
        return self._marks.get((table, key), 0)

    def older(self, table: str, key: str, revision: int) -> int | None:
        """The mark ``revision`` is older than, or None when the row is current."""
        mark = self._marks.get((table, key), 0)
        return mark if revision < mark else None

    def advance(self, table: str, key: str, revision: int) -> None:
        """Record that the row was admitted at ``revision`` (a lower one changes nothing)."""
        if not 0 <= revision <= MAX_REVISION:
            raise ValueError(f"a row revision must be between 0 and {MAX_REVISION}")
        if revision > self._marks.get((table, key), 0):
            self._marks[(table, key)] = revision
            self.version += 1

    def hold(self, marks: Iterable[Mark]) -> None:
        """Take ``marks`` (the node's copy, at start): each only raises what is known."""
        for mark in marks:
            self.advance(mark.table, mark.key, mark.revision)

    def marks(self) -> list[Mark]:
        """Every mark, in a stable order."""
        return [Mark(t, k, r) for (t, k), r in sorted(self._marks.items())]
