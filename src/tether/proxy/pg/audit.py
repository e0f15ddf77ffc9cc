"""The PostgreSQL broker's audit events: session start and end, and two events per statement.

Per statement (:class:`~tether.proxy.pg.commands.StatementRecord`), a ``sql.statement``
event with ``action.phase = "decided"``, committed **before** the statement reaches the
server (or before the refusal reaches the client): the normalised text, its fingerprint,
classes and relations, the decision, rule, reason and policy version.

What the server answered is batched: a ``sql.statement`` event with ``action.phase =
"completed"`` holds ``action.results``, one entry per statement run (``seq`` of its decided
event, ``fingerprint``, ``rows`` returned or affected from ``CommandComplete``,
``duration_ms``, and the SQLSTATE ``error`` of a failure), for up to :data:`BATCH` statements
or one second of a session, and at its end (before ``session.end``). Results are facts
*after* the effect, so invariant 5 does not need them before it; batching them keeps the
trail to about one event per statement.

Security decisions:

* **Literals and parameters are never recorded.** The text is the policy engine's
  ``redacted`` form (every literal token replaced by ``?``); bound parameters are counted,
  not recorded. Text that did not parse is not recorded at all (only its size): it cannot be
  redacted reliably. The fingerprint is SHA-256 over the redacted text with runs of white
  space folded, so one statement shape has one fingerprint whatever its literals.
* Everything still passes through the auditor's redactor (:meth:`Auditor.emit`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tether.audit.events import MAX_COUNT, AuditEvent

if TYPE_CHECKING:
    from tether.audit.emit import Auditor
    from tether.audit.subject import Subject
    from tether.proxy.pg.commands import StatementRecord

PROTOCOL = "postgres"
BATCH = 100
_SHAPES = 256  # statement shapes whose decided action is kept per session


def _total(counts: list[int]) -> int | None:
    """The rows of a batch, when there are any and the sum fits a count column (a target
    that reports huge counts must not make the batch's event unbuildable)."""
    total = sum(counts)
    return total if counts and total <= MAX_COUNT else None


def result_entry(seq: int | None, record: StatementRecord, rows: int | None,
                 duration_ms: float, error: str | None) -> dict[str, Any]:  # fmt: skip
    """One statement's entry in a ``completed`` batch."""
    entry: dict[str, Any] = {
        "seq": seq,
        "fingerprint": None if record.redacted is None else fingerprint(record.redacted),
        "rows": rows,
        "duration_ms": round(duration_ms, 3),
    }
    if error is not None:
        entry["error"] = error
    return entry


@functools.lru_cache(maxsize=1024)
def fingerprint(redacted: str) -> str:
    """SHA-256 of ``redacted`` with runs of white space folded, 16 hex digits (cached)."""
    return hashlib.sha256(" ".join(redacted.split()).encode("utf-8")).hexdigest()[:16]


class SessionAudit:
    """The events of one broker session (no-ops without an auditor)."""

    def __init__(
        self, auditor: Auditor | None, who: Subject, *, target: str, database: str
    ) -> None:
        self.auditor = auditor
        self.who = who
        self.target = target
        self.database = database
        self._actions: dict[tuple[Any, ...], Mapping[str, Any]] = {}

    async def start(self, detail: Mapping[str, Any]) -> None:
        if self.auditor is not None:
            await self.auditor.session_start(
                self.who, protocol=PROTOCOL, target=self.target, detail=detail
            )

    async def end(self, *, duration_ms: float, bytes_in: int, bytes_out: int, reason: str) -> None:
        if self.auditor is not None:
            await self.auditor.session_end(
                self.who, protocol=PROTOCOL, target=self.target, duration_ms=duration_ms,
                bytes_in=bytes_in, bytes_out=bytes_out, reason=reason,
            )  # fmt: skip

    async def decided(self, records: tuple[StatementRecord, ...]) -> list[int]:
        """Commit one event per record; their ``seq`` numbers."""
        auditor = self.auditor
        if auditor is None:
            return []
        if len(records) == 1:
            return [await auditor.emit(self._event(records[0]))]
        return list(await asyncio.gather(*(auditor.emit(self._event(r)) for r in records)))

    async def decided_many(self, batches: list[tuple[StatementRecord, ...]]) -> list[list[int]]:
        """:meth:`decided` for several statements' records at once: every event is appended
        before any is awaited, so they share one group commit. Raises if any failed."""
        if self.auditor is None:
            return [[] for _ in batches]
        emit = self.auditor.emit
        flat = await asyncio.gather(*(emit(self._event(r)) for rs in batches for r in rs))
        out: list[list[int]] = []
        at = 0
        for records in batches:
            out.append(list(flat[at : at + len(records)]))
            at += len(records)
        return out

    async def completed(self, results: list[dict[str, Any]]) -> None:
        """One event for a batch of results (see the module docstring)."""
        if self.auditor is None or not results:
            return
        counted = [r["rows"] for r in results if r.get("rows") is not None]
        action = {"phase": "completed", "database": self.database, "results": results}
        who = self.who
        event = AuditEvent(
            kind="sql.statement", agent=who.agent, runtime=who.runtime, task=who.task,
            user=who.user, actor_chain=who.actor_chain, source_ip=who.source_ip,
            session_id=who.session_id, target=self.target, action=action,
            rows=_total(counted),
            duration_ms=sum(r["duration_ms"] for r in results),
        )  # fmt: skip
        await self.auditor.emit(event)

    def _event(self, record: StatementRecord) -> AuditEvent:
        who, decision = self.who, record.decision
        detail = {"detail": decision.detail} if decision.detail else {}
        return AuditEvent(
            kind="sql.statement", agent=who.agent, runtime=who.runtime, task=who.task,
            user=who.user, actor_chain=who.actor_chain, source_ip=who.source_ip,
            session_id=who.session_id, target=self.target, action=self._action(record),
            decision=decision.decision, rule=decision.rule, reason=decision.reason,
            policy_version=decision.policy_version or None, detail=detail,
        )  # fmt: skip

    def _action(self, record: StatementRecord) -> Mapping[str, Any]:
        """The ``decided`` event's action: the same for every statement of one shape (its
        redacted text, protocol, classes, relations, parameter count), so it is built,
        redacted and frozen once per shape and shared (it is read-only)."""
        size = record.size if record.redacted is None else 0
        key = (record.redacted, record.protocol, record.classes, record.relations,
               record.params, size)  # fmt: skip
        cached = self._actions.get(key)
        if cached is not None:
            return cached
        action: dict[str, Any] = {
            "phase": "decided",
            "query": record.redacted,
            "database": self.database,
            "protocol": record.protocol,
            "fingerprint": None if record.redacted is None else fingerprint(record.redacted),
            "classes": sorted(record.classes),
            "relations": sorted(record.relations),
        }
        if record.params:
            action["params"] = record.params
        if record.redacted is None:
            action["size"] = record.size
        frozen = (
            action if self.auditor is None else self.auditor.redactor.event_json(action, "action")
        )
        if len(self._actions) >= _SHAPES:
            self._actions.clear()
        self._actions[key] = frozen
        return frozen
