"""The head file: the last signed checkpoint, kept outside the database.

Checkpoints are rows of the database they vouch for, so whoever can write the database can
delete the last checkpoints together with every event after the new last one, and the
trail that is left verifies as a shorter, intact trail. The writer therefore also records
each checkpoint it signs in a small file outside the tables (:func:`write_head`), and
``tether audit verify`` checks the trail against it (:func:`check_head`): a trail that
ends before the head file's checkpoint, or holds another hash at its ``seq``, was cut or
rewritten.

Where: ``audit.head_file`` when configured; else, for SQLite, next to the database file
(``<database>.audit-head``); PostgreSQL has no default (set ``audit.head_file`` on each
node: the file is what a database administrator cannot reach).

The file is one JSON object ``{"seq", "hash", "time", "kid", "signature"}``: the
checkpoint exactly as stored, so it is self-verifying with the same public keys.

Security decisions:

* **It never runs ahead of the trail.** It is written after the checkpoint's transaction
  has committed, replaced atomically (write, fsync, rename, fsync of the directory), and
  only ever by a checkpoint of a higher ``seq``; a crash in between leaves an older,
  still-true head. So a trail shorter than its head file was truncated.
* **A forged head is refused**, since its signature must verify like a checkpoint's. What
  the file cannot catch: someone who can write both the database *and* this file can put
  back an older head file (or remove it) along with the truncation. A missing head file is
  reported, not a finding: trails written before it existed, and copied databases, have none.
* A head file that cannot be written is logged and does not stop appends: the database
  trail is the record; the head file is a second witness.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from sqlalchemy.engine import URL

from tether.audit.canonical import format_time, parse_time
from tether.audit.store import Checkpoint
from tether.durable import replace_file

HEAD_SUFFIX: Final = ".audit-head"


class HeadFileError(ValueError):
    """The head file exists but is not a checkpoint record."""


def default_head_file(url: URL) -> Path | None:
    """``<database>.audit-head`` for a SQLite database file; None for other databases."""
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    if url.database.startswith("file:"):
        return None
    return Path(url.database + HEAD_SUFFIX)


def read_head(path: Path) -> Checkpoint | None:
    """The checkpoint recorded in ``path``; None when there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise HeadFileError(f"{path}: {error.strerror or error}") from None
    try:
        document = json.loads(text)
        if not isinstance(document, dict):
            raise TypeError("not a JSON object")
        seq = document["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise TypeError("seq is not a positive integer")
        fields = [document[name] for name in ("hash", "time", "kid", "signature")]
        if not all(isinstance(value, str) for value in fields):
            raise TypeError("hash, time, kid and signature must be strings")
        hash_, time, kid, signature = fields
        return Checkpoint(seq, hash_, parse_time(time), kid, signature)
    except (ValueError, TypeError, KeyError) as error:
        raise HeadFileError(f"{path}: not a checkpoint record ({error})") from None


def write_head(path: Path, checkpoint: Checkpoint) -> bool:
    """Record ``checkpoint`` in ``path`` unless it holds one as recent; True if written."""
    try:
        current = read_head(path)
    except HeadFileError:
        current = None  # replaced by a good record
    if current is not None and current.seq >= checkpoint.seq:
        return False
    document: dict[str, Any] = {
        "seq": checkpoint.seq,
        "hash": checkpoint.hash,
        "time": format_time(checkpoint.time),
        "kid": checkpoint.kid,
        "signature": checkpoint.signature,
    }
    replace_file(path, (json.dumps(document, sort_keys=True) + "\n").encode(), mode=0o644)
    return True


def check_head(
    head: Checkpoint,
    last_seq: int,
    hash_at: str | None,
    stored: Checkpoint | None,
) -> list[tuple[int, str, str]]:
    """Compare the head file's checkpoint with the trail: ``last_seq`` its last event,
    ``hash_at`` the stored hash of event ``head.seq`` (None if absent), ``stored`` the
    checkpoint row at ``head.seq`` (None if absent). Signature checks are the caller's."""
    seq = head.seq
    if last_seq < seq:
        return [(seq, "truncated", (
            f"the head file records checkpoint {seq}, but the trail ends at "
            f"{last_seq or 'nothing'}: events {last_seq + 1} to {seq} (and any after) and "
            "their checkpoints were deleted"
        ))]  # fmt: skip
    if hash_at is not None and hash_at != head.hash:
        return [(seq, "head", f"event {seq}: hash differs from the head file's checkpoint")]
    if stored is None:
        return [(seq, "head", f"checkpoint {seq}, recorded in the head file, was deleted")]
    if (stored.hash, stored.signature) != (head.hash, head.signature):
        return [(seq, "head", f"checkpoint {seq} differs from the head file's record")]
    return []
