"""Pruning the start of the trail (tether.audit.prune), on SQLite and PostgreSQL.

Each test writes 25 events with a checkpoint every 10 (checkpoints 10 and 20), prunes, and
checks what a prune leaves: an archive that verifies on its own and that its marker names, a
trail that still verifies and goes on, and every refusal and tampering that must be seen."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from tests.audit.conftest import (
    MASTER,
    NO_HEAD_FILE,
    Trail,
    problems,
    refused_statements,
    sample,
    store_signing_key,
)
from tests.audit.test_verify import rewrite
from tether.audit import prune as pruning
from tether.audit.archive import read_lines, verify_archive
from tether.audit.canonical import event_hash
from tether.audit.checkpoints import sign_prune, verification_keys
from tether.audit.prune import Pruned, PruneRefused, checkpoint_before, prune
from tether.audit.schema import audit_checkpoints, audit_events, audit_prunes
from tether.audit.sinks.cursors import audit_sink_cursors
from tether.audit.store import Prune, event_row, prunes
from tether.identity.keys import SigningKey


async def _prune(
    trail: Trail, through: int, archive: Path, sinks: Sequence[str] = (), **kw: Any
) -> Pruned:
    return await prune(
        trail.engine, through=through, archive=archive, key=kw.get("key", trail.key),
        cipher=MASTER, head_file=NO_HEAD_FILE, sinks=sinks, now=datetime.now(UTC),
    )  # fmt: skip


async def test_each_phase_reports_its_progress_up_to_its_whole(
    written: Trail, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the command's progress bars show: each phase's count only grows, and ends at
    its whole (pages of 3 events here, so that there are several steps)."""
    monkeypatch.setattr(
        pruning.delete_pruned, "__defaults__", (3, pruning.delete_pruned.__defaults__[1])
    )
    steps: list[tuple[str, int, int]] = []
    await prune(
        written.engine, through=20, archive=tmp_path / "a.jsonl", key=written.key,
        cipher=MASTER, head_file=NO_HEAD_FILE, sinks=(), now=datetime.now(UTC),
        advance=lambda phase, done, total: steps.append((phase, done, total)),
    )  # fmt: skip
    for phase in ("archive", "delete"):
        seen = [(done, total) for name, done, total in steps if name == phase]
        assert seen and seen[-1] == (20, 20), (phase, seen)
        assert [done for done, _ in seen] == sorted({done for done, _ in seen})
    assert len([s for s in steps if s[0] == "delete"]) == 7  # 20 events, 3 a transaction


async def test_a_dry_run_checks_everything_and_changes_nothing(
    written: Trail, tmp_path: Path
) -> None:
    archive = tmp_path / "audit.jsonl"
    planned = await prune(
        written.engine, through=10, archive=archive, key=written.key, cipher=MASTER,
        head_file=NO_HEAD_FILE, sinks=(), now=datetime.now(UTC), dry_run=True,
    )  # fmt: skip
    assert (planned.first, planned.through, planned.events, planned.deleted) == (1, 10, 10, 0)
    assert not archive.exists() and await _markers(written) == []
    assert await _seqs(written) == list(range(1, 26))
    with pytest.raises(PruneRefused, match="event 15 has no signed checkpoint"):
        await prune(
            written.engine, through=15, archive=archive, key=written.key, cipher=MASTER,
            head_file=NO_HEAD_FILE, sinks=(), now=datetime.now(UTC), dry_run=True,
        )  # fmt: skip


async def _stopped_prune(
    trail: Trail, through: int, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prune killed once its marker is written, before it deleted anything."""

    async def stopped(*_args: Any, **_kw: Any) -> int:
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(pruning, "delete_pruned", stopped)
        with pytest.raises(RuntimeError):
            await _prune(trail, through, archive)


async def _markers(trail: Trail) -> list[Prune]:
    async with trail.engine.connect() as conn:
        return await prunes(conn)


async def _check_archive(trail: Trail, path: Path) -> Any:
    async with trail.engine.connect() as conn:
        keys = await verification_keys(conn, MASTER)
    with path.open("rb") as stream:
        return verify_archive(read_lines(stream), keys)


async def _seqs(trail: Trail) -> list[int]:
    async with trail.engine.connect() as conn:
        return list((await conn.execute(select(audit_events.c.seq))).scalars())


async def test_a_prune_archives_marks_and_deletes_and_the_trail_goes_on(
    written: Trail, tmp_path: Path
) -> None:
    first = tmp_path / "audit-1.jsonl"
    done = await _prune(written, 10, first)
    assert (done.first, done.through, done.events, done.resumed) == (1, 10, 10, False)
    assert done.deleted == 11  # ten events and checkpoint 10
    assert done.sha256 == hashlib.sha256(first.read_bytes()).hexdigest()
    assert await _seqs(written) == list(range(11, 26))
    (marker,) = await _markers(written)
    assert (marker.seq, marker.events, marker.archive_sha256) == (10, 10, done.sha256)
    assert marker.kid == written.key.kid

    report = await written.verify()
    assert report.ok, report.findings
    assert (report.pruned_through, report.prunes, report.awaiting_deletion) == (10, 1, 0)
    assert (report.events, report.first_seq, report.last_seq) == (15, 11, 25)
    assert (report.checkpoints, report.unanchored) == (1, 5)

    archived = await _check_archive(written, first)
    assert archived.ok, archived.findings
    assert (archived.after, archived.through, archived.events, archived.checkpoints) == (
        0, 10, 10, 1,
    )  # fmt: skip
    assert (archived.sha256, archived.last_hash) == (marker.archive_sha256, marker.hash)

    # The trail goes on; a second prune starts where the first ended.
    await written.append(10, start=25)
    second = tmp_path / "audit-2.jsonl"
    done = await _prune(written, 30, second)
    assert (done.first, done.through, done.events) == (11, 30, 20)
    report = await written.verify()
    assert report.ok, report.findings
    assert (report.pruned_through, report.prunes, report.first_seq) == (30, 2, 31)
    archived = await _check_archive(written, second)
    assert archived.ok, archived.findings
    assert (archived.after, archived.prev_hash) == (10, marker.hash)


async def test_what_a_prune_refuses_changes_nothing(written: Trail, tmp_path: Path) -> None:
    archive = tmp_path / "audit.jsonl"

    async def refused(through: int, match: str, **kw: Any) -> None:
        with pytest.raises(PruneRefused, match=match):
            await _prune(written, through, kw.pop("path", archive), **kw)
        assert await _markers(written) == []
        assert await _seqs(written) == list(range(1, 26))

    await refused(15, r"event 15 has no signed checkpoint \(the newest usable is 20\)")
    await refused(0, "event 0 has no signed checkpoint")
    async with written.engine.begin() as conn:
        now = datetime.now(UTC)
        await conn.execute(insert(audit_sink_cursors).values(name="siem", last_seq=5,
                                                              updated_at=now))  # fmt: skip
    await refused(10, r"have not delivered these events yet: siem \(at 5\)", sinks=["siem"])
    await refused(10, r"not delivered these events yet: other \(at 0\)", sinks=["other"])
    taken = tmp_path / "taken.jsonl"
    taken.write_text("mine\n")
    await refused(10, "taken.jsonl exists: an archive is never overwritten", path=taken)
    await refused(10, "the archive's directory .*/nowhere does not exist",
                  path=tmp_path / "nowhere" / "a.jsonl")  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:  # root writes anywhere: the check is asked
        patch.setattr(os, "access", lambda path, mode: False)
        await refused(10, "the archive's directory .* is not writable")
    assert taken.read_text() == "mine\n"
    assert not archive.exists()

    # A sink past the events is no obstacle; a sink no longer configured is not asked.
    async with written.engine.begin() as conn:
        await conn.execute(update(audit_sink_cursors).values(last_seq=10))
    assert (await _prune(written, 10, archive, sinks=["siem"])).through == 10
    with pytest.raises(PruneRefused, match="the trail is pruned through 10 already"):
        await _prune(written, 5, tmp_path / "earlier.jsonl")


async def test_of_two_prunes_at_once_one_marks_the_other_is_refused(
    written: Trail, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_archive = pruning.write_archive

    async def meanwhile(*args: Any, **kw: Any) -> Any:
        written_now = await write_archive(*args, **kw)
        monkeypatch.setattr(pruning, "write_archive", write_archive)
        await _prune(written, 20, tmp_path / "other.jsonl")  # another operator, faster
        return written_now

    monkeypatch.setattr(pruning, "write_archive", meanwhile)
    with pytest.raises(PruneRefused, match="another prune ran meanwhile"):
        await _prune(written, 10, tmp_path / "slow.jsonl")
    assert not (tmp_path / "slow.jsonl").exists()  # its archive, named by no marker, is gone
    assert [m.seq for m in await _markers(written)] == [20]
    assert (await written.verify()).ok


async def test_the_last_event_and_a_tampered_trail_are_never_pruned(
    trail: Trail, tmp_path: Path
) -> None:
    await trail.append(20)  # the last event is checkpoint 20's
    with pytest.raises(PruneRefused, match="event 20 is the trail's last"):
        await _prune(trail, 20, tmp_path / "a.jsonl")
    await trail.tamper("UPDATE audit_events SET target = 'innocent' WHERE seq = 7")
    with pytest.raises(PruneRefused, match=r"the trail does not verify \(1 finding"):
        await _prune(trail, 10, tmp_path / "b.jsonl")
    assert not (tmp_path / "b.jsonl").exists()
    assert await _markers(trail) == []


async def test_the_triggers_let_only_the_marked_events_go(written: Trail, tmp_path: Path) -> None:
    await _prune(written, 10, tmp_path / "audit.jsonl")
    await refused_statements(written.engine, (
        "DELETE FROM audit_events WHERE seq = 11",
        "UPDATE audit_events SET target = 'x' WHERE seq = 12",
        "DELETE FROM audit_checkpoints WHERE seq = 20",
        "DELETE FROM audit_prunes",
        "UPDATE audit_prunes SET seq = 20",
    ))  # fmt: skip
    assert (await written.verify()).ok


async def test_a_stopped_prune_verifies_and_finishes_when_run_again(
    written: Trail, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _stopped_prune(written, 20, tmp_path / "audit.jsonl", monkeypatch)
    report = await written.verify()
    assert report.ok, report.findings
    assert (report.pruned_through, report.awaiting_deletion, report.first_seq) == (20, 20, 21)

    done = await _prune(written, 20, tmp_path / "ignored.jsonl")
    assert (done.resumed, done.deleted, done.first, done.events) == (True, 22, 1, 20)
    assert not (tmp_path / "ignored.jsonl").exists()
    report = await written.verify()
    assert report.ok and report.awaiting_deletion == 0
    assert await _seqs(written) == list(range(21, 26))


async def test_events_planted_or_changed_before_the_marker_are_found(
    written: Trail, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the marker covers is not read as the trail, but what is left of it must still
    chain up to the marker's event: otherwise history could be planted there unseen."""

    await _stopped_prune(written, 10, tmp_path / "audit.jsonl", monkeypatch)
    await written.tamper("UPDATE audit_events SET target = 'innocent' WHERE seq = 4")
    assert problems(await written.verify()) == [(4, "hash")]
    await rewrite(written, 4, target="innocent")  # its own hash recomputed: the link breaks
    assert problems(await written.verify()) == [(5, "link")]

    await pruning.delete_pruned(written.engine, 10)  # the prune finished
    planted = sample(3, target="made-up").chained(7, "0" * 64, "")
    planted = planted.chained(7, "0" * 64, event_hash(planted, 7, "0" * 64))
    async with written.engine.begin() as conn:
        await conn.execute(insert(audit_events).values(event_row(planted)))
    report = await written.verify()
    assert problems(report) == [(10, "pruned")]
    assert report.awaiting_deletion == 1


async def test_a_marker_deleted_extended_or_planted_is_found(
    written: Trail, tmp_path: Path
) -> None:
    await _prune(written, 10, tmp_path / "audit.jsonl")
    (marker,) = await _markers(written)

    # Deleted: the trail then starts at 11, linked to a hash the genesis value is not.
    await written.tamper("DELETE FROM audit_prunes")
    assert problems(await written.verify()) == [(1, "gap"), (11, "link")]

    # Extended over ten more events (deleted too): its signature no longer holds.
    async with written.engine.connect() as conn:
        hash_20 = (await conn.execute(select(audit_events.c.hash).where(
            audit_events.c.seq == 20))).scalar_one()  # fmt: skip
    await written.tamper(
        "DELETE FROM audit_events WHERE seq <= 20", "DELETE FROM audit_checkpoints WHERE seq <= 20"
    )
    extended = {**_row(marker), "seq": 20, "hash": hash_20, "events": 20}
    async with written.engine.begin() as conn:
        await conn.execute(insert(audit_prunes).values(extended))
    assert problems(await written.verify()) == [(20, "prune-signature")]

    # Planted, signed by a key of the writer's own (unknown), or by one they added to the
    # database (not sealed by the master key).
    for stored in (False, True):
        rogue = SigningKey.generate(0)
        if stored:
            await store_signing_key(written.engine, rogue, "previous")  # sealed under another key
        planted = sign_prune(rogue, 20, hash_20, marker.time, marker.archive_sha256, 20)
        await written.tamper("DELETE FROM audit_prunes")
        async with written.engine.begin() as conn:
            await conn.execute(insert(audit_prunes).values(_row(planted)))
        assert problems(await written.verify()) == [(20, "prune-key")]


async def test_events_deleted_after_the_marker_are_still_a_gap(
    written: Trail, tmp_path: Path
) -> None:
    await _prune(written, 10, tmp_path / "audit.jsonl")
    await written.tamper("DELETE FROM audit_events WHERE seq = 12")
    assert (12, "gap") in problems(await written.verify())


async def test_a_changed_archive_is_refused(written: Trail, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await _prune(written, 10, path)
    lines = path.read_bytes().splitlines(keepends=True)
    changed = (
        lines[3]
        .replace(b'"decision":"allow"', b'"decision":"deny"')
        .replace(b'"decision": "allow"', b'"decision": "deny"')
    )
    assert changed != lines[3]
    for variant, finding in (
        ([*lines[:3], changed, *lines[4:]], "event 3: content does not match its hash"),
        ([*lines[:3], *lines[4:]], "event 4: expected event 3"),
        (lines[:-1], "no checkpoint signs event 10, the archive's last"),
        ([lines[0], *lines[2:], lines[1]], "event 2: expected event 1"),
        ([lines[0], b"[]\n", *lines[1:]], "line 2: not a JSON object"),
        ([b"{}\n", *lines[1:]], "line 1: not a tether-audit-archive/1 header"),
    ):
        (tmp_path / "bad.jsonl").write_bytes(b"".join(variant))
        report = await _check_archive(written, tmp_path / "bad.jsonl")
        assert not report.ok
        assert any(finding in line for line in report.findings), report.findings


async def test_checkpoint_before_picks_the_newest_earlier_checkpoint(written: Trail) -> None:
    async with written.engine.connect() as conn:
        times = dict((await conn.execute(select(audit_checkpoints.c.seq,
                                                audit_checkpoints.c.time))).all())  # fmt: skip
        assert await checkpoint_before(conn, times[10]) is None
        assert await checkpoint_before(conn, times[20]) == 10
        assert await checkpoint_before(conn, datetime.now(UTC)) == 20


def _row(marker: Prune) -> dict[str, Any]:
    return {column.name: getattr(marker, column.name) for column in audit_prunes.c}
