"""Starting a node's audit trail from its settings: the writer, the redactor, the emitter.

Security decision: the node refuses to start when its audit trail cannot be opened (an
in-memory SQLite database, a database the writer cannot lock): a node that could not
record what it lets agents do must not let them do anything.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from tether.audit.checkpoints import Signer
from tether.audit.config import AuditConfig
from tether.audit.emit import Auditor
from tether.audit.log import AuditLog
from tether.audit.redact import Redactor
from tether.audit.writers import WriterError


class AuditStartError(Exception):
    """The audit trail cannot be opened; the message says why."""


def redactor_for(config: AuditConfig) -> Redactor:
    return Redactor.of(config.sensitive_headers, config.sensitive_fields)


async def start_auditor(config: AuditConfig, engine: AsyncEngine, signer: Signer) -> Auditor:
    """A running :class:`Auditor` over a started :class:`AuditLog`; close ``auditor.log``."""
    try:
        log = AuditLog(
            engine,
            signer,
            checkpoint_every=config.checkpoint_every,
            checkpoint_interval=config.checkpoint_interval,
            max_batch=config.max_batch,
            sqlite_synchronous=config.sqlite_synchronous,
            head_file=config.head_file,
        )
        await log.start()
    except (ValueError, WriterError, OSError) as error:
        raise AuditStartError(f"the audit trail cannot be opened: {error}") from None
    return Auditor(log, redactor_for(config))
