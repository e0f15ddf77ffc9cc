"""The node's own record of the newest row revisions it admitted, kept outside the database.

A node refuses a sealed row older than the newest revision of it that the node admitted
(:mod:`tether.crypto.revisions`): an agent disabled, then its earlier row put back. A
running node remembers that in memory; so that a restart does not forget it, each node
also writes its marks to ``<data_dir>/revisions.json`` and holds them again at start,
before it reads the database.

The file is one JSON object::

    {"format": "tether-revisions/1",
     "rows": [{"table": "agents", "key": "billing-bot", "revision": 4}, ...]}

Security decisions (those of :mod:`tether.identity.revocation_copy`):

* **It only ever adds refusals.** A mark can make this node refuse an older row, never
  admit one whose seal does not verify. Whoever can write the file can make this node
  refuse more, or remove it and lose the protection it gives, never more than that.
* **A file that does not parse stops the node** (:class:`RevisionCopyError`, naming the
  file): starting without it would silently admit rows put back. A missing file is a
  node's first start, or one whose file was moved aside on purpose, and is no error.
* It is replaced whole and durably (:class:`tether.durable.VersionedFile`), off the loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from tether.crypto.revisions import (
    MAX_KEY_LENGTH,
    MAX_REVISION,
    REVISED_TABLES,
    Mark,
    RowRevisions,
)
from tether.durable import FileShape, VersionedFile, parse_entries, read_entries

FORMAT: Final = "tether-revisions/1"
FILE_NAME: Final = "revisions.json"


class RevisionCopyError(ValueError):
    """The file exists but cannot be read as a node's revisions."""


def read_marks(path: Path) -> list[Mark]:
    """The marks recorded in ``path``; none when there is no file."""
    return read_entries(path, SHAPE, RevisionCopyError)


def parse_marks(data: bytes) -> list[Mark]:
    """The marks of a file's content; :class:`RevisionCopyError` for anything else."""
    return parse_entries(data, SHAPE, RevisionCopyError)


def _mark(position: int, row: object) -> Mark:
    if not isinstance(row, dict):
        raise RevisionCopyError(f"row {position} is not an object")
    table, key, revision = row.get("table"), row.get("key"), row.get("revision")
    if table not in REVISED_TABLES:
        raise RevisionCopyError(f"row {position}: table must be one of {REVISED_TABLES}")
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
        raise RevisionCopyError(f"row {position}: key must be a non-empty string")
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise RevisionCopyError(f"row {position}: revision must be an integer")
    if not 0 <= revision <= MAX_REVISION:
        raise RevisionCopyError(f"row {position}: revision must be between 0 and {MAX_REVISION}")
    return Mark(str(table), key, revision)


SHAPE: Final = FileShape(FORMAT, "rows", "node's row revisions file", _mark)


def render_marks(marks: Iterable[Mark]) -> bytes:
    """The content of a file holding ``marks`` (in a stable order)."""
    ordered = sorted(marks, key=lambda m: (m.table, m.key))
    document = {
        "format": FORMAT,
        "rows": [{"table": m.table, "key": m.key, "revision": m.revision} for m in ordered],
    }
    return (json.dumps(document, indent=0) + "\n").encode("ascii")


class RevisionCopy:
    """A node's file at ``path`` for ``revisions``: held at start, saved when a mark moved."""

    def __init__(self, path: Path, revisions: RowRevisions) -> None:
        self.path, self.revisions = path, revisions
        self._file = VersionedFile(path, "row revisions file")

    @property
    def writes(self) -> int:
        """Writes completed, for the tests."""
        return self._file.writes

    def hold(self) -> int:
        """Take what the file records into ``revisions``; how many marks.
        :class:`RevisionCopyError` when it does not parse."""
        marks = read_marks(self.path)
        self.revisions.hold(marks)
        return len(marks)

    async def save(self) -> None:
        """Write the marks if one moved since the last write."""
        revisions = self.revisions
        await self._file.save(revisions.version, lambda: render_marks(revisions.marks()))
