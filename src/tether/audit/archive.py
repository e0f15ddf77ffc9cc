"""Audit archives: the events a prune deletes, in a file that verifies on its own.

An archive is JSON lines (UTF-8). The first line is its header::

    {"format": "tether-audit-archive/1", "after": 0, "prev_hash": "000...0",
     "through": 5000, "events": 5000, "created": "2026-12-01T10:00:00.000000Z"}

then one ``{"event": {...}}`` line per event ``after + 1`` to ``through`` in ``seq`` order
(the event as the API and the sinks show it, :func:`tether.audit.canonical.event_json`),
then one ``{"checkpoint": {...}}`` line per signed checkpoint among them, the last one at
``through``. The prune marker that deleted the events records the file's SHA-256 and is
signed with it (:mod:`tether.audit.prune`).

:func:`verify_archive` checks an archive the way ``tether audit verify`` checks the trail:
every event's hash recomputed from its content, every link, no ``seq`` missing, the first
event linked to ``prev_hash`` (the genesis value, or the hash the previous prune ended at),
and every checkpoint's signature by a key Tether holds, its event's hash the one it signed.
It ends at a signed checkpoint, so an archive cut short, or extended, or changed anywhere is
a finding. Security decisions:

* **Never trusts the file.** Any bytes are read without an exception escaping: a line that
  is not JSON, not an object, too long, or not an event is a finding, and reading goes on.
* **Written whole or not at all** (:func:`write_archive`): to ``NAME.partial``, fsynced,
  then linked to ``NAME``, which must not exist (an archive is never overwritten).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.audit.canonical import (
    GENESIS,
    event_from_json,
    event_hash,
    event_json,
    format_time,
    parse_time,
)
from tether.audit.checkpoints import prune_signature_valid, signature_valid
from tether.audit.store import Checkpoint, Prune, events_after

FORMAT: Final = "tether-audit-archive/1"
MAX_LINE: Final = 16 * 1024 * 1024  # an event is far smaller; a longer line is refused
MAX_FINDINGS: Final = 1000
_CHUNK: Final = 5000
_HEADER_KEYS: Final = frozenset({"format", "after", "prev_hash", "through", "events", "created"})
_CHECKPOINT_KEYS: Final = frozenset({"seq", "hash", "time", "kid", "signature"})


class ArchiveExists(Exception):
    """The archive's path is taken: an archive is never overwritten."""


@dataclass(frozen=True, slots=True)
class Written:
    """What :func:`write_archive` wrote: the file's SHA-256 and how many events."""

    sha256: str
    events: int


@dataclass
class ArchiveReport:
    """What :func:`verify_archive` found; ``ok`` when no finding."""

    sha256: str = ""
    after: int | None = None
    prev_hash: str | None = None
    through: int | None = None
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    checkpoints: int = 0
    keys: set[str] = field(default_factory=set)
    findings: list[str] = field(default_factory=list)
    more_findings: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, what: str) -> None:
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(what)
        else:
            self.more_findings += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sha256": self.sha256,
            "after": self.after,
            "prev_hash": self.prev_hash,
            "through": self.through,
            "events": self.events,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "checkpoints": self.checkpoints,
            "keys": sorted(self.keys),
            "findings": list(self.findings),
            "more_findings": self.more_findings,
        }


# --- writing -----------------------------------------------------------------------------------


def _line(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def checkpoint_json(mark: Checkpoint) -> dict[str, Any]:
    return {"seq": mark.seq, "hash": mark.hash, "time": format_time(mark.time),
            "kid": mark.kid, "signature": mark.signature}  # fmt: skip


async def write_archive(
    conn: AsyncConnection,
    path: Path,
    *,
    after: int,
    prev_hash: str,
    through: int,
    marks: Iterable[Checkpoint],
    created: datetime,
    advance: Callable[[int], None] = lambda _written: None,
) -> Written:
    """Archive events ``after + 1`` to ``through`` and the checkpoints among them into
    ``path`` (:class:`ArchiveExists` if it is taken), calling ``advance`` with the count
    of events written after each chunk. Durable once it returns."""
    if path.exists() or path.is_symlink():
        raise ArchiveExists(f"{path} exists: an archive is never overwritten")
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    digest = hashlib.sha256()
    count = 0
    header = {"format": FORMAT, "after": after, "prev_hash": prev_hash, "through": through,
              "events": through - after, "created": format_time(created)}  # fmt: skip
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(partial, flags, 0o600), "wb") as out:
        _write(out, digest, _line(header))
        cursor = after
        while cursor < through:
            events = await events_after(conn, cursor, min(_CHUNK, through - cursor))
            if not events:
                break
            for event in events:
                _write(out, digest, _line({"event": event_json(event)}))
                count += 1
            cursor = events[-1].seq or cursor
            advance(count)
        for mark in sorted(marks, key=lambda m: m.seq):
            if after < mark.seq <= through:
                _write(out, digest, _line({"checkpoint": checkpoint_json(mark)}))
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(partial, path)
    except FileExistsError:
        raise ArchiveExists(f"{path} exists: an archive is never overwritten") from None
    finally:
        partial.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return Written(digest.hexdigest(), count)


def _write(out: IO[bytes], digest: Any, data: bytes) -> None:
    out.write(data)
    digest.update(data)


# --- verifying ---------------------------------------------------------------------------------


def read_lines(stream: IO[bytes]) -> Iterable[bytes]:
    """The lines of ``stream``; a line longer than :data:`MAX_LINE` comes in pieces of that
    size (each then fails to parse), so that every byte is still read and digested."""
    while line := stream.readline(MAX_LINE + 1):
        yield line


def verify_archive(
    lines: Iterable[bytes], keys: Mapping[str, Ed25519PublicKey | str]
) -> ArchiveReport:
    """Check the archive whose raw lines are ``lines`` against the signing ``keys`` (by
    kid: the public key, or why it is unusable)."""
    report = ArchiveReport()
    digest = hashlib.sha256()
    hashes: dict[int, str] = {}
    marks: list[dict[str, Any]] = []
    expected, prev = 0, ""
    for number, raw in enumerate(lines, start=1):
        digest.update(raw)
        document = _parse(report, number, raw)
        if document is None:
            continue
        if number == 1:
            expected, prev = _header(report, document)
            continue
        if report.through is None:
            continue  # no usable header: the findings say so, the digest goes on
        if set(document) == {"event"} and isinstance(document["event"], dict):
            if marks:
                report.add(f"line {number}: an event after the checkpoints")
            expected, prev = _event(report, number, document["event"], expected, prev, hashes)
        elif set(document) == {"checkpoint"} and isinstance(document["checkpoint"], dict):
            marks.append(document["checkpoint"])
        else:
            report.add(f"line {number}: neither an event nor a checkpoint")
    report.sha256 = digest.hexdigest()
    if report.through is None:
        if not report.findings:
            report.add("the archive is empty: no header")
        return report
    _ends(report, expected)
    last = report.after or 0
    for mark in marks:
        seq = _checkpoint(report, mark, hashes, keys)
        if seq is not None and seq <= last:
            report.add(f"checkpoint {seq}: out of order (after checkpoint or event {last})")
        last = max(last, seq or 0)
    if report.through not in {m.get("seq") for m in marks if isinstance(m.get("seq"), int)}:
        report.add(f"no checkpoint signs event {report.through}, the archive's last")
    return report


def _parse(report: ArchiveReport, number: int, raw: bytes) -> dict[str, Any] | None:
    if len(raw) > MAX_LINE:
        report.add(f"line {number}: longer than {MAX_LINE} bytes")
        return None
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        report.add(f"line {number}: not JSON")
        return None
    if not isinstance(document, dict):
        report.add(f"line {number}: not a JSON object")
        return None
    return document


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62


def _header(report: ArchiveReport, header: Mapping[str, Any]) -> tuple[int, str]:
    if set(header) != _HEADER_KEYS or header.get("format") != FORMAT:
        report.add(f"line 1: not a {FORMAT} header")
        return 0, ""
    after, through, events, prev = (header[k] for k in ("after", "through", "events", "prev_hash"))
    if not (_is_count(after) and _is_count(through) and _is_count(events)) or after >= through:
        report.add("line 1: after, through and events must be counts, after below through")
        return 0, ""
    if not isinstance(prev, str) or len(prev) != len(GENESIS):
        report.add("line 1: prev_hash is not a hash")
        return 0, ""
    if events != through - after:
        report.add(f"line 1: {events} events cannot be {after + 1} to {through}")
    report.after, report.through, report.prev_hash = after, through, prev
    return after + 1, prev


def _event(
    report: ArchiveReport,
    number: int,
    document: Mapping[str, Any],
    expected: int,
    prev: str,
    hashes: dict[int, str],
) -> tuple[int, str]:
    try:
        event = event_from_json(document)
        seq, stored_prev, stored = event.seq, event.prev_hash, event.hash
        if not isinstance(seq, int) or not isinstance(stored_prev, str) or not _is_count(seq):
            raise ValueError("seq, prev_hash and hash are required")
        if not isinstance(stored, str):
            raise ValueError("hash is required")
        computed = event_hash(event, seq, stored_prev)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:
        report.add(f"line {number}: not an event ({type(error).__name__})")
        return expected, prev
    report.events += 1
    report.first_seq = seq if report.first_seq is None else report.first_seq
    report.last_seq, report.last_hash = seq, stored
    if seq != expected:
        report.add(f"event {seq}: expected event {expected} (events missing, added or moved)")
    if computed != stored:
        report.add(f"event {seq}: content does not match its hash (the event was changed)")
    if stored_prev != prev:
        report.add(f"event {seq}: prev_hash does not match the hash before it")
    hashes[seq] = stored
    return seq + 1, stored


def _ends(report: ArchiveReport, expected: int) -> None:
    if report.through is not None and expected != report.through + 1:
        last = report.last_seq if report.last_seq is not None else "nothing"
        report.add(f"the archive ends at {last}, its header says {report.through}")


def _checkpoint(
    report: ArchiveReport,
    document: Mapping[str, Any],
    hashes: Mapping[int, str],
    keys: Mapping[str, Ed25519PublicKey | str],
) -> int | None:
    """Check one checkpoint line; its seq, None when it is not a checkpoint."""
    try:
        if set(document) != _CHECKPOINT_KEYS or not _is_count(document["seq"]):
            raise ValueError("not a checkpoint")
        mark = Checkpoint(int(document["seq"]), str(document["hash"]),
                          parse_time(str(document["time"])), str(document["kid"]),
                          str(document["signature"]))  # fmt: skip
    except (ValueError, TypeError, OverflowError):
        report.add("a checkpoint line is not a checkpoint")
        return None
    report.checkpoints += 1
    if hashes.get(mark.seq) != mark.hash:
        report.add(f"checkpoint {mark.seq}: its event is not in the archive with that hash")
    key = keys.get(mark.kid)
    if not isinstance(key, Ed25519PublicKey):
        why = "unknown key" if key is None else key
        report.add(f"checkpoint {mark.seq}: {why} ({mark.kid})")
    elif not signature_valid(key, mark):
        report.add(f"checkpoint {mark.seq}: the signature is not valid")
    else:
        report.keys.add(mark.kid)
    return mark.seq


def match_marker(
    report: ArchiveReport,
    markers: Sequence[Prune],
    keys: Mapping[str, Ed25519PublicKey | str],
) -> Prune | None:
    """The prune marker (of a trail's ``markers``, oldest first) that names the archive
    ``report`` checked, adding a finding when none does or when it does not match the
    archive's events, chain or signature."""
    found = [index for index, m in enumerate(markers) if m.archive_sha256 == report.sha256]
    if not found:
        report.add(
            f"no prune marker of this trail names this archive (SHA-256 {report.sha256}): "
            "it is not the file a prune wrote, or it belongs to another trail"
        )
        return None
    marker = markers[found[0]]
    before = markers[found[0] - 1].hash if found[0] else GENESIS
    if (marker.seq, marker.hash, marker.events) != (
        report.through,
        report.last_hash,
        report.events,
    ):
        report.add(f"prune marker {marker.seq} names this archive but not its events")
    if report.prev_hash != before:
        report.add("the archive does not continue the chain where the prune before it ended")
    key = keys.get(marker.kid)
    if not isinstance(key, Ed25519PublicKey) or not prune_signature_valid(key, marker):
        report.add(f"prune marker {marker.seq}: its signature does not verify")
    return marker
