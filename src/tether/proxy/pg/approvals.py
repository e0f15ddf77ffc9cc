"""Approvals in the PostgreSQL broker: grants held by one session, and its access requests.

The session machine (:mod:`tether.proxy.pg.session`) is sans-IO and decides synchronously,
while grants and access requests live in the store. :class:`SessionApprovals` bridges the
two: the async driver keeps, per session, the live grants of the session's (agent, task) —
fetched when the session starts, again at most every :data:`REFRESH_SECONDS` from the
session's watcher, and right after the session raised an access request — and the
synchronous decider (:meth:`SessionApprovals.resolve`, called by the session's policy)
reads them. Before the machine sees a ``Query`` or ``Parse``, the driver decides its text
once (:meth:`SessionApprovals.before`) and raises, or finds, the pending access request of
every ``approval_required`` it meets (:class:`~tether.approvals.service.ApprovalService`),
so that the machine's refusal — ``ErrorResponse`` SQLSTATE ``42501`` — names the request
and its status path in ``DETAIL``.

Security decisions:

* **A grant covers exactly the approved statement.** A grant matches only when its rule is
  the one the engine named, as defined now, for the session's agent, task, runtime and
  delegating user (:func:`tether.approvals.binding.grant_key`), and its digest is the
  statement's
  (:func:`tether.approvals.digest.action_digest`: PostgreSQL's deparse of the text, every
  literal kept, with the database and the default schema it is decided under), unless the
  rule says ``approval.scope: rule``. ``... WHERE id = 1`` and ``... WHERE id = 2`` are two
  actions; keyword case, spacing and comments are not. The statement is decided again with
  the held rule ids in ``approvals``, so the grant lifts only that rule's
  ``approval_required`` and every other rule still applies.
* **Expiry is exact, revocation within a second.** Each held grant keeps its expiry and is
  checked against the clock at every decision; a revoked grant (or a revoked agent or task,
  through the node's revocation set) is gone at the next fetch, at most
  :data:`REFRESH_SECONDS` later (a revoked agent's session is also ended by its watcher).
* **Prepared statements follow the grants.** :meth:`SessionApprovals.epoch` is the policy
  marker the machine stores with a prepared statement; it changes whenever the held grants
  change or one expires, so a statement prepared under a grant is decided again at its
  next ``Bind``.
* **Nothing the client sends names a grant**; raising a request never allows anything (the
  statement is decided again after it), and a failure to raise one leaves the refusal in
  place, saying no request was raised.
* **No cost without approval rules**: when the policy set in force has no SQL rule with an
  ``approval``, nothing is fetched and :meth:`SessionApprovals.active` is one identity check.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from sqlalchemy import select

from tether import policychain
from tether.approvals.binding import (
    ActionDigests,
    delegation_chain,
    delegation_user,
    grant_keys,
    ident,
    pending_detail,
)
from tether.approvals.model import AccessRequest, ApprovalError, Ask
from tether.approvals.schema import grants
from tether.approvals.service import MAX_ROUNDS, ApprovalService
from tether.policy import Decision, PolicySet
from tether.policy.model import APPROVAL_REQUIRED
from tether.proxy.pg import codec as c

log = logging.getLogger(__name__)

REFRESH_SECONDS: Final = 1.0
NOT_RAISED: Final = "no access request could be raised yet; retry the statement"


@dataclasses.dataclass(frozen=True, slots=True)
class HeldGrant:
    """A live grant of the session's agent and task."""

    rule_id: str
    key: str  # what it is bound to (:func:`tether.approvals.binding.grant_key`)
    expires_at: float  # POSIX seconds

    def covers(self, rule_id: str, keys: frozenset[str], now: float) -> bool:
        return self.rule_id == rule_id and self.key in keys and now < self.expires_at


@dataclasses.dataclass(frozen=True, slots=True)
class Epoch:
    """The policy marker of a prepared statement: one policy set and one set of grants."""

    policies: PolicySet

    @property
    def version(self) -> str:
        return str(self.policies.version)


def needs_approvals(policies: PolicySet) -> bool:
    """Whether any SQL rule of ``policies`` asks for an approval."""
    return any(rule.approval is not None and rule.kind == "sql" for rule in policies.rules)


class PolicySource(Protocol):
    """Where the policy set in force is read (``PolicyHolder``)."""

    @property
    def current(self) -> PolicySet: ...


class SessionApprovals:
    """One session's grants and access requests (see the module docstring)."""

    def __init__(
        self,
        service: ApprovalService,
        holder: PolicySource,
        base: Mapping[str, Any],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.holder = holder
        self.agent_id = ident(base.get("agent"))
        self.task_id = ident(base.get("task"))
        self.runtime_id = ident(base.get("runtime"))
        self.delegation_user = delegation_user(base)
        self.delegation_chain = delegation_chain(base)
        self.monotonic = monotonic
        self.grants: frozenset[HeldGrant] = frozenset()
        self.pending: dict[tuple[str, str], AccessRequest] = {}
        self.asks: dict[tuple[str, str], Ask] = {}
        self._set: PolicySet | None = None
        self._active = False
        self._epoch: Epoch | None = None
        self._fetched = float("-inf")
        self._collecting = False
        self._fetches = 0  # fetches started
        self._applied = 0  # the latest fetch whose answer is held

    # --- synchronous: called by the session's policy ----------------------------------------

    def active(self) -> bool:
        """Whether the policy set in force has a SQL rule needing approval."""
        current = self.holder.current
        if current is not self._set:
            self._set = current
            self._active = needs_approvals(current)
            self._epoch = None
        return self._active

    def epoch(self) -> Epoch:
        """The marker of the policy set and the grants held now (a new one when either
        changed, or when a held grant expired)."""
        self.active()
        if self.grants:
            now = self.now()
            if any(grant.expires_at <= now for grant in self.grants):
                self.grants = frozenset(g for g in self.grants if g.expires_at > now)
                self._epoch = None
        if self._epoch is None:
            assert self._set is not None
            self._epoch = Epoch(self._set)
        return self._epoch

    def resolve(
        self, decision: Decision, request: Mapping[str, Any], default_schema: str
    ) -> Decision:
        """``decision`` with the session's held grants applied: decided again with every
        rule id whose grant covers this statement in ``approvals``; an ``approval_required``
        that remains names its access request (or is noted for the driver to raise)."""
        policies = self.holder.current
        action = ActionDigests(request, None, default_schema)
        held: list[str] = []
        now = self.now()
        for _round in range(MAX_ROUNDS):
            rule_id = decision.rule
            if decision.decision != APPROVAL_REQUIRED or rule_id is None or rule_id in held:
                return decision
            rule = policies.by_id.get(rule_id)
            digest = action.for_rule(rule.approval if rule is not None else None)
            if digest is None or rule is None or self.agent_id is None or self.task_id is None:
                return decision  # nothing to bind a grant to: the refusal stands
            keys = grant_keys(self.agent_id, self.task_id, rule, digest,
                              self.runtime_id, self.delegation_user,
                              self.delegation_chain)  # fmt: skip
            if not any(g.covers(rule_id, keys, now) for g in self.grants):
                key = (rule_id, digest.digest)
                pending = self.pending.get(key)
                if pending is not None and pending.status != "pending":
                    pending = None  # decided since (its grant is gone): raise it again
                if self._collecting or pending is None:  # the driver raises it, or finds it
                    self.asks[key] = Ask(
                        agent_id=self.agent_id, task_id=self.task_id, rule_id=rule_id,
                        action=digest, runtime_id=self.runtime_id,
                        delegation_user=self.delegation_user,
                        delegation_chain=self.delegation_chain,
                    )  # fmt: skip
                detail = NOT_RAISED if pending is None else pending_detail(pending)
                return dataclasses.replace(decision, detail=detail)
            held.append(rule_id)
            again = {**request, "approvals": list(held)}
            decision = policychain.decide(policies, again, default_schema=default_schema)
        return decision

    # --- asynchronous: called by the driver -------------------------------------------------

    def before(
        self, message: object, decide: Callable[[str, str], object]
    ) -> Awaitable[None] | None:
        """For a ``Query`` or ``Parse`` while approval rules exist: decide its text once
        (``decide``, the session's decider) and return the work that raises the access
        requests it needs; None when there is nothing to do."""
        kind = type(message)
        if (kind is not c.Query and kind is not c.Parse) or not self.active():
            return None
        self.asks.clear()
        self._collecting = True
        try:
            if isinstance(message, c.Query):
                decide(message.text, "simple")
            elif isinstance(message, c.Parse):
                decide(message.query, "extended")
        finally:
            self._collecting = False
        return self.raise_asks() if self.asks else None

    def before_for(
        self, decide: Callable[[str, str], object]
    ) -> Callable[[object], Awaitable[None] | None]:
        """The driver's hook for a session whose decider is ``decide``."""
        return lambda message: self.before(message, decide)

    async def raise_asks(self) -> None:
        """Raise (or find) the access request of every noted ask, then fetch the grants
        again (a request may already be approved)."""
        asks, self.asks = self.asks, {}
        for key, ask in asks.items():
            try:
                self.pending[key] = await self.service.request(ask)
                self._epoch = None  # prepared statements refused before are decided again
            except ApprovalError as error:
                log.info("postgres session: no access request for rule %s: %s", key[0], error)
        if len(self.pending) > 256:
            self.pending = {k: v for k, v in self.pending.items() if k in asks}
        await self.fetch()

    async def refresh(self) -> None:
        """From the watcher: raise what is noted, and fetch the grants at most every
        :data:`REFRESH_SECONDS` while approval rules exist."""
        if not self.active():
            if self.grants or self.pending:
                self.grants, self.pending, self._epoch = frozenset(), {}, None
            return
        if self.asks:
            await self.raise_asks()
        elif self.monotonic() - self._fetched >= REFRESH_SECONDS:
            await self.fetch()

    def now(self) -> float:
        """The approval service's clock, in POSIX seconds (what grants expire by)."""
        return self.service.clock().timestamp()

    async def fetch(self) -> None:
        """Fetch the live grants of the session's agent and task."""
        self._fetched = self.monotonic()
        self._fetches += 1
        started = self._fetches
        agent_id, task_id = self.agent_id, self.task_id
        found: frozenset[HeldGrant] = frozenset()
        revoked = self.service.revoked
        runtime_id = self.runtime_id
        gone = agent_id is None or task_id is None or (
            revoked is not None and (
                ("agent", agent_id) in revoked or ("task", task_id) in revoked
                or (runtime_id is not None and ("runtime", runtime_id) in revoked)
            )
        )  # fmt: skip
        if not gone:
            query = select(grants.c.rule_id, grants.c.digest, grants.c.expires_at)
            query = query.where(
                grants.c.agent_id == agent_id,
                grants.c.task_id == task_id,
                grants.c.revoked_at.is_(None),
                grants.c.expires_at > self.service.clock(),
            )
            async with self.service.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
            found = frozenset(
                HeldGrant(row.rule_id, row.digest, _seconds(row.expires_at))
                for row in rows
                if row.digest is not None
            )
        if started < self._applied:
            return  # a fetch started later already answered: never bring back older grants
        self._applied = started
        if found != self.grants:
            self.grants = found
            self._epoch = None


def _seconds(value: datetime) -> float:
    if value.tzinfo is None:  # SQLite returns naive datetimes; the store writes UTC
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
