"""An event's canonical text and chain hashes, from the columns of its row.

Standard library only: this module also runs in the SQLite writer's own process
(:mod:`tether.audit.sqlite_process`), which chains each batch where the node's event loop
does not pay for it. The format is :mod:`tether.audit.canonical`'s (format version 1);
``tests/audit/test_canonical.py`` proves the two equal for any event.

The columns (:data:`COLUMN_NAMES`) are those of an ``audit_events`` row between ``seq`` and
``prev_hash``, with two differences: ``time`` is the RFC 3339 text of the canonical form
(``2026-11-29T10:00:00.000000Z``), whatever the backend stores, and ``actor_chain``,
``action`` and ``detail`` are their canonical JSON texts, as stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import sha256
from json.encoder import encode_basestring
from typing import Any, Final

GENESIS: Final = "0" * 64
FORMAT_VERSION: Final = 1  # the "v" of every event's text
_END: Final = f'"v":{FORMAT_VERSION}}}'  # the text's last member, formatted once

COLUMN_NAMES: Final = (
    "id", "time", "kind", "agent", "runtime", "task", "user", "actor_chain", "target",
    "action", "decision", "rule", "reason", "policy_version", "session_id", "source_ip",
    "bytes_in", "bytes_out", "rows", "duration_ms", "detail",
)  # fmt: skip


def event_text(columns: Sequence[Any], seq: int, prev_hash: str) -> str:
    """The canonical text of the event with these columns at ``seq`` after ``prev_hash``.

    Keys in code point order; every call is a C function (the json module's string
    encoder, ``int.__repr__``, ``float.__repr__``: exact ints and floats print as the json
    module does, whatever their subclass)."""
    (id_, time, kind, agent, runtime, task, user, chain, target, action, decision, rule,
     reason, policy_version, session_id, source_ip, bytes_in, bytes_out, rows, duration,
     detail) = columns  # fmt: skip
    s, i = encode_basestring, int.__repr__
    return (
        f'{{"action":{action},"actor_chain":{chain},'
        f'"agent":{"null" if agent is None else s(agent)},'
        f'"bytes_in":{"null" if bytes_in is None else i(bytes_in)},'
        f'"bytes_out":{"null" if bytes_out is None else i(bytes_out)},'
        f'"decision":{"null" if decision is None else s(decision)},"detail":{detail},'
        f'"duration_ms":{"null" if duration is None else float.__repr__(duration)},'
        f'"id":{s(id_)},"kind":{s(kind)},'
        f'"policy_version":{"null" if policy_version is None else s(policy_version)},'
        f'"prev_hash":"{prev_hash}","reason":{"null" if reason is None else s(reason)},'
        f'"rows":{"null" if rows is None else i(rows)},'
        f'"rule":{"null" if rule is None else s(rule)},'
        f'"runtime":{"null" if runtime is None else s(runtime)},"seq":{i(seq)},'
        f'"session_id":{"null" if session_id is None else s(session_id)},'
        f'"source_ip":{"null" if source_ip is None else s(source_ip)},'
        f'"target":{"null" if target is None else s(target)},'
        f'"task":{"null" if task is None else s(task)},'
        f'"time":"{time}","user":{"null" if user is None else s(user)},{_END}'
    )


def chain_hashes(rows: Sequence[Sequence[Any]], seq: int, prev_hash: str) -> list[str]:
    """The hashes of ``rows`` appended after the event ``seq`` whose hash is ``prev_hash``
    (:data:`GENESIS` for an empty chain): lowercase hex SHA-256 of each one's UTF-8 text."""
    hashes: list[str] = []
    add = hashes.append
    for columns in rows:
        seq += 1
        prev_hash = sha256(event_text(columns, seq, prev_hash).encode()).hexdigest()
        add(prev_hash)
    return hashes
