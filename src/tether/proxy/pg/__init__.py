"""The PostgreSQL broker: agents speak the wire protocol to Tether, which checks every statement.

Layers, innermost first: :mod:`~tether.proxy.pg.fields`, :mod:`~tether.proxy.pg.codec` and
:mod:`~tether.proxy.pg.backend` (messages, sans-IO), :mod:`~tether.proxy.pg.session` (the
enforcement state machine, sans-IO, with :mod:`~tether.proxy.pg.extended` for prepared
statements and portals and :mod:`~tether.proxy.pg.pending` for the answers owed),
:mod:`~tether.proxy.pg.policy` (the session's policy and decision cache),
:mod:`~tether.proxy.pg.connection` (the asyncio pump of one session),
:mod:`~tether.proxy.pg.server` (listener, sessions) with :mod:`~tether.proxy.pg.handshake`
(TLS, login) and :mod:`~tether.proxy.pg.cancel` (cancel keys), with
:mod:`~tether.proxy.pg.upstream`, :mod:`~tether.proxy.pg.scram` and
:mod:`~tether.proxy.pg.credentials` for the target side. docs/pg-broker.md is the user's guide.
"""
