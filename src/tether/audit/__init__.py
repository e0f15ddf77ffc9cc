"""The audit trail: typed events, redaction, the hash-chained store, verification, search.

Emit through :class:`Auditor` (one method per kind of fact); it redacts
(:class:`Redactor`) and appends through the node's single :class:`AuditLog` writer, which
group-commits hash-chained events and signs checkpoints. Read with
:func:`tether.audit.store.events_after` (sinks) or :func:`tether.audit.store.search_events`;
check with :func:`tether.audit.verify.verify_trail`. See docs/audit.md.
"""

from tether.audit.emit import Auditor, Subject
from tether.audit.events import KINDS, AuditEvent, EventError
from tether.audit.log import AuditLog, AuditUnavailable
from tether.audit.redact import REDACTED, Redactor

__all__ = [
    "KINDS",
    "REDACTED",
    "AuditEvent",
    "AuditLog",
    "AuditUnavailable",
    "Auditor",
    "EventError",
    "Redactor",
    "Subject",
]
