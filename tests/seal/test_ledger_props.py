"""The revocation ledger's checks (tether.store.revocation_ledger), as properties: the rows
Tether recorded always match their ledger, in any order and however they were polled; any
row deleted, changed or added, and any change to the ledger's values, never matches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tether.crypto.masterkey import MasterKey
from tether.crypto.seal import RowSealer
from tether.store import revocation_ledger as rl

SEALER = RowSealer(MasterKey(bytes(range(32)), source="test"))
T0 = datetime(2026, 11, 30, tzinfo=UTC)

_rows = st.lists(
    st.fixed_dictionaries(
        {
            "kind": st.sampled_from(["token", "agent", "task", "runtime"]),
            "value": st.text(min_size=1, max_size=12),
            "reason": st.text(max_size=8),
            "revoked_by": st.sampled_from(["admin", "alice"]),
            "revoked_at": st.integers(0, 10**6).map(lambda s: T0 + timedelta(seconds=s)),
            "expires_at": st.one_of(
                st.none(), st.integers(0, 10**6).map(lambda s: T0 + timedelta(seconds=s))
            ),
        }
    ),
    max_size=12,
    unique_by=lambda row: (row["kind"], row["value"]),  # the table's unique key
)


def _recorded(rows: list[dict[str, Any]]) -> rl.Ledger:
    """The ledger after recording ``rows`` one by one, as insert_revocation does."""
    held = rl.Ledger()
    for row in rows:
        held = held.recorded(rl.tag(SEALER, row), 1)
    return held


def _sealed_row(held: rl.Ledger) -> dict[str, Any]:
    return {**held.columns(), "seal": SEALER.seal(rl.LEDGER, held.columns())}


@settings(max_examples=200, deadline=None)
@given(_rows, st.randoms(use_true_random=False), st.integers(0, 12))
def test_what_tether_recorded_always_matches(
    rows: list[dict[str, Any]], rnd: Any, split: int
) -> None:
    held = _recorded(rows)
    assert rl.verified(SEALER, _sealed_row(held)) == held
    shuffled = rows[:]
    rnd.shuffle(shuffled)
    assert rl.matches(SEALER, held, shuffled)  # the order rows are read in does not count
    seen = min(split, len(rows))
    assert rl.continues(SEALER, _recorded(rows[:seen]), rows[seen:], held)
    # A prune of any subset keeps the rest matching.
    pruned = [row for row in rows if rnd.random() < 0.5]
    digest, count = rl.tags(SEALER, pruned)
    after = held.pruning(digest, count)
    assert rl.matches(SEALER, after, [row for row in rows if row not in pruned])


@settings(max_examples=300, deadline=None)
@given(
    _rows.filter(bool),
    st.data(),
    st.sampled_from(["delete", "change", "add", "duplicate"]),
)
def test_any_change_to_the_rows_never_matches(
    rows: list[dict[str, Any]], data: st.DataObject, change: str
) -> None:
    held = _recorded(rows)
    present = [dict(row) for row in rows]
    index = data.draw(st.integers(0, len(present) - 1))
    if change == "delete":
        doomed = data.draw(st.sets(st.integers(0, len(present) - 1), min_size=1))
        present = [row for n, row in enumerate(present) if n not in doomed]
    elif change == "change":
        column = data.draw(st.sampled_from(rl.TAGGED))
        value = data.draw(st.one_of(st.none(), st.text(max_size=8)))
        if present[index][column] == value:
            value = f"{value}!"
        present[index][column] = value
    elif change == "add":
        present.append({**present[index], "value": present[index]["value"] + "+"})
    else:  # the same row twice (another id): one more than was recorded
        present.append(dict(present[index]))
    assert not rl.matches(SEALER, held, present)
    assert not rl.continues(SEALER, rl.Ledger(), present, held)


@settings(max_examples=200, deadline=None)
@given(_rows, st.sampled_from(["entries", "digest", "pruned", "pruned_digest"]), st.data())
def test_a_ledger_changed_without_the_key_never_verifies(
    rows: list[dict[str, Any]], column: str, data: st.DataObject
) -> None:
    row = _sealed_row(_recorded(rows))
    if column in ("entries", "pruned"):
        row[column] = row[column] + data.draw(st.integers(1, 5))
    else:
        current = row[column]
        other = st.binary(min_size=32, max_size=32).map(bytes.hex).filter(lambda v: v != current)
        row[column] = data.draw(other)  # another digest (an unchanged one is no change)
    assert isinstance(rl.verified(SEALER, row), str)
    other = RowSealer(MasterKey(bytes(range(1, 33)), source="test"))  # another master key
    assert isinstance(rl.verified(other, _sealed_row(_recorded(rows))), str)
    assert rl.verified(SEALER, None) == rl.MISSING
    assert rl.verified(SEALER, {**row, "digest": "not hex"}) == rl.UNSEALED
