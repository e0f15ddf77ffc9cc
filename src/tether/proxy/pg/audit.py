"""The PostgreSQL broker's audit events: session start and end, and two events per statement.

Per statement (:class:`~tether.proxy.pg.session.StatementRecord`):

* ``sql.statement`` with ``action.phase = "decided"``, committed **before** the statement
  reaches the server (or before the refusal reaches the client): the normalised text, its
  fingerprint, classes and relations, the decision, rule, reason and policy version.
* ``sql.statement`` with ``action.phase = "completed"`` once the server answered: rows
  returned or affected (from ``CommandComplete``), the duration, and the SQLSTATE of an error.

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
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tether.audit.events import AuditEvent

if TYPE_CHECKING:
    from tether.audit.emit import Auditor
    from tether.audit.subject import Subject
    from tether.proxy.pg.session import AuditResult, StatementRecord

PROTOCOL = "postgres"


def fingerprint(redacted: str) -> str:
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

    async def decided(self, records: tuple[StatementRecord, ...]) -> None:
        auditor = self.auditor
        if auditor is None:
            return
        if len(records) == 1:
            await auditor.emit(self._event(records[0], "decided"))
        else:
            await asyncio.gather(*(auditor.emit(self._event(r, "decided")) for r in records))

    async def completed(self, result: AuditResult) -> None:
        if self.auditor is not None:
            await self.auditor.emit(
                self._event(
                    result.record,
                    "completed",
                    rows=result.rows,
                    duration_ms=result.duration_ms,
                    error=result.error,
                )
            )

    def _event(
        self,
        record: StatementRecord,
        phase: str,
        *,
        rows: int | None = None,
        duration_ms: float | None = None,
        error: str | None = None,
    ) -> AuditEvent:
        who, decision = self.who, record.decision
        action: dict[str, Any] = {
            "phase": phase,
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
        if error is not None:
            action["error"] = error
        detail = {"detail": decision.detail} if decision.detail else {}
        return AuditEvent(
            kind="sql.statement", agent=who.agent, runtime=who.runtime, task=who.task,
            user=who.user, actor_chain=who.actor_chain, source_ip=who.source_ip,
            session_id=who.session_id, target=self.target, action=action,
            decision=decision.decision, rule=decision.rule, reason=decision.reason,
            policy_version=decision.policy_version or None, rows=rows,
            duration_ms=duration_ms, detail=detail,
        )  # fmt: skip
