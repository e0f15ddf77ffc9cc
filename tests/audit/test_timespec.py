"""The time bounds parser of search: every accepted form, and nothing else, never a crash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.audit.canonical import format_time
from tether.audit.timespec import TimeSpecError, parse_time_spec

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-29T10:00:00Z", datetime(2026, 11, 29, 10, 0, tzinfo=UTC)),
        ("2026-11-29 10:00:00.5+02:00", datetime(2026, 11, 29, 8, 0, 0, 500000, tzinfo=UTC)),
        ("2026-11-29t10:00:00z", datetime(2026, 11, 29, 10, 0, tzinfo=UTC)),
        ("2026-11-28", datetime(2026, 11, 28, tzinfo=UTC)),
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("1h30m", NOW - timedelta(minutes=90)),
        ("2d ago", NOW - timedelta(days=2)),
        (" 1w ", NOW - timedelta(weeks=1)),
    ],
)
def test_accepted_forms(text: str, expected: datetime) -> None:
    assert parse_time_spec(text, NOW) == expected


@pytest.mark.parametrize(
    "text",
    ["", "yesterday", "2026-11-29T10:00:00", "10:00", "1x", "-1h", "h", "2026-13-01",
     "2026-02-30T00:00:00Z", "1e3s", "0001-01-01T00:00:00+01:00", "99999999w"],
)  # fmt: skip
def test_refused_forms_say_what_is_accepted(text: str) -> None:
    with pytest.raises(TimeSpecError, match=r"is not a time|not a valid time|range|back"):
        parse_time_spec(text, NOW)


@given(st.text(max_size=40))
def test_any_text_is_a_utc_time_or_a_clear_refusal(text: str) -> None:
    try:
        moment = parse_time_spec(text, NOW)
    except TimeSpecError as error:
        assert repr(text) in str(error)
    else:
        assert moment.tzinfo is UTC


@given(st.datetimes(min_value=datetime(2, 1, 1), timezones=st.just(UTC)))
def test_every_rfc3339_time_we_print_parses_back(moment: datetime) -> None:
    assert parse_time_spec(format_time(moment), NOW) == moment


@given(
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 1, 1)),
    st.integers(-23 * 60, 23 * 60),
)
def test_any_offset_means_the_same_instant(moment: datetime, minutes: int) -> None:
    zone = timezone(timedelta(minutes=minutes))
    local = moment.replace(tzinfo=zone)
    text = local.isoformat(timespec="microseconds")
    assert parse_time_spec(text, NOW) == local.astimezone(UTC)


@given(st.lists(st.tuples(st.integers(0, 999), st.sampled_from("smhdw")), min_size=1, max_size=4))
def test_relative_times_count_back_from_now(parts: list[tuple[int, str]]) -> None:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = "".join(f"{n}{u}" for n, u in parts)
    seconds = sum(n * units[u] for n, u in parts)
    assert parse_time_spec(text, NOW) == NOW - timedelta(seconds=seconds)
