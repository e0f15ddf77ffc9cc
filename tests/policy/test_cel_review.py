"""Adversarial review of ``when`` conditions over time (spec 6).

CEL reads a timestamp's fields (``getHours()``, ``getDayOfWeek()``...) in UTC unless given a
time zone. Before the fix the ``cel`` engine read them in the offset the request's ``time`` was
written with: ``10:00:00+05:00`` (05:00 UTC) passed ``getHours() >= 9`` and missed a night-time
deny rule on ``getHours() < 6``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import policies, request

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HOURS = policies(
    """
    rules:
      - id: office-hours
        effect: allow
        mcp: {tools: ["*"]}
        when: "time.getHours() >= 9 && time.getHours() < 17"
      - id: no-drop-at-night
        effect: deny
        mcp: {tools: [drop]}
        when: "time.getHours() < 6"
      - id: weekdays
        effect: allow
        mcp: {tools: [report]}
        when: "time.getDayOfWeek() >= 1 && time.getDayOfWeek() <= 5"
    """
)


def decide(tool: str, time: str) -> tuple[str, str | None]:
    d = HOURS.decide(request("mcp", {"tool": tool}, time=time))
    return d.decision, d.rule


@pytest.mark.parametrize(
    ("time", "expected"),
    [
        ("2026-11-30T10:00:00Z", ("allow", "office-hours")),
        ("2026-11-30T10:00:00+05:00", ("deny", "no-drop-at-night")),  # 05:00 UTC
        ("2026-11-30T03:00:00-08:00", ("allow", "office-hours")),  # 11:00 UTC
        ("2026-11-30T00:30:00+01:00", ("deny", None)),  # 23:30 UTC the day before
        ("2026-11-30T23:30:00-03:00", ("deny", "no-drop-at-night")),  # 02:30 UTC the day after
    ],
)
def test_time_fields_are_read_in_utc(time: str, expected: tuple[str, str | None]) -> None:
    assert decide("drop", time) == expected


def test_day_of_week_is_read_in_utc() -> None:
    # Monday 00:30 at +02:00 is Sunday 22:30 UTC
    assert decide("report", "2026-11-30T00:30:00+02:00") == ("deny", None)
    assert decide("report", "2026-11-30T00:30:00Z") == ("allow", "weekdays")


@SETTINGS
@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
    st.sampled_from(["drop", "read", "report"]),
)
def test_the_offset_a_time_is_written_in_never_changes_the_decision(
    moment: datetime, offset_minutes: int, tool: str
) -> None:
    instant = moment.replace(tzinfo=UTC)
    zone = timezone(timedelta(minutes=offset_minutes))
    in_utc = instant.isoformat().replace("+00:00", "Z")
    elsewhere = instant.astimezone(zone).isoformat()
    assert decide(tool, in_utc) == decide(tool, elsewhere), (in_utc, elsewhere)
