"""The node's own copy of the revocations in force, kept outside the database.

The revocation ledger (:mod:`tether.store.revocation_ledger`) catches a revocation deleted,
changed or planted behind Tether's back, but not a database put back whole as it was
earlier, ledger included: that older list verifies, and the revocations made since are
forgotten. A running node never forgets one (its set only grows); a node that restarts
would. So each node also writes the revocations it holds to ``<data_dir>/revocations.json``
and, at start, holds them again before it reads the database. A revocation in that file
which the database no longer holds, though it is still in force, is honoured all the same
and reported (:meth:`tether.identity.revocation.RevocationSet.missing`).

The file is one JSON object::

    {"format": "tether-revocations/1",
     "revocations": [{"kind": "token", "value": "...", "expires_at": 1767225600.0}, ...]}

``expires_at`` (seconds since the epoch, or null: kept forever) is the entry's own, from
the database: an entry leaves the file once it has passed, as it leaves the database when
pruned.

Security decisions:

* **It only ever adds refusals.** What the file holds is revoked on this node; nothing in it
  can accept a credential the database refuses. Whoever can write it can make this node
  refuse more (so can anyone who can write its database), or remove it and lose the
  protection it gives, never more than that.
* **A file that does not parse stops the node** (:class:`RevocationCopyError`, naming the
  file): starting without the copy would silently forget what it protects. A missing file
  is a node's first start, or one whose copy was removed on purpose, and is no error.
* It is replaced whole and durably (:func:`tether.durable.replace_file`), off the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tether.durable import (
    FileShape,
    VersionedFile,
    parse_entries,
    read_entries,
    replace_in_directory,
)

FORMAT: Final = "tether-revocations/1"
FILE_NAME: Final = "revocations.json"
KINDS: Final = ("token", "agent", "task", "runtime")
MAX_VALUE_LENGTH: Final = 4096
_MAX_SECONDS: Final = 253402300800  # year 10000: no expiry Tether writes comes near


class RevocationCopyError(ValueError):
    """The copy exists but cannot be read as one."""


@dataclass(frozen=True, slots=True)
class Held:
    """One revocation in force: ``expires_at`` in seconds since the epoch, None forever."""

    kind: str
    value: str
    expires_at: float | None


def read_copy(path: Path) -> list[Held]:
    """The revocations recorded in ``path``; none when there is no file."""
    return read_entries(path, SHAPE, RevocationCopyError)


def parse_copy(data: bytes) -> list[Held]:
    """The revocations of a copy's content; :class:`RevocationCopyError` for anything else."""
    return parse_entries(data, SHAPE, RevocationCopyError)


def _entry(position: int, entry: object) -> Held:
    if not isinstance(entry, dict):
        raise RevocationCopyError(f"revocation {position} is not an object")
    kind, value, expires = entry.get("kind"), entry.get("value"), entry.get("expires_at")
    if kind not in KINDS:
        raise RevocationCopyError(f"revocation {position}: kind must be one of {KINDS}")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_VALUE_LENGTH:
        raise RevocationCopyError(f"revocation {position}: value must be a non-empty string")
    if expires is not None and (
        isinstance(expires, bool)
        or not isinstance(expires, int | float)
        or not abs(expires) < _MAX_SECONDS  # compared, not converted: a 400-digit int, NaN, inf
    ):
        raise RevocationCopyError(f"revocation {position}: expires_at must be a number or null")
    return Held(str(kind), value, None if expires is None else float(expires))


SHAPE: Final = FileShape(FORMAT, "revocations", "revocation copy", _entry)


def render_copy(entries: Iterable[Held]) -> bytes:
    """The content of a copy holding ``entries`` (in a stable order)."""
    ordered = sorted(entries, key=lambda h: (h.kind, h.value))
    document = {
        "format": FORMAT,
        "revocations": [
            {"kind": h.kind, "value": h.value, "expires_at": h.expires_at} for h in ordered
        ],
    }
    return (json.dumps(document, indent=0) + "\n").encode("ascii")


def write_copy(path: Path, entries: Iterable[Held]) -> None:
    """Replace ``path`` with a copy holding ``entries`` (durably, mode 0600; the directory
    is made, mode 0700, when missing)."""
    replace_in_directory(path, render_copy(entries))


class RevocationCopy:
    """A node's copy at ``path``: written when the entries it would hold changed (the
    caller's ``version`` moved) or when asked to drop expired ones
    (:class:`tether.durable.VersionedFile`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = VersionedFile(path, "revocation copy")

    @property
    def writes(self) -> int:
        """Writes completed, for the tests."""
        return self._file.writes

    def load(self) -> list[Held]:
        """What the copy records (:class:`RevocationCopyError` when it does not parse)."""
        return read_copy(self.path)

    async def save(
        self, version: int, entries: Callable[[], list[Held]], *, force: bool = False
    ) -> None:
        """Write ``entries()`` unless ``version`` was written already (``force``: even so)."""
        await self._file.save(version, lambda: render_copy(entries()), force=force)
