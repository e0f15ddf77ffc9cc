"""What every front-end shares: its services, and one action's request and decision.

Every front-end runs the same sequence (DESIGN.md): authenticate the credential → build the
policy request → decide → enforce → audit. This module builds the request and takes the
decision, so that the HTTP, SSH and PostgreSQL front-ends cannot differ in what they tell
the engine about who acts.

Security decisions:

* **The request is built from the verified claims only.** Agent, runtime, task, scope and
  delegation come from the access token (or the certificate) the identity service
  verified; nothing the agent sends in the action can set them.
* **Agent labels come from the store**, cached for at most ``labels_ttl`` seconds (the
  identity service's revocation poll interval by default), so a relabelled agent is
  decided under its new labels within that bound. An agent missing from the store gets
  no labels, and the identity service refuses it anyway (``check_live``).
* **A decision never raises** (``PolicySet.decide`` fails closed); :func:`decide` only
  adds the policy set in force at the moment of the call.
* **Every user of a delegation chain is decided**: the request of a chained token lists the
  chain's earlier users with their own groups (``delegation.chain``), and :func:`decide`
  decides the action for each of them (:mod:`tether.policychain`); the engine alone
  refuses such a request, so no front-end can decide it for one user only by mistake.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from tether import policychain
from tether.approvals.model import Conflict
from tether.audit.subject import Subject
from tether.crypto.seal import RowSealer
from tether.policy.model import DENY, Decision
from tether.policychain import delegation_of
from tether.store import agents as agent_store

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tether.api.state import PolicyHolder
    from tether.approvals.service import ApprovalService
    from tether.audit.emit import Auditor
    from tether.identity.claims import Claims
    from tether.identity.service import IdentityService
    from tether.vault.secrets import SecretStore
    from tether.vault.targets import Target, TargetStore

log = logging.getLogger(__name__)

_NO_LABELS: Final[Mapping[str, str]] = MappingProxyType({})
# The reasons of a refusal no decision was made for (:func:`undecided`), beside the spec's.
APPROVAL_CONFLICT: Final = "approval-conflict"
INTERNAL_ERROR: Final = "internal-error"


class AgentLabels:
    """The labels of agents, read from the store and cached for ``ttl`` seconds each.

    Only from a row whose seal verifies (``sealer``): for an agent whose row was changed
    outside Tether, :meth:`get` raises :class:`tether.store.agents.AgentUnverified` and no
    decision is made (labels a writer gave it could match a broader rule)."""

    def __init__(
        self,
        engine: AsyncEngine,
        sealer: RowSealer,
        *,
        ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
    ) -> None:
        self._engine, self._sealer = engine, sealer
        self._ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._cache: dict[str, tuple[Mapping[str, str], float]] = {}
        self._loading: dict[str, asyncio.Future[Mapping[str, str]]] = {}

    def cached(self, agent_id: str) -> tuple[bool, Mapping[str, str] | None]:
        """``(True, what get would answer)`` when ``get`` would answer from its cache
        without I/O; ``(False, None)`` otherwise."""
        hit = self._cache.get(agent_id)
        if hit is not None and 0 <= self._clock() - hit[1] < self._ttl:
            return True, hit[0]
        return False, None

    async def get(self, agent_id: str) -> Mapping[str, str]:
        """The agent's labels (empty for an unknown agent).

        Single-flight: concurrent misses for one agent share one store read, so a burst
        of new sessions cannot exhaust the store's connection pool.
        """
        hit = self._cache.get(agent_id)
        if hit is not None and 0 <= self._clock() - hit[1] < self._ttl:
            return hit[0]
        loading = self._loading.get(agent_id)
        if loading is None:
            # The read runs in a task of its own: a caller cancelled while waiting does
            # not cancel the read the others wait for.
            loading = asyncio.ensure_future(self._load(agent_id))
            self._loading[agent_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(agent_id, None))
        return await asyncio.shield(loading)

    async def _load(self, agent_id: str) -> Mapping[str, str]:
        now = self._clock()
        async with self._engine.connect() as conn:
            agent = await agent_store.verified_agent(conn, self._sealer, agent_id)
        labels = _NO_LABELS if agent is None else MappingProxyType(dict(agent.labels))
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[agent_id] = (labels, now)
        return labels

    def forget(self, agent_id: str | None = None) -> None:
        """Drop one agent's cached labels (or all)."""
        if agent_id is None:
            self._cache.clear()
        else:
            self._cache.pop(agent_id, None)


@dataclass(frozen=True, slots=True)
class Services:
    """What a front-end needs from the node; built once by the node and shared."""

    policies: PolicyHolder
    identity: IdentityService
    secrets: SecretStore
    targets: TargetStore
    agents: AgentLabels
    auditor: Auditor | None = None
    approvals: ApprovalService | None = None  # grants and access requests (tether.approvals)


def actor_chain(claims: Claims) -> tuple[str, ...]:
    """The actors of a delegated token, outermost first (empty when not delegated)."""
    chain: list[str] = []
    actor = claims.act
    while actor is not None:
        chain.append(actor.sub)
        actor = actor.act
    return tuple(chain)


def subject_of(
    claims: Claims, *, source_ip: str | None = None, session_id: str | None = None
) -> Subject:
    """The audit subject of the holder of ``claims``."""
    delegated = claims.agent is not None
    return Subject(
        agent=claims.agent_id,
        runtime=claims.runtime.id,
        task=claims.task.id,
        user=claims.sub if delegated else None,
        actor_chain=actor_chain(claims),
        source_ip=source_ip,
        session_id=session_id,
    )


def policy_request(
    claims: Claims,
    agent_labels: Mapping[str, str],
    target: Target,
    action: Mapping[str, Any],
    *,
    source_ip: str | None = None,
    approvals: Iterable[str] = (),
) -> dict[str, Any]:
    """The spec request (shared/spec/policy.md section 2) for one action.

    ``action`` is the one-key action object (``{"http": {...}}``, ``{"ssh": {...}}``...).
    """
    request: dict[str, Any] = {
        "agent": {"id": claims.agent_id, "labels": dict(agent_labels)},
        "runtime": {"id": claims.runtime.id, "labels": dict(claims.runtime.labels)},
        "task": {"id": claims.task.id, "purpose": claims.task.purpose},
        "scope": {"targets": list(claims.scope)},
        "target": {"name": target.name, "labels": dict(target.labels)},
        "action": dict(action),
    }
    delegation = delegation_of(claims)  # the user the agent acts for (``sub``), and a chain's
    if delegation is not None:  # earlier users: decide() decides for each of them
        request["delegation"] = delegation
    if source_ip is not None:
        request["source_ip"] = source_ip
    held = list(approvals)
    if held:
        request["approvals"] = held
    return request


def decide(
    services: Services, request: Mapping[str, Any], *, default_schema: str = "public"
) -> Decision:
    """The decision of the policy set in force now, for every user of a delegation chain
    (:mod:`tether.policychain`); never raises (fails closed)."""
    return policychain.decide(services.policies.current, request, default_schema=default_schema)


def undecided(services: Services, error: Exception) -> Decision:
    """The refusal of an action no decision could be made for: the grants of an approval
    rule could not be read or its access request raised (the store failed, or the request
    lost its race every time: ``Conflict``, the agent's to retry). A deny, so the front-end
    refuses and audits it as any other; the error itself goes to the server log."""
    if isinstance(error, Conflict):
        return Decision(DENY, None, APPROVAL_CONFLICT, str(error), _version(services))
    log.error("no decision could be made: %r", error, exc_info=error)
    detail = "no decision could be made; see the server log"
    return Decision(DENY, None, INTERNAL_ERROR, detail, _version(services))


def _version(services: Services) -> str:
    return services.policies.current.version
