"""SIEM sinks: the audit trail delivered, at least once and in order, to other systems.

* :mod:`.base` — the delivery loop over a durable cursor, backoff, :func:`~.base.sink_status`;
* :mod:`.config` — the ``audit.sinks`` configuration;
* :mod:`.jsonl`, :mod:`.syslog` (with :mod:`.rfc5424`), :mod:`.hec`, :mod:`.webhook` — the
  kinds of sink;
* :mod:`.runner` — building the configured sinks and running their loops in a node.
"""
