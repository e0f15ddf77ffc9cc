"""Row revisions (tether.crypto.revisions) and the node's file of them
(tether.identity.revision_copy): once a node admitted a row at some revision, no older
revision of it is admitted again, whatever else happens (other rows, the file held again,
writes in any order); an agent row's seal covers its revision, so no revision written
behind Tether's back verifies; and the file's parser never crashes and refuses whatever
is not a node's revisions."""

from __future__ import annotations

import contextlib
import json
import logging
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.crypto.masterkey import MasterKey
from tether.crypto.revisions import MAX_REVISION, Mark, RowRevisions
from tether.crypto.seal import RowSealer
from tether.identity.revision_copy import (
    FORMAT,
    RevisionCopy,
    RevisionCopyError,
    parse_marks,
    read_marks,
    render_marks,
)
from tether.store.identity import AGENTS, agent_admitted, agent_seal_columns

SEALER = RowSealer(MasterKey(bytes(range(32)), source="test"))

_keys = st.text(st.characters(exclude_categories=()), min_size=1, max_size=12)
_revisions = st.integers(min_value=0, max_value=50)
_events = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), _revisions), max_size=40)


def _row(revision: int, state: str = "active", key: str = "bot") -> dict[str, Any]:
    row: dict[str, Any] = {"id": key, "owner": "o", "labels": {"team": "x"}, "state": state}
    row["revision"] = revision
    row["seal"] = SEALER.seal(AGENTS, agent_seal_columns(row))
    return row


@given(_events, st.sampled_from(["a", "b", "c"]), _revisions)
def test_no_revision_older_than_one_admitted_is_admitted_again(
    events: list[tuple[str, int]], key: str, asked: int
) -> None:
    """The model: a row is current iff its revision is at least the highest admitted."""
    revisions = RowRevisions()
    sealer = SEALER.witnessed(revisions)
    highest: dict[str, int] = {}
    for row_key, revision in events:
        admitted = sealer.current(AGENTS, row_key, revision, what="row", quiet=True)
        assert admitted == (revision >= highest.get(row_key, 0))
        if admitted:
            highest[row_key] = max(highest.get(row_key, 0), revision)
    again = RowRevisions()
    again.hold(revisions.marks())  # what a restarted node holds from its file
    for held in (revisions, again):
        assert (held.older(AGENTS, key, asked) is None) == (asked >= highest.get(key, 0))
        assert held.mark(AGENTS, key) == highest.get(key, 0)


@given(st.lists(st.builds(Mark, st.just("agents"), _keys, _revisions), max_size=20))
def test_holding_marks_only_ever_raises_them(marks: list[Mark]) -> None:
    revisions = RowRevisions()
    revisions.advance(AGENTS, "bot", 7)
    revisions.hold(marks)
    assert revisions.mark(AGENTS, "bot") >= 7
    for mark in marks:
        assert revisions.mark(mark.table, mark.key) >= mark.revision


def test_an_unwitnessed_sealer_admits_every_revision() -> None:
    assert SEALER.revisions is None
    assert SEALER.current(AGENTS, "bot", 0, what="row")
    with pytest.raises(ValueError, match="between 0 and"):
        RowRevisions().advance(AGENTS, "bot", -1)


@given(_revisions, _revisions, st.sampled_from(["active", "disabled"]))
def test_a_revision_written_behind_tethers_back_never_verifies(
    sealed: int, written: int, state: str
) -> None:
    row = _row(sealed, state)
    forged = {**row, "revision": written}
    assert SEALER.verify(AGENTS, agent_seal_columns(forged), forged["seal"]) == (written == sealed)


def test_an_agent_row_put_back_is_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    sealer = SEALER.witnessed(RowRevisions())
    active, disabled = _row(3), _row(4, "disabled")
    assert agent_admitted(sealer, active) and agent_admitted(sealer, disabled)
    with caplog.at_level(logging.ERROR, "tether.crypto.seal"):
        assert not agent_admitted(sealer, active)  # revision 3, put back
    assert (
        "agent 'bot' refused: its row is revision 3, older than revision 4 this node saw"
        in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.ERROR, "tether.crypto.seal"):
        assert not agent_admitted(sealer, active, quiet=True)
    assert caplog.text == ""
    assert agent_admitted(sealer, disabled)  # equal is current
    # A row sealed before migration 0022 (no revision in its seal) still verifies.
    old = {"id": "old", "owner": "o", "labels": {}, "state": "active", "revision": 0}
    old["seal"] = SEALER.seal(AGENTS, {k: old[k] for k in ("id", "owner", "labels", "state")})
    assert agent_admitted(sealer, old)


# --- the node's file ----------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_row_like = st.fixed_dictionaries(
    {},
    optional={
        "table": st.sampled_from(["agents", "users", 1, None]),
        "key": st.one_of(_keys, st.just(""), st.integers()),
        "revision": st.one_of(_revisions, st.integers(), st.floats(), st.booleans(), st.none()),
    },
)


@settings(max_examples=300)
@given(st.binary(max_size=64) | _json.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_parse_or_are_refused(data: bytes) -> None:
    with contextlib.suppress(RevisionCopyError):
        parse_marks(data)


@settings(max_examples=300)
@given(st.lists(_row_like, max_size=5))
def test_file_shaped_documents_parse_exactly_or_are_refused(rows: list[dict[str, Any]]) -> None:
    data = json.dumps({"format": FORMAT, "rows": rows}).encode()
    try:
        marks = parse_marks(data)
    except RevisionCopyError:
        return
    assert len(marks) == len(rows)  # nothing dropped
    for mark, row in zip(marks, rows, strict=True):
        assert (mark.table, mark.key, mark.revision) == (row["table"], row["key"], row["revision"])
        assert type(row["revision"]) is int and 0 <= mark.revision <= MAX_REVISION


@given(st.lists(st.builds(Mark, st.just("agents"), _keys, _revisions), max_size=10))
def test_what_is_written_reads_back(marks: list[Mark]) -> None:
    parsed = parse_marks(render_marks(marks))
    assert sorted(parsed, key=lambda m: (m.key, m.revision)) == sorted(
        marks, key=lambda m: (m.key, m.revision)
    )


async def test_the_file_is_written_when_a_mark_moved_and_held_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "data" / "revisions.json"
    assert read_marks(path) == []  # a first start
    copy = RevisionCopy(path, RowRevisions())
    copy.revisions.advance(AGENTS, "bot", 2)
    await copy.save()
    await copy.save()  # nothing moved: not written again
    assert copy.writes == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    restarted = RevisionCopy(path, RowRevisions())
    assert restarted.hold() == 1
    assert restarted.revisions.older(AGENTS, "bot", 1) == 2
    path.write_text('{"format": "tether-revisions/1", "rows": [{"table": "agents"}]}')
    with pytest.raises(RevisionCopyError, match=r"revisions.json: row 0: key must be"):
        RevisionCopy(path, RowRevisions()).hold()
    blocked = RevisionCopy(tmp_path / "file" / "revisions.json", RowRevisions())
    (tmp_path / "file").write_text("not a directory")
    blocked.revisions.advance(AGENTS, "bot", 1)
    await blocked.save()  # logged, not raised
    assert blocked.writes == 0
    assert "cannot write the row revisions file" in caplog.text
