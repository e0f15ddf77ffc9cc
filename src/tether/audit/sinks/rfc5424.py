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

**Size.** A whole message is at most ``max_message_bytes`` octets (8096 by default,
rsyslog's default ``maxMessageSize``). An event too large for it is sent shrunk, never cut
by the receiver: :func:`shrink_ocsf` shortens its longest strings (each cut one ending in
``...``) until the JSON fits, and marks it (``unmapped.tether.truncated``, the original
size, and ``truncated="true"`` in the structured data). Why it matters: a receiver cuts an
oversized message wherever its limit falls (invalid JSON in the SIEM), and rsyslog, given a
frame larger than its ``maxFrameSize`` (200000), stops counting octets and splits the rest
of the connection on newlines, which merges the following messages and lets a newline in a
later value start a forged one. An agent controls the size of its commands and statements,
so it must not control the framing.

Framing (RFC 6587 section 3.4.1): ``MSG-LEN SP SYSLOG-MSG``, MSG-LEN being the message's
length in octets. Unlike newline framing it cannot be broken by a newline inside a value,
so an agent cannot forge a second syslog message by putting a newline in a path or a
command. For the same reason every header field is checked or cleaned here: a header
field holds printable US-ASCII only, and SD parameter values escape ``"``, ``\\`` and ``]``,
write control characters (a newline, a NUL, C1 controls) as ``\\xNN`` text, and are cut
to :data:`SD_VALUE_MAX_BYTES` (ending in ``...``): no receiver that splits or displays lines
sees a line break an agent put in a target or agent name. The exact values are in MSG.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

NILVALUE: Final = "-"
DEFAULT_MAX_MESSAGE_BYTES: Final = 8096  # rsyslog's default maxMessageSize
MIN_MAX_MESSAGE_BYTES: Final = 2048  # RFC 5424 section 6.1: every receiver takes this much
SD_VALUE_MAX_BYTES: Final = 128
TRUNCATION_MARK: Final = "..."
# OCSF severity_id -> syslog severity (0 emergency ... 7 debug).
SYSLOG_SEVERITY: Final = {0: 6, 1: 6, 2: 5, 3: 4, 4: 3, 5: 2, 6: 1, 99: 5}
_NOT_PRINTABLE: Final = re.compile(r"[^!-~]")
_SD_PLAIN: Final = re.compile(r"[ !#-\[^-~]*")  # printable ASCII without " \\ ]
# Control characters, the line separators, and lone surrogates (a JSON "\\ud800" in an event:
# no UTF-8 encodes one), each written as text.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


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


def escape_param_value(value: str, max_bytes: int = SD_VALUE_MAX_BYTES) -> str:
    """An SD PARAM-VALUE: ``"``, ``\\`` and ``]`` escaped with a backslash, control
    characters and lone surrogates written as ``\\xNN`` (``\\uNNNN`` above U+00FF), at
    most ``max_bytes`` octets of UTF-8, cut between characters and ending in ``...`` when
    cut."""
    if len(value) <= max_bytes and _SD_PLAIN.fullmatch(value):
        return value  # the common case: short printable ASCII, nothing to escape
    # Every character takes at least one octet: past max_bytes + 1 of them it is cut anyway.
    pieces = [_sd_piece(char) for char in value[: max_bytes + 1]]
    sizes = [len(piece.encode("utf-8")) for piece in pieces]
    if sum(sizes) <= max_bytes:
        return "".join(pieces)
    room, kept = max_bytes - len(TRUNCATION_MARK), 0
    for size in sizes:
        if size > room:
            break
        room -= size
        kept += 1
    return "".join(pieces[:kept]) + TRUNCATION_MARK


def _sd_piece(char: str) -> str:
    if char in '"\\]':
        return "\\" + char
    if _CONTROL.match(char):
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


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


def shrink_ocsf(ocsf: Mapping[str, Any], budget: int) -> str:
    """The MSG of an event whose JSON is longer than ``budget`` octets, made to fit.

    The event is marked (``unmapped.tether.truncated``, ``original_bytes``), then every
    string longer than a limit is cut to it and ends in ``...``: the largest limit that fits,
    found by bisection, so short values (ids, names, the class) stay whole and only the long
    ones (a command, a statement, a path) are shortened. If no limit fits, ``action`` and
    ``detail`` are left out of ``unmapped.tether`` too; if that does not fit either, only the
    event's identity is sent (class, time, ``metadata``): the SIEM still learns the event
    exists and which one to look up in Tether.
    """
    original = len(ocsf_message(ocsf))
    marked = _marked(ocsf, original)
    trimmed = _marked(ocsf, original, drop=("action", "detail"))
    for candidate in (marked, trimmed):
        if len(_cut_message(candidate, 0)) > budget:
            continue
        # Cut at ``low`` fits; find the largest. No string longer than the budget can fit,
        # so every trial dumps at most that much of each string (not a 300 kB command).
        low, high = 0, min(_longest_string(candidate), budget)
        while low < high:
            middle = (low + high + 1) // 2
            if len(_cut_message(candidate, middle)) <= budget:
                low = middle
            else:
                high = middle - 1
        return _cut_message(candidate, low)
    return _cut_message(_identity(ocsf, original), 64)


def _cut_message(ocsf: Mapping[str, Any], limit: int) -> str:
    """The JSON of ``ocsf`` with its strings cut at ``limit``, but for the event's identity
    (``metadata.uid``, ``version``, ``product``), kept whole."""
    cut = _cut_strings(ocsf, limit)
    metadata = ocsf.get("metadata")
    if isinstance(metadata, Mapping):
        kept = {key: metadata[key] for key in ("uid", "version", "product") if key in metadata}
        cut["metadata"] = {**cut["metadata"], **kept}
    return ocsf_message(cut)


def _marked(ocsf: Mapping[str, Any], original: int, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    unmapped = dict(ocsf.get("unmapped") or {})
    tether = {k: v for k, v in dict(unmapped.get("tether") or {}).items() if k not in drop}
    tether["truncated"] = True
    tether["original_bytes"] = original
    unmapped["tether"] = tether
    return {**ocsf, "unmapped": unmapped}


def _identity(ocsf: Mapping[str, Any], original: int) -> dict[str, Any]:
    kept = ("category_uid", "class_uid", "activity_id", "type_uid", "severity_id", "status_id",
            "time")  # fmt: skip
    metadata = ocsf.get("metadata") or {}
    return {
        **{key: ocsf[key] for key in kept if key in ocsf},
        "metadata": {
            k: metadata[k] for k in ("uid", "sequence", "version", "product") if k in metadata
        },
        "unmapped": {"tether": {"truncated": True, "original_bytes": original}},
    }


def _cut_strings(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + TRUNCATION_MARK
    if isinstance(value, Mapping):
        return {key: _cut_strings(item, limit) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_cut_strings(item, limit) for item in value]
    return value


def _longest_string(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return max((_longest_string(item) for item in value.values()), default=0)
    if isinstance(value, list | tuple):
        return max((_longest_string(item) for item in value), default=0)
    return 0
