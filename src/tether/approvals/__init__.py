"""Humans in the loop: access requests raised by ``approval_required``, approvers' votes,
and time-boxed grants bound to the exact action.

The package imports nothing itself (``tether.config`` reads :mod:`tether.approvals.config`
on every command); the parts are :mod:`~tether.approvals.digest` (what an approval is bound
to), :mod:`~tether.approvals.service` (the flow), :mod:`~tether.approvals.store` and
:mod:`~tether.approvals.schema` (persistence), :mod:`~tether.approvals.notify` (webhooks)
and :mod:`~tether.approvals.runtime` (wiring into a node).
"""
