"""RFC 5424 syslog messages and RFC 6587 octet-counting frames, as bytes (no I/O).

One audit event becomes::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ID seq=".." agent=".." ...] MSG

* PRI = facility * 8 + severity, the severity from the OCSF ``severity_id``
  (:data:`SYSLOG_SEVERITY`: Informational is 6 "info", Medium 4 "warning", ...).
* TIMESTAMP is the event's time (RFC 3339, UTC, microseconds); MSGID is the event kind.
* STRUCTURED-DATA has one element ``[<sd_id> ...]`` (``tether@32473`` by default: 32473 is
  the enterprise number RFC 5612 reserves for examples; use your own) with ``seq``,
  ``id``, ``agent``, ``decision``, ``session`` and ``target`` where the event has them.
* MSG is the OCSF JSON, ASCII only (non-ASCII characters are ``\\u`` escaped), so the
  message is plain MSG-ANY and needs no BOM.

Framing (RFC 6587 section 3.4.1): ``MSG-LEN SP SYSLOG-MSG``, MSG-LEN being the message's
length in octets. Unlike newline framing it cannot be broken by a newline inside a value,
so an agent cannot forge a second syslog message by putting a newline in a path or a
command. For the same reason every header field is checked or cleaned here: a header
field holds printable US-ASCII only, and SD parameter values escape ``"``, ``\\`` and ``]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

NILVALUE: Final = "-"
# OCSF severity_id -> syslog severity (0 emergency ... 7 debug).
SYSLOG_SEVERITY: Final = {0: 6, 1: 6, 2: 5, 3: 4, 4: 3, 5: 2, 6: 1, 99: 5}
_NOT_PRINTABLE: Final = re.compile(r"[^!-~]")
_SD_ESCAPE: Final = re.compile(r'(["\\\]])')


def pri(facility: int, severity: int) -> int:
    if not (0 <= facility <= 23 and 0 <= severity <= 7):
        raise ValueError("facility must be 0..23 and severity 0..7")
    return facility * 8 + severity


def header_field(value: str | None, max_len: int) -> str:
    """A header field: printable US-ASCII, at most ``max_len`` octets, ``-`` when empty."""
    if not value:
        return NILVALUE
    cleaned = _NOT_PRINTABLE.sub("_", value)[:max_len]
    return cleaned or NILVALUE


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, as RFC 5424 allows (``2026-11-29T12:00:00.000123Z``)."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond:06d}Z"


def escape_param_value(value: str) -> str:
    """An SD PARAM-VALUE: ``"``, ``\\`` and ``]`` escaped with a backslash."""
    return _SD_ESCAPE.sub(r"\\\1", value)


def structured_data(sd_id: str, params: Mapping[str, str | int | None]) -> str:
    """One SD-ELEMENT, parameters in the given order, None values left out."""
    parts = [sd_id]
    for name, value in params.items():
        if value is not None:
            parts.append(f'{name}="{escape_param_value(str(value))}"')
    return "[" + " ".join(parts) + "]"


def format_message(
    *,
    facility: int,
    severity: int,
    time: datetime,
    hostname: str | None,
    app_name: str,
    procid: str | None,
    msgid: str,
    sd: str,
    msg: str,
) -> bytes:
    """A SYSLOG-MSG (RFC 5424 section 6) as bytes."""
    head = " ".join(
        (
            f"<{pri(facility, severity)}>1",
            timestamp(time),
            header_field(hostname, 255),
            header_field(app_name, 48),
            header_field(procid, 128),
            header_field(msgid, 32),
            sd or NILVALUE,
        )
    )
    return f"{head} {msg}".encode() if msg else head.encode()


def frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return f"{len(message)} ".encode("ascii") + message


def ocsf_message(ocsf: Mapping[str, Any]) -> str:
    """The MSG part: compact OCSF JSON, ASCII only."""
    return json.dumps(ocsf, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
