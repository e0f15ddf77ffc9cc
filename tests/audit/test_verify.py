"""Verification finds every kind of tampering, done directly in SQL, and says where.

Each test writes 25 events with a checkpoint every 10 (so checkpoints 10 and 20; events
21-25 unanchored), tampers as someone with write access to the database would (the
append-only triggers dropped first), and checks the findings, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from sqlalchemy import insert, select, text

from tests.audit.conftest import Trail, problems
from tether.audit import store
from tether.audit.canonical import event_hash
from tether.audit.checkpoints import sign_checkpoint
from tether.audit.schema import audit_checkpoints, audit_events
from tether.identity.keys import SigningKey


async def event(trail: Trail, seq: int) -> store.AuditEvent:
    async with trail.engine.connect() as conn:
        (found,) = await store.events_after(conn, seq - 1, limit=1)
    assert found.seq == seq
    return found


async def rewrite(trail: Trail, seq: int, **changes: object) -> None:
    """Replace event ``seq`` with a changed copy whose own hash is recomputed."""
    old = await event(trail, seq)
    new = dataclasses.replace(old, **changes)  # type: ignore[arg-type]
    new = new.chained(seq, old.prev_hash or "", event_hash(new, seq, old.prev_hash or ""))
    await trail.tamper(f"DELETE FROM audit_events WHERE seq = {seq}")
    async with trail.engine.begin() as conn:
        await conn.execute(insert(audit_events).values(store.event_row(new)))


async def test_an_untouched_trail_verifies(written: Trail) -> None:
    report = await written.verify()
    assert report.ok
    assert (report.events, report.first_seq, report.last_seq) == (25, 1, 25)
    assert (report.checkpoints, report.last_checkpoint_seq, report.unanchored) == (2, 20, 5)
    assert report.keys == {written.key.kid}


async def test_a_changed_field_is_found_at_its_seq(written: Trail) -> None:
    await written.tamper("UPDATE audit_events SET target = 'innocent' WHERE seq = 7")
    report = await written.verify()
    assert problems(report) == [(7, "hash")]
    assert "event 7: content does not match its hash" in report.findings[0].what


@pytest.mark.parametrize(
    "column, value",
    [("agent", "'someone-else'"), ("action", "'{\"n\": 7}'"), ("time", "time"),
     ("decision", "'maybe'"), ("rows", "42"), ("duration_ms", "1.25")],
)  # fmt: skip
async def test_every_column_is_covered_by_the_hash(written: Trail, column: str, value: str) -> None:
    quoted = f'"{column}"'
    if column == "time":  # a different instant, in each backend's own storage form
        value = "time + interval '1 second'"
        if written.engine.dialect.name == "sqlite":
            value = "datetime(time, '+1 second')"
    await written.tamper(f"UPDATE audit_events SET {quoted} = {value} WHERE seq = 8")
    assert problems(await written.verify()) == [(8, "hash")]


async def test_a_changed_event_with_a_recomputed_hash_breaks_the_next_link(
    written: Trail,
) -> None:
    await rewrite(written, 7, target="innocent")
    report = await written.verify()
    assert problems(report) == [(8, "link")]
    assert "event 8: prev_hash does not match event 7's hash" in report.findings[0].what


async def test_a_rewritten_chain_is_caught_by_the_signed_checkpoints(written: Trail) -> None:
    """Every hash from event 5 on recomputed: only the signatures can tell."""
    async with written.engine.connect() as conn:
        events = await store.events_after(conn, 0)
    await written.tamper("DELETE FROM audit_events WHERE seq >= 5")
    prev = events[3].hash or ""
    async with written.engine.begin() as conn:
        for old in events[4:]:
            seq = old.seq or 0
            changed = dataclasses.replace(old, agent="someone-else" if seq == 5 else old.agent)
            digest = event_hash(changed, seq, prev)
            row = store.event_row(changed.chained(seq, prev, digest))
            await conn.execute(insert(audit_events).values(row))
            prev = digest
    assert problems(await written.verify()) == [(10, "checkpoint"), (20, "checkpoint")]


async def test_a_deleted_event_leaves_a_gap_and_a_broken_link(written: Trail) -> None:
    await written.tamper("DELETE FROM audit_events WHERE seq = 12")
    report = await written.verify()
    assert problems(report) == [(12, "gap"), (13, "link")]
    assert report.findings[0].what == "events 12 are missing (deleted)" or (
        "12" in report.findings[0].what and "missing" in report.findings[0].what
    )


async def test_an_inserted_event_is_found(written: Trail) -> None:
    """Events 15.. moved up by one and a forged, well-chained event put at 15."""
    await written.tamper(
        "UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 15",
        "UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1015",
    )
    before = await event(written, 14)
    forged = dataclasses.replace(before, id="f" * 32, target="forged")
    forged = forged.chained(15, before.hash or "", event_hash(forged, 15, before.hash or ""))
    async with written.engine.begin() as conn:
        await conn.execute(insert(audit_events).values(store.event_row(forged)))
    report = await written.verify()
    found = problems(report)
    assert (16, "moved") in found
    assert (16, "link") in found
    assert "was written as event 15" in next(f.what for f in report.findings if f.seq == 16)
    assert found[0][0] >= 15  # nothing before the insertion is blamed


async def test_reordered_events_are_found(written: Trail) -> None:
    await written.tamper(
        "UPDATE audit_events SET seq = 1000 WHERE seq = 5",
        "UPDATE audit_events SET seq = 5 WHERE seq = 6",
        "UPDATE audit_events SET seq = 6 WHERE seq = 1000",
    )
    report = await written.verify()
    assert {(5, "moved"), (6, "moved")} <= set(problems(report))
    assert all(f.seq in (5, 6, 7) for f in report.findings)


async def test_truncating_checkpointed_events_is_found(written: Trail) -> None:
    await written.tamper("DELETE FROM audit_events WHERE seq >= 18")
    report = await written.verify()
    assert problems(report) == [(20, "truncated")]
    assert "checkpoint 20" in report.findings[0].what
    assert "18 to 20" in report.findings[0].what


async def test_truncation_after_the_last_checkpoint_shows_as_unanchored(written: Trail) -> None:
    before = await written.verify()
    await written.tamper("DELETE FROM audit_events WHERE seq > 20")
    after = await written.verify()
    # What nothing signed yet cannot be proven missing; the report said it was at risk.
    assert (before.unanchored, after.unanchored, after.ok) == (5, 0, True)


async def test_deleting_the_start_of_the_trail_is_found(written: Trail) -> None:
    await written.tamper("DELETE FROM audit_events WHERE seq <= 3")
    found = problems(await written.verify())
    assert found[:2] == [(1, "gap"), (4, "link")]


async def test_a_changed_checkpoint_fails_its_signature(written: Trail) -> None:
    await written.tamper(
        "UPDATE audit_checkpoints SET time = time WHERE seq = 10",  # no-op, then a real change
        "UPDATE audit_checkpoints SET seq = 11, hash = "
        "(SELECT hash FROM audit_events WHERE seq = 11) WHERE seq = 10",
    )
    assert problems(await written.verify()) == [(11, "signature")]


async def test_a_checkpoint_signed_by_an_unknown_key_is_refused(written: Trail) -> None:
    stranger = SigningKey.generate(time.time())
    head = await event(written, 25)
    forged = sign_checkpoint(stranger, 25, head.hash or "", head.time)
    async with written.engine.begin() as conn:
        await conn.execute(insert(audit_checkpoints).values(dataclasses.asdict(forged)))
    report = await written.verify()
    assert problems(report) == [(25, "checkpoint-key")]
    assert stranger.kid in report.findings[0].what


async def test_a_swapped_public_key_is_refused(written: Trail) -> None:
    stranger = SigningKey.generate(time.time())
    await written.tamper(
        "UPDATE signing_keys SET public = :public WHERE kid = :kid",
        params=[{"public": '{"kty": "OKP", "crv": "Ed25519", "x": "' + stranger.public_jwk()["x"]
                 + '"}', "kid": written.key.kid}],
    )  # fmt: skip
    found = problems(await written.verify())
    assert found == [(10, "checkpoint-key"), (20, "checkpoint-key")]


async def test_an_unreadable_row_is_reported_not_fatal(written: Trail) -> None:
    await written.tamper("UPDATE audit_events SET action = 'not json' WHERE seq = 3")
    if written.engine.dialect.name == "sqlite":  # PostgreSQL's types refuse these values
        await written.tamper(
            "UPDATE audit_events SET time = 'yesterday' WHERE seq = 4",
            "UPDATE audit_events SET duration_ms = 'slow' WHERE seq = 5",
        )
        expected = [(3, "unreadable"), (4, "unreadable"), (5, "unreadable")]
    else:
        expected = [(3, "unreadable")]
    assert problems(await written.verify()) == expected


async def test_the_report_is_json_ready(written: Trail) -> None:
    await written.tamper("UPDATE audit_events SET target = 'x' WHERE seq = 2")
    report = (await written.verify()).to_dict()
    assert report["ok"] is False
    assert report["findings"] == [
        {"seq": 2, "problem": "hash",
         "what": "event 2: content does not match its hash (the event was changed)"}
    ]  # fmt: skip
    async with written.engine.connect() as conn:
        count = (await conn.execute(select(text("count(*)")).select_from(audit_events))).scalar()
    assert report["events"] == count == 25
