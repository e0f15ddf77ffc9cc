"""A node's copy of its revocations (tether.identity.revocation_copy) and what the revocation
set makes of it: the file's parser never crashes and refuses whatever is not a copy; what a
copy holds is always refused, whatever the database says; and the entries in force that a
whole read of the database lacks are exactly the ones reported missing."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.crypto.masterkey import MasterKey
from tether.crypto.seal import RowSealer
from tether.identity.revocation import RevocationSet
from tether.identity.revocation_copy import (
    FORMAT,
    KINDS,
    Held,
    RevocationCopy,
    RevocationCopyError,
    parse_copy,
    read_copy,
    render_copy,
    write_copy,
)
from tether.store import revocation_ledger as rl
from tether.store.credentials import Revocation, RevocationRead

SEALER = RowSealer(MasterKey(bytes(range(32)), source="test"))
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)

_values = st.text(st.characters(exclude_categories=()), min_size=1, max_size=16)
_expiry = st.one_of(st.none(), st.integers(-3600, 3600).map(lambda s: NOW.timestamp() + s))
_held = st.lists(
    st.builds(Held, st.sampled_from(KINDS), _values, _expiry),
    max_size=12,
    unique_by=lambda h: (h.kind, h.value),
)


def _copy(*entries: Any, **extra: Any) -> bytes:
    return json.dumps({"format": FORMAT, "revocations": list(entries), **extra}).encode()


# --- the file ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(_held)
def test_what_is_written_reads_back(entries: list[Held]) -> None:
    assert parse_copy(render_copy(entries)) == sorted(entries, key=lambda h: (h.kind, h.value))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_refused_cleanly(data: bytes) -> None:
    with contextlib.suppress(RevocationCopyError):  # nothing else, and never a crash
        parse_copy(data)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "kind": st.sampled_from(KINDS) | _json,
                "value": _values | _json,
                "expires_at": _expiry | _json,
            },
        )
        | _json,
        max_size=4,
    )
)
def test_copy_shaped_documents_parse_only_when_every_entry_is_sound(entries: list[Any]) -> None:
    try:
        parsed = parse_copy(_copy(*entries))
    except RevocationCopyError:
        return
    assert len(parsed) == len(entries)  # nothing dropped: every entry parsed, or none
    for held, entry in zip(parsed, entries, strict=True):
        assert (held.kind, held.value) == (entry["kind"], entry["value"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "not a JSON document"),
        (b"[]", "not a revocation copy"),
        (json.dumps({"format": "other", "revocations": []}).encode(), "not a revocation copy"),
        (json.dumps({"format": FORMAT}).encode(), "revocations is not a list"),
        (_copy(["token", "x"]), "revocation 0 is not an object"),
        (_copy({"kind": "user", "value": "x"}), "revocation 0: kind must be one of"),
        (_copy({"kind": "token", "value": ""}), "value must be a non-empty string"),
        (_copy({"kind": "token", "value": 5}), "value must be a non-empty string"),
        (_copy({"kind": "task", "value": "T", "expires_at": True}), "expires_at must be"),
        (_copy({"kind": "task", "value": "T", "expires_at": "soon"}), "expires_at must be"),
        (
            b'{"format": "tether-revocations/1", "revocations": [{"kind": "task", "value": "T", '
            b'"expires_at": NaN}]}',
            "expires_at must be",
        ),
    ],
)
def test_what_is_not_a_copy_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(RevocationCopyError, match=message):
        parse_copy(data)


def test_no_file_is_an_empty_copy_and_an_unreadable_one_an_error(tmp_path: Path) -> None:
    assert read_copy(tmp_path / "absent.json") == []
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(RevocationCopyError, match=r"dir\.json"):
        read_copy(tmp_path / "dir.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RevocationCopyError, match=r"bad\.json: not a JSON document"):
        read_copy(tmp_path / "bad.json")


def test_the_copy_is_private_and_its_directory_made(tmp_path: Path) -> None:
    path = tmp_path / "data" / "revocations.json"
    write_copy(path, [Held("task", "T-1", None)])
    assert read_copy(path) == [Held("task", "T-1", None)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["revocations.json"]  # no temporary left


async def test_saves_write_only_what_changed_and_survive_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy = RevocationCopy(tmp_path / "revocations.json")
    await copy.save(1, lambda: [Held("agent", "a", None)])
    await copy.save(1, lambda: [Held("agent", "b", None)])  # version 1 is written: nothing
    assert (copy.writes, copy.load()) == (1, [Held("agent", "a", None)])
    await copy.save(1, lambda: [], force=True)
    assert (copy.writes, copy.load()) == (2, [])
    blocked = RevocationCopy(tmp_path / "file" / "revocations.json")
    (tmp_path / "file").write_text("not a directory")
    await blocked.save(1, lambda: [Held("agent", "a", None)])  # logged, not raised
    assert blocked.writes == 0
    assert "cannot write the revocation copy" in caplog.text


# --- the revocation set -----------------------------------------------------------------------


def _whole_read(entries: list[Held]) -> RevocationRead:
    """A whole read of a database holding ``entries``, its ledger matching them."""
    revocations = tuple(
        Revocation(
            id=position + 1,
            kind=h.kind,  # type: ignore[arg-type]  # one of KINDS
            value=h.value,
            reason="r",
            revoked_by="admin",
            revoked_at=NOW - timedelta(days=1),
            expires_at=None if h.expires_at is None else datetime.fromtimestamp(h.expires_at, UTC),
        )
        for position, h in enumerate(entries)
    )
    rows: list[dict[str, Any]] = [dataclasses.asdict(entry) for entry in revocations]
    held = rl.Ledger()
    for row in rows:
        held = held.recorded(rl.tag(SEALER, row), 1)
    ledger = {**held.columns(), "seal": SEALER.seal(rl.LEDGER, held.columns())}
    return RevocationRead(revocations, tuple(rows), ledger, len(rows))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(_held, _held)
def test_a_copy_is_honoured_and_what_the_database_lost_reported(
    copy: list[Held], database: list[Held]
) -> None:
    revoked = RevocationSet()
    revoked.hold(copy)
    assert revoked.take(_whole_read(database), SEALER, whole=True, now=NOW) is None
    assert revoked.unverified is None  # the list verifies: the rollback is invisible to it
    for entry in [*copy, *database]:  # never a deny turned into an allow
        assert revoked.refusal(entry.kind, entry.value, "revoked") == "revoked"
    in_database = {(h.kind, h.value) for h in database}
    moment = NOW.timestamp()
    lost = sorted(
        (h.kind, h.value)
        for h in copy
        if (h.kind, h.value) not in in_database and (h.expires_at is None or h.expires_at > moment)
    )
    assert [(h.kind, h.value) for h in revoked.missing(NOW)] == lost
    # Revoked again in the database, they are missing no more.
    again = [h for h in copy if (h.kind, h.value) not in in_database]
    assert revoked.take(_whole_read([*database, *again]), SEALER, whole=True, now=NOW) is None
    assert revoked.missing(NOW) == []


def test_the_longer_lived_entry_wins_and_the_copy_keeps_what_is_in_force() -> None:
    revoked = RevocationSet()
    soon, later = NOW.timestamp() + 60, NOW.timestamp() + 3600
    revoked.hold([Held("token", "j", soon), Held("task", "gone", NOW.timestamp() - 1)])
    version = revoked.version
    revoked.hold([Held("token", "j", soon)])  # nothing new: the copy is not behind
    assert revoked.version == version
    revoked.hold([Held("token", "j", later)])
    assert revoked.version == version + 1
    revoked.hold([Held("token", "j", soon)])  # never shortened
    assert revoked.held(NOW) == [Held("token", "j", later)]  # the expired task is left out
    revoked.add("token", "j")  # revoked here for good
    assert revoked.held(NOW + timedelta(days=365)) == [Held("token", "j", None)]
    assert revoked.refusal("task", "gone", "revoked") is not None  # still refused in memory


@given(_held, st.integers(-3600, 3600))
def test_forgetting_expired_entries_drops_exactly_those_past_the_moment(
    entries: list[Held], seconds: int
) -> None:
    """A node stops holding an entry only once its own expiry passed: one without expiry, or
    one still in force at the moment, stays refused."""
    revoked = RevocationSet()
    revoked.hold(entries)
    revoked.unverified = None  # judged on the entries alone
    before = NOW + timedelta(seconds=seconds)
    gone = revoked.forget_expired(before)
    for entry in entries:
        kept = entry.expires_at is None or entry.expires_at > before.timestamp()
        assert revoked.holds(entry.kind, entry.value) == kept
    assert gone == sum(1 for e in entries if e.expires_at is not None
                       and e.expires_at <= before.timestamp())  # fmt: skip
    assert {(h.kind, h.value) for h in revoked.held(NOW - timedelta(hours=2))} == {
        (e.kind, e.value) for e in entries if revoked.holds(e.kind, e.value)
    }
