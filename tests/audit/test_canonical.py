"""The canonical form: the writer's spliced text is exactly the documented encoding, for any
event; times and hashes are as documented; events read back hash the same."""

from __future__ import annotations

import hashlib
import json
import marshal
import string
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from tether.audit.canonical import (
    GENESIS,
    canonical_bytes,
    checkpoint_statement,
    encode,
    event_columns,
    event_document,
    event_from_json,
    event_hash,
    event_json,
    format_time,
)
from tether.audit.chain_text import chain_hashes, event_text
from tether.audit.events import KINDS, AuditEvent

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
optional_texts = st.none() | texts
counts = st.none() | st.integers(0, 2**63 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | texts
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=10,
)  # fmt: skip
events = st.builds(
    AuditEvent,
    kind=st.sampled_from(sorted(KINDS)),
    time=st.datetimes(min_value=datetime(1, 1, 2), timezones=st.just(UTC)),
    agent=optional_texts, runtime=optional_texts, task=optional_texts, user=optional_texts,
    actor_chain=st.lists(texts, max_size=3).map(tuple),
    target=optional_texts, decision=optional_texts, rule=optional_texts, reason=optional_texts,
    policy_version=optional_texts, session_id=optional_texts, source_ip=optional_texts,
    bytes_in=counts, bytes_out=counts, rows=counts,
    duration_ms=st.none() | st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    action=st.dictionaries(texts, json_values, max_size=4),
    detail=st.dictionaries(texts, json_values, max_size=3),
)  # fmt: skip


@settings(max_examples=400)
@given(
    event=events,
    seq=st.integers(1, 2**62),
    prev=st.text(string.hexdigits, min_size=64, max_size=64),
)
def test_the_spliced_text_is_the_canonical_encoding(event: AuditEvent, seq: int, prev: str) -> None:
    expected = encode(event_document(event, seq, prev))
    assert event_text(event_columns(event), seq, prev) == expected
    # The writer process gets the columns through marshal: the same text from them.
    columns = marshal.loads(marshal.dumps(event_columns(event)))
    assert event_text(columns, seq, prev) == expected
    assert chain_hashes([columns], seq - 1, prev) == [event_hash(event, seq, prev)]
    assert canonical_bytes(event, seq, prev) == expected.encode("utf-8")
    # Sorted keys, no whitespace outside strings, and parseable back to the same values.
    parsed = json.loads(expected)
    assert list(parsed) == sorted(parsed)
    assert parsed["seq"] == seq and parsed["prev_hash"] == prev and parsed["v"] == 1


@given(event=events)
def test_an_event_survives_its_json_form_with_the_same_hash(event: AuditEvent) -> None:
    chained = event.chained(7, GENESIS, event_hash(event, 7, GENESIS))
    again = event_from_json(json.loads(json.dumps(event_json(chained))))
    assert again == chained
    assert event_hash(again, 7, GENESIS) == chained.hash


def test_a_known_event_has_a_known_hash() -> None:
    """Pinned, so any change to the canonical form is a deliberate one (a format version)."""
    event = AuditEvent(
        id="0" * 32, kind="decision", time=datetime(2026, 11, 29, 10, 0, tzinfo=UTC),
        agent="bot", action={"b": 1, "a": [True, None, 1.5, "é"]}, duration_ms=2,
    )  # fmt: skip
    text = canonical_bytes(event, 1, GENESIS).decode()
    assert text == (
        '{"action":{"a":[true,null,1.5,"é"],"b":1},"actor_chain":[],"agent":"bot",'
        '"bytes_in":null,"bytes_out":null,"decision":null,"detail":{},"duration_ms":2.0,'
        '"id":"00000000000000000000000000000000","kind":"decision","policy_version":null,'
        f'"prev_hash":"{GENESIS}","reason":null,"rows":null,"rule":null,"runtime":null,'
        '"seq":1,"session_id":null,"source_ip":null,"target":null,"task":null,'
        '"time":"2026-11-29T10:00:00.000000Z","user":null,"v":1}'
    )
    assert event_hash(event, 1, GENESIS) == hashlib.sha256(text.encode()).hexdigest()
    assert checkpoint_statement(5, "ab", datetime(2026, 1, 1, tzinfo=UTC)) == (
        b'{"hash":"ab","seq":5,"time":"2026-01-01T00:00:00.000000Z"}'
    )
    assert (
        format_time(datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000001Z"
    )


def _rfc3339(moment: datetime) -> str:
    u = moment.astimezone(UTC)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
        f".{u.microsecond:06d}Z"
    )


@given(
    first=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    steps=st.lists(st.integers(-3_000_000, 3_000_000), max_size=12),
    offsets=st.lists(st.integers(-23 * 60, 23 * 60), min_size=1, max_size=4),
)
def test_format_time_is_rfc3339_utc_whatever_came_before(
    first: datetime, steps: list[int], offsets: list[int]
) -> None:
    """Times within a second of each other and far apart, in any order and any offset: the
    last-second cache never hands one time another second's text."""
    moment = first.replace(tzinfo=UTC)
    for i, step in enumerate([0, *steps]):
        moment += timedelta(microseconds=step)
        zone = timezone(timedelta(minutes=offsets[i % len(offsets)]))
        local = moment.astimezone(zone)
        assert format_time(local) == format_time(moment) == _rfc3339(moment)
