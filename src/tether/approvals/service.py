"""The approval flow: access requests, approvers' votes, time-boxed grants.

Front-ends call :meth:`ApprovalService.decide` (or, by hand, :meth:`held_approvals` then
the policy engine then :meth:`request`); humans call :meth:`approve` and :meth:`deny`.

Security decisions:

* **A grant is bound, never presented.** A grant holds for one agent, one task, one
  runtime, one delegating user (or none), one rule *as defined when it was requested*
  (a rule changed since no longer counts its old grants, and a vote on a request of the
  old rule cancels it) and (unless the rule says ``approval.scope: rule``) one action
  digest (:mod:`tether.approvals.digest`), until ``valid_for`` after the approval
  (:func:`tether.approvals.binding.grant_key`). The front-end
  asks :meth:`held_approvals` with what it authenticated and parsed itself; nothing an
  agent sends (no id, header or field) can name a grant, so a forged or replayed grant id
  has nothing to be checked against.
* **Who approves** comes from the rule's ``approval.approvers`` at the time of the request:
  ``user:NAME``, ``group:NAME`` (active members now), ``owner`` (the agent's owner). Only
  a signed-in human votes (not an admin token), each user once (the database's key), and
  ``approval.count`` distinct approvals are needed; one denial denies. An approval counts
  while its user is active: once the user is disabled it no longer counts towards a
  pending request, and disabling revokes the live grants it leaves short of their count
  (:meth:`tether.users.service.UserService.disable_user`, audited by :meth:`on_approver_disabled`).
* **Nobody approves what they caused.** The delegating user never approves their own
  agent's request, and the agent's owner does not either unless the rule names ``owner``
  among the approvers; ``approval.allow_self: true`` lifts both. Both are compared as user
  ids are written (:func:`tether.approvals.binding.person`: ``Alice`` is ``alice``), and a
  request raised under another delegating user is another request.
* **Revocation wins.** Revoking an agent, task or runtime cancels the pending requests and
  revokes the grants it covers (:meth:`on_revocation`, called by the identity service),
  and :meth:`held_approvals` also consults the node's revocation set, so a revocation made
  on another node is honoured before its rows change here.
* **Audited or undone.** Each step is audited (``auditor.approval``) after its commit; when
  the audit trail refuses, a new grant is revoked again and the caller gets the error.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether import policychain
from tether.approvals import store as db
from tether.approvals.binding import (
    ActionDigests,
    Bell,
    delegation_chain,
    delegation_user,
    grant_keys,
    grant_row,
    ident,
    names,
    pending_detail,
    pending_key,
    person,
    request_key,
)
from tether.approvals.digest import ActionDigest
from tether.approvals.model import AccessRequest, Ask, Conflict, NotAllowed, NotFound, Unusable
from tether.approvals.schema import grants
from tether.audit.emit import Auditor, Subject
from tether.crypto.seal import RowSealer
from tether.identity.revocation import RevocationSet
from tether.policy import Decision, PolicySet
from tether.policy.model import APPROVAL_REQUIRED
from tether.policy.rules import Approval, Rule
from tether.store import agents as agent_store
from tether.users.store import User

log = logging.getLogger(__name__)


class Notify(Protocol):
    """Announces new requests (:class:`tether.approvals.notify.WebhookNotifier`)."""

    async def enqueue(self, conn: AsyncConnection, request: AccessRequest) -> None:
        """Record the announcement in the transaction creating ``request``."""

    def wake(self) -> None:
        """The transaction committed: deliver soon."""


MAX_ROUNDS = 8  # rules needing approval that one action may name in turn
_REVOCATION_COLUMNS = {"agent": "agent_id", "task": "task_id", "runtime": "runtime_id"}


class ApprovalService:
    """Access requests, votes and grants over the store."""

    def __init__(
        self,
        engine: AsyncEngine,
        policies: Callable[[], PolicySet],
        sealer: RowSealer,
        *,
        auditor: Auditor | None = None,
        revoked: RevocationSet | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        pending_ttl: timedelta = timedelta(hours=24),
        notify: Notify | None = None,
    ) -> None:
        self.engine, self.policies, self.auditor = engine, policies, auditor
        # Seals the grants this service writes and verifies those it counts, and the
        # agent's row before its owner is trusted as an approver (tether.crypto.seal).
        self.sealer = sealer
        self.revoked, self.clock, self.pending_ttl = revoked, clock, pending_ttl
        self.notify = notify
        self.bell = Bell()

    # --- for the front-ends ---------------------------------------------------------------

    async def decide(
        self,
        request: Mapping[str, Any],
        *,
        body: bytes | None = None,
        reason: str | None = None,
        default_schema: str = "public",
    ) -> tuple[Decision, AccessRequest | None]:
        """The decision for a spec request with the approvals held for it, and the access
        request (created or found) when the answer is ``approval_required``; the decision's
        ``detail`` then names that request, its status and its status path.

        Grants are looked up only for the rule an ``approval_required`` names, one rule at
        a time (an action of several parts may need several): an allowed or denied action
        costs no query, and the answer is the one the engine gives with every held approval
        in ``approvals``. Any ``approvals`` in ``request`` is ignored: only grants count.
        A delegation chain is decided for each of its users (:mod:`tether.policychain`); the
        grant is bound to the outermost user, as for a single delegation.
        """
        policies = self.policies()
        held: list[str] = []
        decision = policychain.decide(
            policies, {**request, "approvals": held}, default_schema=default_schema
        )
        action = ActionDigests(request, body, default_schema)
        for _round in range(MAX_ROUNDS):
            rule_id = decision.rule
            if decision.decision != APPROVAL_REQUIRED or rule_id is None or rule_id in held:
                return decision, None
            rule = policies.by_id.get(rule_id)
            digest = action.for_rule(rule.approval if rule is not None else None)
            agent, task = ident(request.get("agent")), ident(request.get("task"))
            if digest is None or agent is None or task is None:
                return decision, None  # nothing to bind a grant to: the refusal stands
            runtime, delegation = ident(request.get("runtime")), delegation_user(request)
            chain = delegation_chain(request)
            if self._revoked(agent, task, runtime):
                return decision, None  # revoked meanwhile (another node): nothing to raise
            found = await self.held_approvals(agent, task, digest, [rule_id],
                                              bound_digest=digest, runtime_id=runtime,
                                              delegation_user=delegation,
                                              delegation_chain=chain)  # fmt: skip
            if rule_id not in found:
                ask = Ask(
                    agent_id=agent, task_id=task, rule_id=rule_id, action=digest,
                    runtime_id=runtime, delegation_user=delegation, reason=reason,
                    delegation_chain=chain,
                )  # fmt: skip
                pending = await self.request(ask)
                return dataclasses.replace(decision, detail=pending_detail(pending)), pending
            held.append(rule_id)
            decision = policychain.decide(
                policies, {**request, "approvals": held}, default_schema=default_schema
            )
        return decision, None

    async def held_approvals(
        self,
        agent_id: str,
        task_id: str,
        digest: ActionDigest,
        rule_ids: Collection[str],
        *,
        bound_digest: ActionDigest | None = None,
        runtime_id: str | None = None,
        delegation_user: str | None = None,
        delegation_chain: Sequence[str] = (),
    ) -> frozenset[str]:
        """The ids among ``rule_ids`` whose approval is held for this action now, by this
        agent, task, runtime and delegating user, under the rule as defined now.

        ``digest`` is the action's digest; ``bound_digest`` the one including the HTTP
        body, which rules with ``approval.bind_body`` are matched against instead (no
        grant of such a rule is held without it).
        """
        if not rule_ids or self._revoked(agent_id, task_id, runtime_id):
            return frozenset()
        by_id = self.policies().by_id
        keys: dict[str, frozenset[str]] = {}
        for rule_id in rule_ids:
            rule = by_id.get(rule_id)
            approval = None if rule is None else rule.approval
            if rule is None or approval is None:
                continue
            bound = bound_digest if approval.bind_body else digest
            if bound is not None:
                keys[rule_id] = grant_keys(agent_id, task_id, rule, bound, runtime_id,
                                           delegation_user, delegation_chain)  # fmt: skip
        async with self.engine.connect() as conn:
            held = await db.held_rules(
                conn, self.sealer, agent_id=agent_id, task_id=task_id, keys=keys, now=self.clock()
            )
        return frozenset(held)

    def _revoked(self, agent_id: str, task_id: str, runtime_id: str | None = None) -> bool:
        revoked = self.revoked
        return revoked is not None and (
            ("agent", agent_id) in revoked
            or ("task", task_id) in revoked
            or (runtime_id is not None and ("runtime", runtime_id) in revoked)
        )

    async def request(self, ask: Ask) -> AccessRequest:
        """Create the pending access request for ``ask``, or find the one that exists (or
        the approved one whose grant covers it)."""
        rule = self._rule(ask.rule_id)
        approval = rule.approval
        assert approval is not None
        if self._revoked(ask.agent_id, ask.task_id, ask.runtime_id):
            raise Conflict("the agent, task or runtime is revoked")
        await self.expire_due()
        now = self.clock()
        key = pending_key(ask, rule)
        keys = grant_keys(ask.agent_id, ask.task_id, rule, ask.action, ask.runtime_id,
                          ask.delegation_user, ask.delegation_chain)  # fmt: skip
        async with self.engine.begin() as conn:
            granted = await db.live_grant_request(
                conn, self.sealer, agent_id=ask.agent_id, task_id=ask.task_id, rule_id=ask.rule_id,
                keys=keys, now=now,
            )  # fmt: skip
            if granted is not None:
                found = await db.load(conn, granted)
                assert found is not None
                return found
            # The owner an ``owner`` approver is: only from a verified row.
            agent = await agent_store.verified_agent(conn, self.sealer, ask.agent_id)
            await db.expire_stale(conn, key, now)
            new_id = "ar_" + secrets.token_hex(12)
            request_id = await db.insert_pending(
                conn, self.sealer, self._row(new_id, ask, approval, agent, key, now)
            )
            created = await db.load(conn, request_id)
            assert created is not None
            if request_id == new_id and self.notify is not None:
                await self.notify.enqueue(conn, created)  # committed with the request, or not
        if request_id == new_id:
            await self._audit(created, None, "requested")
            self.bell.ring()
            if self.notify is not None:
                self.notify.wake()
        return created

    def _rule(self, rule_id: str) -> Rule:
        rule = self.policies().by_id.get(rule_id)
        if rule is None or rule.approval is None:
            raise Unusable(f"rule {rule_id!r} does not exist or needs no approval")
        return rule

    def _row(
        self,
        request_id: str,
        ask: Ask,
        approval: Approval,
        agent: agent_store.Agent | None,
        key: str,
        now: datetime,
    ) -> dict[str, Any]:
        return {
            "id": request_id, "agent_id": ask.agent_id, "runtime_id": ask.runtime_id,
            "task_id": ask.task_id, "delegation_user": ask.delegation_user,
            "delegation_chain": list(ask.delegation_chain) or None,
            "owner": None if agent is None else agent.owner, "target": ask.action.target,
            "kind": ask.action.kind, "action": dict(ask.action.canonical),
            "digest": ask.action.digest, "rule_id": ask.rule_id, "scope": approval.scope,
            "required": approval.count, "approvers": list(approval.approvers),
            "allow_self": approval.allow_self,
            "valid_for": max(1, int(approval.valid_for.total_seconds())),
            "reason": None if ask.reason is None else ask.reason[:500],
            "status": "pending", "pending_key": key, "requested_at": now,
            "expires_at": now + self.pending_ttl, "decided_at": None, "decided_reason": None,
            "revision": 1, "updated_at": now,
        }  # fmt: skip

    # --- for the humans -------------------------------------------------------------------

    async def expire_due(self) -> list[str]:
        """Lapse the pending requests nobody decided within ``pending_ttl`` (audited)."""
        async with self.engine.begin() as conn:
            due = await db.expire_due(conn, self.clock())
        for request_id in due:
            await self._audit(await self.get(request_id), None, "expired")
        if due:
            self.bell.ring()
        return due

    async def get(self, request_id: str) -> AccessRequest:
        async with self.engine.connect() as conn:
            found = await db.load(conn, request_id)
        if found is None:
            raise NotFound(f"no access request {request_id!r}")
        if found.status == "pending" and found.expires_at <= self.clock():
            await self.expire_due()
            return await self.get(request_id)
        return found

    async def search(
        self, *, status: str | None = None, agent_id: str | None = None, limit: int = 100
    ) -> list[AccessRequest]:
        await self.expire_due()
        async with self.engine.connect() as conn:
            return await db.search(conn, status=status, agent_id=agent_id, limit=limit)

    def may_vote(self, request: AccessRequest, user: User) -> str | None:
        """Why ``user`` may not vote on ``request``, or None when they may."""
        if not user.active:
            return "the user is disabled"
        named = any(names(spec, user, request) for spec in request.approvers)
        if not named:
            return f"{user.id} is not an approver of rule {request.rule_id!r}"
        if request.allow_self:
            return None
        if user.id == person(request.delegation_user):
            return "nobody approves a request they caused (the delegating user)"
        if user.id in {person(u) for u in request.delegation_chain}:
            return "nobody approves a request they caused (a user of the delegation chain)"
        if user.id == person(request.owner) and "owner" not in request.approvers:
            return "the agent's owner does not approve its requests under this rule"
        return None

    async def approve(self, request_id: str, user: User, reason: str | None) -> AccessRequest:
        return await self._vote(request_id, user, "approve", reason)

    async def deny(self, request_id: str, user: User, reason: str | None) -> AccessRequest:
        return await self._vote(request_id, user, "deny", reason)

    async def _vote(
        self, request_id: str, user: User, vote: str, reason: str | None
    ) -> AccessRequest:
        current = await self.get(request_id)
        refusal = self.may_vote(current, user)
        if refusal is not None:
            raise NotAllowed(refusal)
        if self._revoked(current.agent_id, current.task_id, current.runtime_id):
            raise Conflict("the agent, task or runtime is revoked")
        stored = await self._pending_key(request_id)
        if stored is None:
            raise Conflict(f"access request {request_id} is not pending")
        rule = self.policies().by_id.get(current.rule_id)
        if rule is None or rule.approval is None or request_key(current, rule) != stored:
            await self._cancel(request_id, "the rule changed since the request; ask again")
            raise Conflict(f"rule {current.rule_id!r} changed since access request "
                           f"{request_id} was made: it is cancelled")  # fmt: skip
        now = self.clock()
        reason = None if reason is None else reason[:500]
        try:
            async with self.engine.begin() as conn:
                if not await db.lock_pending(conn, request_id, now):
                    raise Conflict(f"access request {request_id} is not pending")
                await db.insert_vote(conn, self.sealer, request_id, user.id, vote, reason, now)
                await db.lock_voters(conn, request_id)  # a disable waits, or is counted
                locked = await db.load(conn, request_id, self.sealer)
                assert locked is not None
                outcome = self._outcome(locked, vote)
                if outcome != "vote":
                    await db.decide(conn, request_id, outcome, reason, now)
                if outcome == "approved":
                    await db.insert_grant(conn, self.sealer, grant_row(locked, rule, now))
        except IntegrityError:
            raise Conflict(f"{user.id} already voted on {request_id}") from None
        decided = await self.get(request_id)
        await self._audited_vote(decided, user, outcome)
        self.bell.ring()
        return decided

    async def _pending_key(self, request_id: str) -> str | None:
        async with self.engine.connect() as conn:
            return await db.pending_key_of(conn, request_id)

    async def _cancel(self, request_id: str, reason: str) -> None:
        """Cancel a pending request (audited); nothing when it was decided meanwhile."""
        async with self.engine.begin() as conn:
            done = await db.decide(conn, request_id, "cancelled", reason, self.clock())
        if done:
            await self._audit(await self.get(request_id), None, "cancelled")
            self.bell.ring()

    @staticmethod
    def _outcome(request: AccessRequest, vote: str) -> str:
        if vote == "deny":
            return "denied"
        return "approved" if request.approvals >= request.required else "vote"

    async def _audited_vote(self, request: AccessRequest, user: User, outcome: str) -> None:
        try:
            await self._audit(request, user.id, outcome)
        except Exception:
            if request.grant is not None:  # unaudited, so not granted
                await self._revoke_grant(request.grant.id, "the audit trail refused the approval")
            raise

    async def _revoke_grant(self, grant_id: str, reason: str) -> None:
        async with self.engine.begin() as conn:
            await db.revoke_grants(conn, self.sealer, grants.c.id == grant_id, reason, self.clock())

    # --- revocation -----------------------------------------------------------------------

    async def on_revocation(self, kind: str, value: str, reason: str) -> list[str]:
        """Cancel the pending requests and revoke the grants a revocation covers."""
        column = _REVOCATION_COLUMNS.get(kind)
        if column is None:
            return []
        async with self.engine.begin() as conn:
            affected = await db.cancel_for(
                conn, self.sealer, column, value, f"revoked: {reason}", self.clock()
            )
        for request_id in affected:
            await self._audit(await self.get(request_id), None, "cancelled")
        if affected:
            self.bell.ring()
        return affected

    async def on_approver_disabled(self, user_id: str, request_ids: Collection[str]) -> None:
        """Audit the grants disabling ``user_id`` revoked (``cancelled``, like a revocation's)."""
        for request_id in request_ids:
            await self._audit(await self.get(request_id), None, "cancelled",
                              reason=f"approver {user_id} was disabled")  # fmt: skip
        if request_ids:
            self.bell.ring()

    # --- audit ----------------------------------------------------------------------------

    async def _audit(
        self, request: AccessRequest, approver: str | None, outcome: str, reason: str | None = None
    ) -> None:
        if self.auditor is None:
            return
        grant = request.grant
        extra = {} if reason is None else {"reason": reason}
        await self.auditor.approval(
            Subject(
                agent=request.agent_id, runtime=request.runtime_id, task=request.task_id,
                user=request.delegation_user,
            ),
            rule=request.rule_id, approver=approver, outcome=outcome, target=request.target,
            expires_at=None if grant is None else grant.expires_at,
            detail={
                "request_id": request.id, "digest": request.digest, "status": request.status,
                "scope": request.scope, "approvals": request.approvals,
                "required": request.required, **extra,
            },
        )  # fmt: skip


__all__ = ["ActionDigest", "ApprovalService", "Ask", "Bell"]
