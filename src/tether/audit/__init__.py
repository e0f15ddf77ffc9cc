"""The audit trail: typed events, redaction, the hash-chained store, verification, search.

Emit through :class:`tether.audit.emit.Auditor` (one method per kind of fact); it redacts
(:mod:`tether.audit.redact`) and appends through the node's single
:class:`tether.audit.log.AuditLog` writer, which group-commits hash-chained events and signs
checkpoints. Read with :func:`tether.audit.store.events_after` (sinks) or
:func:`tether.audit.store.search_events`; check with :func:`tether.audit.verify.verify_trail`.
See docs/audit.md.

Nothing is imported here: ``tether.config`` imports :mod:`tether.audit.config` for every
command, and must not pull in the database drivers or the SQL parser with it.
"""
