"""Time bounds of a search: an RFC 3339 time, a date, or a time relative to now.

Accepted (``parse_time_spec``):

* RFC 3339 with an offset: ``2026-11-29T10:00:00Z``, ``2026-11-29T10:00:00.5+02:00``
  (``T`` or a space between date and time; fractions of any length up to microseconds);
* a date alone, meaning its midnight UTC: ``2026-11-29``;
* a duration before now: digits and a unit, repeated, units ``s``, ``m``, ``h``, ``d``,
  ``w`` (``90s``, ``15m``, ``1h30m``, ``2d``), optionally followed by `` ago``.

Anything else is refused with a message that shows the accepted forms. A time without an
offset is refused rather than guessed (the server's zone and the reader's may differ).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RELATIVE: Final = re.compile(r"((?:[0-9]{1,9}[smhdw])+)(?: ago)?")
_PART: Final = re.compile(r"([0-9]+)([smhdw])")
_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
MAX_RELATIVE: Final = timedelta(days=366 * 100)
FORMS: Final = "an RFC 3339 time with offset (2026-11-29T10:00:00Z), a date, or 15m/2h/1d"


class TimeSpecError(ValueError):
    """Not a time this module accepts; the message names the accepted forms."""


def parse_time_spec(text: str, now: datetime) -> datetime:
    """The aware UTC time ``text`` means, relative ones counted back from ``now``."""
    value = text.strip()
    relative = _RELATIVE.fullmatch(value)
    if relative is not None:
        try:
            return now.astimezone(UTC) - _duration(relative.group(1), text)
        except OverflowError:
            raise TimeSpecError(f"{text!r} reaches back before year 1") from None
    if _DATE.fullmatch(value):
        return _iso(value + "T00:00:00+00:00", text)
    if _RFC3339.fullmatch(value):
        return _iso(value.replace("z", "Z").replace("t", "T"), text)
    raise TimeSpecError(f"{text!r} is not a time: expected {FORMS}")


def _duration(parts: str, text: str) -> timedelta:
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(parts))
    if seconds > MAX_RELATIVE.total_seconds():
        raise TimeSpecError(f"{text!r} reaches back more than a hundred years")
    return timedelta(seconds=seconds)


def _iso(value: str, text: str) -> datetime:
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except ValueError as error:
        raise TimeSpecError(f"{text!r} is not a valid time: {error}") from None
    except OverflowError:
        raise TimeSpecError(f"{text!r} is out of the range of times") from None
