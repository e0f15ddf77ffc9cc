"""Row seals (tether.crypto.seal): the encoding is injective and every column counts."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.crypto.masterkey import MasterKey
from tether.crypto.seal import RowSealer, SealEncodingError, canonical

KEY = MasterKey(bytes(range(32)), source="test")
SEALER = RowSealer(KEY)

_times = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9998, 1, 1), timezones=st.just(UTC)
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.binary(max_size=16),
    _times,
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_rows = st.dictionaries(st.text(max_size=8), _values, max_size=5)


def _strict(value: Any) -> Any:
    """A normal form where values are equal only if they are the same type and value."""
    if isinstance(value, dict):
        return ("map", tuple(sorted((k, _strict(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("list", tuple(_strict(v) for v in value))
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, datetime):
        return ("time", value.isoformat())
    return (type(value).__name__, value)


@given(table_a=st.text(max_size=8), a=_rows, table_b=st.text(max_size=8), b=_rows)
@settings(max_examples=400)
def test_encoding_is_injective(
    table_a: str, a: dict[str, Any], table_b: str, b: dict[str, Any]
) -> None:
    same_input = table_a == table_b and _strict(a) == _strict(b)
    assert (canonical(table_a, a) == canonical(table_b, b)) == same_input


@given(row=_rows, data=st.data())
@settings(max_examples=300)
def test_any_change_to_a_sealed_column_changes_the_seal(
    row: dict[str, Any], data: st.DataObject
) -> None:
    seal = SEALER.seal("targets", row)
    assert SEALER.verify("targets", row, seal)
    if row:
        column = data.draw(st.sampled_from(sorted(row)))
        other = data.draw(_values.filter(lambda v: _strict(v) != _strict(row[column])))
        changed = {**row, column: other}
        assert not SEALER.verify("targets", changed, seal)
        dropped = {k: v for k, v in row.items() if k != column}
        assert not SEALER.verify("targets", dropped, seal)
    extra = data.draw(st.text(max_size=8).filter(lambda name: name not in row))
    assert not SEALER.verify("targets", {**row, extra: None}, seal)
    assert not SEALER.verify("admin_tokens", row, seal)


def test_confusable_values_seal_apart() -> None:
    rows: list[dict[str, Any]] = [
        {"a": 1}, {"a": True}, {"a": "1"}, {"a": 1.0}, {"a": None}, {}, {"a": "null"},
        {"a": [1]}, {"a": {"0": 1}}, {"a": b"1"}, {"a": "31"}, {"a": ["a", "b"]},
        {"a": ["a,b"]}, {"a": "", "b": ""}, {"a,b": ""},
    ]  # fmt: skip
    assert len({SEALER.seal("t", row) for row in rows}) == len(rows)


def test_another_master_key_does_not_verify() -> None:
    row = {"name": "billing", "spec": {"base_url": "https://billing.example"}}
    other = RowSealer(MasterKey(secrets.token_bytes(32), source="other"))
    assert not other.verify("targets", row, SEALER.seal("targets", row))


def test_times_seal_by_instant() -> None:
    when = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    paris = when.astimezone(timezone(timedelta(hours=1)))
    assert SEALER.seal("t", {"at": when}) == SEALER.seal("t", {"at": paris})
    with pytest.raises(SealEncodingError):
        SEALER.seal("t", {"at": datetime(2026, 11, 30)})


@pytest.mark.parametrize("stored", [None, "", 42, b"x" * 43, "é" * 43, "\udcff"])
def test_a_missing_or_foreign_seal_does_not_verify(stored: object) -> None:
    assert not SEALER.verify("targets", {"name": "x"}, stored)


def test_a_value_without_encoding_does_not_verify() -> None:
    assert not SEALER.verify("t", {"x": float("nan")}, "A" * 43)
    assert repr(SEALER) == "RowSealer()"
