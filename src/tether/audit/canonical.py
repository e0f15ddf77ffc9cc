"""The canonical serialisation of an audit event, its hash, and the checkpoint statement.

Hash chain (format version 1)::

    hash(event) = lowercase hex SHA-256 of canonical_bytes(event)

``canonical_bytes`` is the UTF-8 encoding of one JSON object holding every field of
:class:`~tether.audit.events.AuditEvent` except ``hash`` itself, plus ``"v": 1``:

* ``seq`` (integer), ``prev_hash`` (the previous event's ``hash``; for ``seq`` 1 the
  genesis value :data:`GENESIS`, 64 zeros), and every other field by its name;
* object keys sorted by Unicode code point, at every depth; no whitespace at all
  (separators ``,`` and ``:``);
* strings as JSON strings, non-ASCII characters written as themselves (UTF-8), ``"`` and
  ``\\`` escaped, control characters as ``\\n``, ``\\r``, ``\\t``, ``\\b``, ``\\f`` or
  ``\\u00XX`` (lowercase hex);
* integers in decimal; floats (``duration_ms`` and any inside ``action``/``detail``) in
  the shortest form that reads back to the same IEEE 754 double, with a ``.0`` or an
  exponent (``e+XX``/``e-XX``) as Python's ``repr`` writes it; NaN and infinities are
  never present (events refuse them);
* ``time`` as RFC 3339 UTC with exactly six fractional digits and ``Z``:
  ``2026-11-29T10:00:00.000000Z``;
* absent values as ``null``; ``actor_chain`` as an array of strings; ``action`` and
  ``detail`` as objects.

Because ``prev_hash`` is inside what is hashed, changing, removing, inserting or moving
one event changes the hash its successor should hold, and ``tether audit verify`` finds
the first place the chain breaks.

Checkpoint statement: the UTF-8 bytes of ``{"hash":H,"seq":N,"time":T}`` in the same
canonical form, where H is the hash of event N and T the checkpoint's own time (RFC 3339
as above). Tether signs it with Ed25519 (:mod:`tether.audit.checkpoints`).

Python's ``json`` module with ``sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False`` produces exactly this form; an independent verifier
in another language needs only the rules above.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

# The format's constants, defined once where the writer process can import them; re-exported.
from tether.audit.chain_text import FORMAT_VERSION as FORMAT_VERSION
from tether.audit.chain_text import GENESIS as GENESIS
from tether.audit.events import AuditEvent

# The C string encoder the json module uses with ensure_ascii=False: the same escapes.
_encode_string: Final = json.encoder.encode_basestring

# Canonical JSON text of a value (see above); UTF-8 encode it for the bytes.
encode: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def _not_json(value: object) -> Any:
    raise TypeError(f"a {type(value).__name__} is not a JSON value")


# The json module's C encoder with exactly :data:`encode`'s options, made once: ``encode``
# builds one per call. No circularity check: event values are trees copied when the event
# was built (:func:`tether.audit.events.frozen_json`), they cannot hold a cycle.
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_encode_chunks: Final[Any] = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(None, _not_json, _encode_string, None, ":", ",", True, False, False)
)


def encode_value(value: Any) -> str:
    """:data:`encode`'s text of ``value``, through the prebuilt C encoder when there is one."""
    if _encode_chunks is None:
        return encode(value)
    return "".join(_encode_chunks(value, 0))


# The last whole second formatted: its fields (second first, the one that changes) and its
# text up to the seconds. Events come in time order, so most share the previous one's
# second: a hit costs a tuple compare instead of ``isoformat`` (measured 1.5 against 3.1 µs
# a call). One tuple, swapped whole: safe to read and replace from any thread.
_last_second: tuple[tuple[int, ...], str] = ((), "")


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and ``Z``: ``2026-11-29T10:00:00.000000Z``."""
    global _last_second
    utc = moment.astimezone(UTC) if moment.tzinfo is not UTC else moment
    key = (utc.second, utc.minute, utc.hour, utc.day, utc.month, utc.year)
    known, text = _last_second
    if key != known:
        text = utc.replace(microsecond=0).isoformat()[:-6]  # drops "+00:00"
        _last_second = (key, text)
    return f"{text}.{utc.microsecond:06d}Z"


def parse_time(text: str) -> datetime:
    """The inverse of :func:`format_time` (any RFC 3339 offset accepted); ``ValueError``."""
    moment = datetime.fromisoformat(text.replace("z", "Z"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return moment.astimezone(UTC)


def json_text(value: Mapping[str, Any] | list[Any] | tuple[Any, ...]) -> str:
    """``value`` as canonical JSON text (sorted keys, no whitespace)."""
    return encode_value(value)


def event_document(event: AuditEvent, seq: int, prev_hash: str) -> dict[str, Any]:
    """The object whose canonical bytes are hashed (every field but ``hash``)."""
    return {
        "v": FORMAT_VERSION,
        "seq": seq,
        "id": event.id,
        "time": format_time(event.time),
        "kind": event.kind,
        "agent": event.agent,
        "runtime": event.runtime,
        "task": event.task,
        "user": event.user,
        "actor_chain": event.actor_chain,
        "target": event.target,
        "action": event.action,
        "decision": event.decision,
        "rule": event.rule,
        "reason": event.reason,
        "policy_version": event.policy_version,
        "session_id": event.session_id,
        "source_ip": event.source_ip,
        "bytes_in": event.bytes_in,
        "bytes_out": event.bytes_out,
        "rows": event.rows,
        "duration_ms": event.duration_ms,
        "detail": event.detail,
        "prev_hash": prev_hash,
    }


def event_columns(event: AuditEvent) -> tuple[Any, ...]:
    """The columns :func:`tether.audit.chain_text.event_text` makes ``event``'s canonical
    text from (the order of :data:`tether.audit.chain_text.COLUMN_NAMES`): the row without
    ``seq`` and the hashes, ``time`` as RFC 3339 text (tests prove the text equal to the
    encoder's). Made once per event, on the appending task."""
    e = event
    return (
        e.id, format_time(e.time), e.kind, e.agent, e.runtime, e.task, e.user,
        encode_value(e.actor_chain) if e.actor_chain else "[]", e.target,
        encode_value(e.action) if e.action else "{}", e.decision, e.rule, e.reason,
        e.policy_version, e.session_id, e.source_ip, e.bytes_in, e.bytes_out, e.rows,
        e.duration_ms, encode_value(e.detail) if e.detail else "{}",
    )  # fmt: skip


def canonical_bytes(event: AuditEvent, seq: int, prev_hash: str) -> bytes:
    """The exact bytes hashed for ``event`` at position ``seq`` after ``prev_hash``."""
    return encode(event_document(event, seq, prev_hash)).encode("utf-8")


def event_hash(event: AuditEvent, seq: int, prev_hash: str) -> str:
    """The chain hash of ``event`` at ``seq`` after ``prev_hash``: hex SHA-256."""
    return hashlib.sha256(canonical_bytes(event, seq, prev_hash)).hexdigest()


def stored_hash(event: AuditEvent) -> str:
    """The hash ``event`` should carry, from its own ``seq`` and ``prev_hash``."""
    if event.seq is None or event.prev_hash is None:
        raise ValueError("the event has no place in the chain yet")
    return event_hash(event, event.seq, event.prev_hash)


def checkpoint_statement(seq: int, hash: str, time: datetime) -> bytes:
    """The bytes a checkpoint signs: ``{"hash":..,"seq":..,"time":..}``, canonical."""
    return encode({"hash": hash, "seq": seq, "time": format_time(time)}).encode("utf-8")


def prune_statement(seq: int, hash: str, time: datetime, archive_sha256: str, events: int) -> bytes:
    """The bytes a prune marker signs (:mod:`tether.audit.prune`): canonical JSON with a
    ``pruned_through`` field no checkpoint statement has, so that neither signature can
    pass for the other."""
    document = {"archive_sha256": archive_sha256, "events": events, "hash": hash,
                "pruned_through": seq, "time": format_time(time)}  # fmt: skip
    return encode(document).encode("utf-8")


def event_json(event: AuditEvent) -> dict[str, Any]:
    """``event`` as a JSON-ready object (every field, ``hash`` included): the form the
    API, ``--json`` output and the sinks use. ``time`` is RFC 3339 as in the chain."""
    document = event_document(event, event.seq or 0, event.prev_hash or "")
    document["seq"] = event.seq
    document["prev_hash"] = event.prev_hash
    document["hash"] = event.hash
    document["actor_chain"] = list(event.actor_chain)
    del document["v"]
    return document


def event_from_json(document: Mapping[str, Any]) -> AuditEvent:
    """The inverse of :func:`event_json`; ``ValueError`` (or ``EventError``) if malformed."""
    fields = dict(document)
    fields["time"] = parse_time(fields["time"])
    fields["actor_chain"] = tuple(fields.get("actor_chain") or ())
    return AuditEvent(**fields)
