"""``tether audit verify``: recompute the chain and check the signed checkpoints.

:func:`verify_trail` reads every event in ``seq`` order and checks, for each:

1. its ``seq`` follows the previous one (a gap is a deletion);
2. its stored ``hash`` is the hash of its stored content, ``seq`` and ``prev_hash``
   included (a mismatch is a changed event; when the content hashes right under a
   neighbouring ``seq``, the event was moved, so one was inserted, deleted or reordered),
   and that content is stored in exactly the text it is written in (JSON columns in
   canonical form, strings as the event holds them, SQLite's time in SQLAlchemy's format):
   another text of the same value, which parses back to what was hashed, is a change too,
   since raw SQL, the indexes and ``search`` read the text;
3. its ``prev_hash`` is the stored hash of the event before it (a mismatch is a broken
   link: an event was inserted, deleted, moved, or the one before was rewritten);
4. a checkpoint at its ``seq`` holds its hash.

Then every checkpoint is checked: its signature, by the stored public key whose
thumbprint is its ``kid``; and that its event still exists, which catches a truncation
of checkpointed events. Events after the last checkpoint are *unanchored*: they verify
as a chain, but nothing signed vouches for them yet, so a truncation among them would go
unseen; the report gives their number.

Findings name the ``seq`` and what mismatched. The report is data
(:class:`VerifyReport`); the CLI and the API render it.

Last, the head file (:mod:`tether.audit.head`), when there is one: the writer records
each checkpoint there too, outside the database, so deleting the last checkpoints
together with every event after the new last one (which leaves a shorter trail that
verifies) is caught as a trail that ends before its head file's checkpoint. The head
file's signature is checked like a checkpoint's.

A pruned trail (:mod:`tether.audit.prune`) starts after its newest prune marker: the first
event's ``prev_hash`` must be the hash the marker recorded, every marker's signature is
checked like a checkpoint's, and events the marker covers that are still present (a prune
stopped before it finished deleting) are counted, and must chain up to the marker's event
(else ``pruned``: planted or changed there). A marker deleted leaves a
trail whose first event does not link to the genesis value; one planted or extended does
not carry Tether's signature.

Limits, stated in docs/audit.md: without a head file (or with an older one put back by
someone who can write it too), that truncation looks like a trail with fewer events; the
sinks' external copies of every event and hash catch it then.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import RowMapping, text
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.audit.canonical import GENESIS, event_hash, json_text
from tether.audit.checkpoints import (
    prune_signature_valid,
    signature_valid,
    verification_keys,
)
from tether.audit.events import AuditEvent
from tether.audit.head import HeadFileError, check_head, default_head_file, read_head
from tether.audit.store import (
    Checkpoint,
    Prune,
    checkpoints,
    event_from_row,
    prunes,
    sqlite_time_text,
)
from tether.crypto.envelope import EnvelopeCipher

CHUNK: Final = 5000
MAX_FINDINGS: Final = 1000


@dataclass(frozen=True, slots=True)
class Finding:
    """One integrity problem: at event (or checkpoint) ``seq``, ``what`` is wrong."""

    seq: int
    problem: str  # a short code: "gap", "hash", "moved", "link", "checkpoint", ...
    what: str  # one sentence for a person

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "problem": self.problem, "what": self.what}


@dataclass
class VerifyReport:
    """What verification found. ``ok`` when no finding; ``unanchored`` is not a finding."""

    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    last_checkpoint_seq: int | None = None
    unanchored: int = 0
    keys: set[str] = field(default_factory=set)
    findings: list[Finding] = field(default_factory=list)
    more_findings: int = 0  # findings beyond MAX_FINDINGS, counted only
    pruned_through: int | None = None  # the newest prune marker's event, if any
    prunes: int = 0
    awaiting_deletion: int = 0  # events a marker covers, still present (a stopped prune)
    head_file: str | None = None  # the head file checked, if any
    head_seq: int | None = None  # the checkpoint it records, None when absent
    keys_authenticated: bool = False  # signing keys checked against the master key

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, seq: int, problem: str, what: str) -> None:
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(Finding(seq, problem, what))
        else:
            self.more_findings += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "checkpoints": self.checkpoints,
            "last_checkpoint_seq": self.last_checkpoint_seq,
            "unanchored": self.unanchored,
            "keys": sorted(self.keys),
            "findings": [f.to_dict() for f in self.findings],
            "more_findings": self.more_findings,
            "pruned_through": self.pruned_through,
            "prunes": self.prunes,
            "awaiting_deletion": self.awaiting_deletion,
            "head_file": self.head_file,
            "head_seq": self.head_seq,
            "keys_authenticated": self.keys_authenticated,
        }


async def verify_trail(
    conn: AsyncConnection, *, head_file: Path | None = None, cipher: EnvelopeCipher | None = None
) -> VerifyReport:
    """Verify the whole trail readable through ``conn`` (read-only), and against
    ``head_file`` (default: the SQLite database's own, :func:`default_head_file`). With
    ``cipher`` (the node's master key) only signing keys sealed by it are trusted
    (:func:`~tether.audit.checkpoints.verification_keys`)."""
    report = VerifyReport(keys_authenticated=cipher is not None)
    marks = {c.seq: c for c in await checkpoints(conn)}
    markers = await prunes(conn)
    pruned = markers[-1] if markers else None
    head_file = head_file or default_head_file(conn.engine.url)
    head = _read_head(report, head_file)
    hash_at_head: str | None = None
    expected, prev, prev_seq = 1, GENESIS, 0
    if pruned is not None:
        report.pruned_through, report.prunes = pruned.seq, len(markers)
        expected, prev, prev_seq = pruned.seq + 1, pruned.hash, pruned.seq
    awaiting: tuple[int, str] | None = None  # the last row the newest marker covers
    async for row in _rows(conn):
        seq = _seq_of(row)
        if seq is None:
            report.add(prev_seq, "unreadable", f"a row after event {prev_seq} has no integer "
                       f"seq ({row['seq']!r:.40}): it was planted or changed")  # fmt: skip
            continue
        if pruned is not None and seq <= pruned.seq:
            awaiting = _check_awaiting(report, row, seq, awaiting)
            continue
        report.events += 1
        report.first_seq = seq if report.first_seq is None else report.first_seq
        report.last_seq = seq
        if seq != expected:
            _gap(report, expected, seq)
        stored = str(row["hash"])
        _check_event(report, row, seq, prev, prev_seq)
        mark = marks.get(seq)
        if mark is not None and mark.hash != stored:
            report.add(seq, "checkpoint", f"event {seq}: hash differs from checkpoint {seq}'s")
        if head is not None and seq == head.seq:
            hash_at_head = stored
        expected, prev, prev_seq = seq + 1, stored, seq
    if pruned is not None and awaiting is not None and awaiting != (pruned.seq, pruned.hash):
        report.add(pruned.seq, "pruned", f"the events still present up to prune marker "
                   f"{pruned.seq} do not end at its event: events were planted or changed "
                   "there")  # fmt: skip
    keys = await _check_checkpoints(conn, report, marks, cipher)
    for marker in markers:
        _check_marker(report, marker, keys)
    if head is not None:
        _check_signature(report, head, keys, "the head file's checkpoint")
        if pruned is not None and head.seq <= pruned.seq:  # its event is archived
            if head.seq == pruned.seq and head.hash != pruned.hash:
                report.add(head.seq, "head", f"prune marker {head.seq} differs from the "
                           "head file's checkpoint")  # fmt: skip
            return report
        for seq, problem, what in check_head(
            head, report.last_seq or 0, hash_at_head, marks.get(head.seq)
        ):
            report.add(seq, problem, what)
    return report


def _seq_of(row: RowMapping) -> int | None:
    """A row's ``seq`` as an integer; None when it holds anything else (SQLite's column
    affinity keeps a text or a real that an edit stored)."""
    value = row["seq"]
    return value if type(value) is int else None


def _check_awaiting(
    report: VerifyReport, row: RowMapping, seq: int, last: tuple[int, str] | None
) -> tuple[int, str]:
    """Check a row the newest prune marker covers (a prune stopped before it deleted it):
    the rows still there must chain, each to the one before, up to the marker's event, or
    someone could plant events there that nothing checks."""
    report.awaiting_deletion += 1
    if last is not None and seq != last[0] + 1:
        _gap(report, last[0] + 1, seq)
    prev, prev_seq = (str(row["prev_hash"]), 0) if last is None else (last[1], last[0])
    _check_event(report, row, seq, prev, prev_seq)
    return seq, str(row["hash"])


def _check_marker(
    report: VerifyReport, marker: Prune, keys: dict[str, Ed25519PublicKey | str]
) -> None:
    _signed_by(report, marker.seq, marker.kid, keys, f"prune marker {marker.seq}",
               lambda key: prune_signature_valid(key, marker), "prune-key",
               ("prune-signature", "the signature is not valid (the marker was changed or "
                "planted)"))  # fmt: skip


def _read_head(report: VerifyReport, path: Path | None) -> Checkpoint | None:
    if path is None:
        return None
    report.head_file = str(path)
    try:
        head = read_head(path)
    except HeadFileError as error:
        report.add(0, "head", f"head file unreadable: {error}")
        return None
    report.head_seq = None if head is None else head.seq
    return head


# Raw values, without SQLAlchemy's type processing: a tampered value that the column type
# cannot parse (a malformed time in SQLite) must be a finding about its row, not an error.
# The first chunk has no lower bound: a row planted below any bound chosen here (seq is a
# BIGINT, a plain INSERT passes the append-only triggers) would be a row nothing checks.
_FIRST: Final = object()
_FIRST_QUERY: Final = text("SELECT * FROM audit_events ORDER BY seq LIMIT :limit")
_CHUNK_QUERY: Final = text(
    "SELECT * FROM audit_events WHERE seq > :after ORDER BY seq LIMIT :limit"
)


async def _rows(conn: AsyncConnection) -> AsyncIterator[RowMapping]:
    after: object = _FIRST
    while True:
        if after is _FIRST:
            result = await conn.execute(_FIRST_QUERY, {"limit": CHUNK})
        else:
            result = await conn.execute(_CHUNK_QUERY, {"after": after, "limit": CHUNK})
        rows = list(result.mappings())
        for row in rows:
            yield row
        if len(rows) < CHUNK:
            return
        after = rows[-1]["seq"]


def _gap(report: VerifyReport, expected: int, seq: int) -> None:
    if seq > expected:
        missing = f"{expected}" if seq == expected + 1 else f"{expected} to {seq - 1}"
        report.add(expected, "gap", f"events {missing} are missing (deleted)")
    else:
        report.add(seq, "order", f"event {seq} comes after {expected - 1}: order broken")


def _check_event(report: VerifyReport, row: RowMapping, seq: int, prev: str, prev_seq: int) -> None:
    try:
        event = event_from_row(row)
    except (ValueError, TypeError, KeyError) as error:
        report.add(seq, "unreadable", f"event {seq}: the row is not an event ({error})")
        return
    stored_prev = str(row["prev_hash"])
    if event_hash(event, seq, stored_prev) != event.hash:
        report.add(seq, *_why_hash_differs(event, seq, stored_prev))
    else:
        column = _not_as_hashed(row, event)
        if column is not None:
            report.add(
                seq,
                "hash",
                f"event {seq}: its {column} is not stored as it was hashed (the event was "
                "changed: the same value in another text)",
            )
    if stored_prev != prev:
        before = f"event {prev_seq}'s hash" if prev_seq else "the genesis value (64 zeros)"
        if report.pruned_through is not None and prev_seq == report.pruned_through:
            before = f"the hash prune marker {prev_seq} recorded"
        report.add(
            seq,
            "link",
            f"event {seq}: prev_hash does not match {before} "
            "(an event was inserted, deleted or moved here, or the one before was changed)",
        )


# The columns stored as text whose value is read back through a parser or a rewrite: the
# text must be exactly the one written, else a row could hold another text of the hashed
# value (a duplicate JSON key, other escapes, a raw NUL, a time in another format) that
# raw SQL, the indexes and search read differently.
_TEXT_FIELDS: Final = (
    "id", "kind", "agent", "runtime", "task", "user", "target", "decision", "rule", "reason",
    "policy_version", "session_id", "source_ip",
)  # fmt: skip


def _not_as_hashed(row: RowMapping, event: AuditEvent) -> str | None:
    """The first column of ``row`` not stored in the one form ``event`` is written in."""
    for name in _TEXT_FIELDS:
        if row[name] != getattr(event, name):
            return name
    for name in ("actor_chain", "action", "detail"):
        if row[name] != json_text(getattr(event, name)):
            return name
    raw_time = row["time"]
    if isinstance(raw_time, str) and raw_time != sqlite_time_text(event.time):
        return "time"
    return None


def _why_hash_differs(event: AuditEvent, seq: int, prev: str) -> tuple[str, str]:
    for moved_from in (seq - 1, seq + 1):
        if moved_from > 0 and event_hash(event, moved_from, prev) == event.hash:
            return "moved", (
                f"event {seq}: was written as event {moved_from} "
                "(events were inserted, deleted or reordered)"
            )
    return "hash", f"event {seq}: content does not match its hash (the event was changed)"


async def _check_checkpoints(
    conn: AsyncConnection,
    report: VerifyReport,
    marks: dict[int, Checkpoint],
    cipher: EnvelopeCipher | None,
) -> dict[str, Ed25519PublicKey | str]:
    keys = await verification_keys(conn, cipher)
    report.checkpoints = len(marks)
    for seq in sorted(marks):
        _check_signature(report, marks[seq], keys)
    if marks:
        last = max(marks)
        report.last_checkpoint_seq = last
        head = report.last_seq or 0
        if head < last:
            report.add(
                last,
                "truncated",
                f"checkpoint {last} signs event {last}, but the trail ends at {head or 'nothing'}"
                f": events {head + 1} to {last} (and any after) were deleted",
            )
        report.unanchored = max(0, head - last)
    else:
        report.unanchored = report.events
    _check_checkpointed_events_exist(report, marks)
    return keys


def _check_signature(
    report: VerifyReport,
    mark: Checkpoint,
    keys: dict[str, Ed25519PublicKey | str],
    name: str | None = None,
) -> None:
    _signed_by(report, mark.seq, mark.kid, keys, name or f"checkpoint {mark.seq}",
               lambda key: signature_valid(key, mark), "checkpoint-key",
               ("signature", "the signature is not valid"))  # fmt: skip


def _signed_by(
    report: VerifyReport,
    seq: int,
    kid: str,
    keys: dict[str, Ed25519PublicKey | str],
    what: str,
    valid: Callable[[Ed25519PublicKey], bool],
    key_problem: str,
    invalid: tuple[str, str],
) -> None:
    """Whether ``what`` (at ``seq``) is signed by key ``kid`` of ``keys``, as ``valid``
    checks; each way it is not is a finding (``key_problem`` or ``invalid``)."""
    key = keys.get(kid)
    if key is None:
        report.add(seq, key_problem, f"{what}: unknown key {kid}")
    elif isinstance(key, str):
        report.add(seq, key_problem, f"{what}: key {kid}: {key}")
    elif not valid(key):
        report.add(seq, invalid[0], f"{what}: {invalid[1]}")
    else:
        report.keys.add(kid)


def _check_checkpointed_events_exist(report: VerifyReport, marks: dict[int, Checkpoint]) -> None:
    """A checkpoint inside the trail's range whose event is gone is reported by the gap;
    one before the first event means the start of the trail was cut."""
    first = report.first_seq
    for seq in sorted(marks):
        if report.pruned_through is not None and seq <= report.pruned_through:
            continue  # archived with its event, awaiting deletion
        if first is not None and seq < first:
            report.add(seq, "truncated", f"checkpoint {seq}: its event is gone (trail cut)")
            break
