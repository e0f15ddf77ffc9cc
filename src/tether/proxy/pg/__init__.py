"""The PostgreSQL broker: agents speak the wire protocol to Tether, which checks every statement.

Layers, innermost first: :mod:`~tether.proxy.pg.codec` and :mod:`~tether.proxy.pg.backend`
(messages, sans-IO), :mod:`~tether.proxy.pg.session` (the enforcement state machine,
sans-IO), :mod:`~tether.proxy.pg.connection` (the asyncio pump of one session),
:mod:`~tether.proxy.pg.server` (listener, TLS, login, cancel requests), with
:mod:`~tether.proxy.pg.upstream`, :mod:`~tether.proxy.pg.scram` and
:mod:`~tether.proxy.pg.credentials` for the target side. docs/pg-broker.md is the user's guide.
"""
