"""The session's policy: one request template per session, and its decision cache.

:class:`SessionPolicy` is what the session machine (:mod:`tether.proxy.pg.session`) asks
(:class:`~tether.proxy.pg.commands.Policy`): the request is built once per session from the
agent's claims and labels and the target, and each query is decided by the policy set in
force, with the grants the session holds applied (:mod:`tether.proxy.pg.approvals`).

Security decisions (the cache):

* Decisions are cached per exact query text and default schema, or per statement shape
  (:func:`~tether.proxy.pg.deciding.shape_of`: the facts of the parsed text that the
  engine's SQL matching reads) and default schema when the decider gives one, while nothing
  they depend on can change: the cache belongs to one policy set (another set in force
  empties it), holds only for the session's context as it is (new agent labels empty it),
  and is not used at all when the set has a rule with a ``when`` condition (which may read
  the clock or the query text). Inside those bounds the engine is a pure function of the
  request, and of a query only through its shape, so a cached decision is the one it would
  make again.
* The cache is bounded: at most :data:`CACHED_DECISIONS` entries per session (it is emptied
  when full), and texts longer than :data:`CACHED_QUERY_CHARS` are never cached.
* A cached ``approval_required`` is resolved against the held grants on every use, never
  served as it was.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any, Final

from tether import policychain
from tether.policy.model import APPROVAL_REQUIRED
from tether.proxy.core import Services
from tether.proxy.pg.approvals import SessionApprovals

if TYPE_CHECKING:
    from tether.policy.model import Decision

CACHED_DECISIONS: Final = 512  # per session
CACHED_QUERY_CHARS: Final = 4096


class SessionPolicy:
    """The session's :class:`~tether.proxy.pg.commands.Policy` (see the module docstring)."""

    def __init__(
        self,
        services: Services,
        base: dict[str, Any],
        database: str,
        approvals: SessionApprovals | None = None,
    ) -> None:
        self.services = services
        self.base = base
        self.database = database
        self.approvals = approvals  # grants held by the session (tether.proxy.pg.approvals)
        self._set: object = None
        self._cacheable = False
        self._cache: dict[tuple[Hashable, str], Decision] = {}

    def decide(self, query: str, default_schema: str, shape: Hashable | None = None) -> Decision:
        current = self.services.policies.current
        if current is not self._set:
            self._set = current
            self._cache.clear()
            self._cacheable = all(rule.when is None for rule in current.rules)
        key: tuple[Hashable, str] = (query if shape is None else shape, default_schema)
        cacheable = self._cacheable and len(query) <= CACHED_QUERY_CHARS
        if cacheable:
            hit = self._cache.get(key)
            if hit is not None:
                if self.approvals is not None and hit.decision == APPROVAL_REQUIRED:
                    return self._approved(hit, query, default_schema)
                return hit
        request = dict(self.base)
        request["action"] = {"sql": {"query": query, "database": self.database}}
        decision = policychain.decide(current, request, default_schema=default_schema)
        if cacheable:
            if len(self._cache) >= CACHED_DECISIONS:
                self._cache.clear()
            self._cache[key] = decision
        if self.approvals is not None and decision.decision == APPROVAL_REQUIRED:
            return self._approved(decision, query, default_schema)
        return decision

    def _approved(self, decision: Decision, query: str, default_schema: str) -> Decision:
        """``decision`` with the session's grants applied (``approval_required`` only)."""
        assert self.approvals is not None
        request = dict(self.base)
        request["action"] = {"sql": {"query": query, "database": self.database}}
        return self.approvals.resolve(decision, request, default_schema)

    def set_labels(self, agent_id: str, labels: Mapping[str, str]) -> None:
        """The agent's labels as they are now (the cache is emptied if they changed)."""
        agent = {"id": agent_id, "labels": dict(labels)}
        if agent != self.base.get("agent"):
            self.base["agent"] = agent
            self._cache.clear()

    def current(self) -> object:
        if self.approvals is not None and self.approvals.active():
            return self.approvals.epoch()  # changes with the held grants too
        return self.services.policies.current
