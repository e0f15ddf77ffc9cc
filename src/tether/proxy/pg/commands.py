"""What the session machine tells its driver, and what it asks the policy.

The machine (:mod:`tether.proxy.pg.session`) returns a list of commands per input; the
driver (:mod:`tether.proxy.pg.connection`) carries them out in order. A
:class:`StatementRecord` is one statement as the audit trail records it.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Protocol

from tether.policy.model import Decision
from tether.proxy.pg import backend as be

REFUSED: Final = "42501"
_SAFE_ENCODINGS: Final = frozenset({"UTF8", "UNICODE"})


class Policy(Protocol):
    """What the session asks: a decision for one query text, and which policy set is in force.

    ``shape``, when given, is everything the engine's SQL matching reads of ``query`` parsed
    under ``default_schema`` (:data:`~tether.proxy.pg.deciding.Shape`): a policy may reuse a
    decision for another text of the same shape while nothing else it depends on changed."""

    def decide(
        self, query: str, default_schema: str, shape: Hashable | None = None
    ) -> Decision: ...

    def current(self) -> object: ...


@dataclass(frozen=True, slots=True)
class StatementRecord:
    """One statement as audited: redacted text, what it touches, and its decision."""

    redacted: str | None  # None: the text did not parse (it is not recorded)
    size: int
    classes: frozenset[str]
    relations: frozenset[str]
    decision: Decision
    protocol: str
    params: int = 0


@dataclass(frozen=True, slots=True)
class ToServer:
    data: bytes


@dataclass(frozen=True, slots=True)
class ToClient:
    data: bytes


@dataclass(frozen=True, slots=True)
class AuditDecided:
    """Statements decided; the driver commits these events before the next command.
    ``ref`` (unique in the session, 0 for refusals) ties later results to these events.
    ``early``: allowed and read-only (:class:`~tether.proxy.pg.deciding.Verdict`), so the
    driver may forward the statement while the events commit, holding back the server's
    answer until they have."""

    records: tuple[StatementRecord, ...]
    ref: int = 0
    early: bool = False


@dataclass(frozen=True, slots=True)
class AuditResult:
    """The server's answer to statement ``index`` of the ``AuditDecided`` ``ref``."""

    record: StatementRecord
    rows: int | None
    error: str | None
    duration_ms: float
    ref: int = 0
    index: int = 0


@dataclass(frozen=True, slots=True)
class End:
    """End the session: send ``message`` (if any) to the client, then close both sides."""

    reason: str
    message: bytes | None = None


Command = ToServer | ToClient | AuditDecided | AuditResult | End


def refusal(decision: Decision) -> bytes:
    """The ``ErrorResponse`` for a statement the policy did not allow."""
    rule = decision.rule or "none"
    if decision.decision == "approval_required":
        message = f"statement needs an approval (rule {rule})"
    else:
        message = f"statement refused by policy: {decision.reason} (rule {rule})"
    detail = decision.detail or None
    hint = "request an approval, then retry" if decision.decision == "approval_required" else None
    return be.error(REFUSED, message, detail=detail, hint=hint).encode()


def parameter_safe(name: str, value: str) -> bool:
    """Whether a reported server setting keeps SQL text meaning what the policy parsed."""
    if name == "client_encoding":
        return value.upper().replace("-", "").replace("_", "") in _SAFE_ENCODINGS
    if name == "standard_conforming_strings":
        return value == "on"
    return True


def record_for(decision: Decision, protocol: str, *, size: int = 0) -> StatementRecord:
    """The record of a refusal or of text that did not parse (nothing of it is recorded)."""
    return StatementRecord(None, size, frozenset(), frozenset(), decision, protocol)


def with_params(record: StatementRecord, params: int) -> StatementRecord:
    """``record`` with the number of parameters bound to it."""
    if record.params == params:
        return record
    return StatementRecord(
        record.redacted, record.size, record.classes, record.relations, record.decision,
        record.protocol, params,
    )  # fmt: skip
