"""The in-memory revocation set every front-end consults on every use of a credential.

Revocations live in the store (``revocations`` table); each node keeps a copy in memory,
filled at start and then refreshed by polling entries past a cursor (ids follow commit
order, see :mod:`tether.store.credentials`). A node's own revocations are applied at once,
before the API answers, and other nodes' within one poll interval (one second by default):
that bound is what "a revocation ends live sessions within a second" relies on, since
front-ends re-check live sessions on the same interval.

A revoked token id also names a renewal family (:mod:`tether.identity.claims`): a family is
named by the jti of its first token, and revoking any token of it revokes that jti too
(:meth:`tether.identity.service.IdentityService.revoke`), so the family travels to every
node as one more ``token`` entry of the same table and cursor, and each token's ``family``
is looked up among revoked token ids like its own jti.

Revocation is permanent for every kind: a revoked token id, agent, task or runtime is never
accepted again (``tether agent disable`` is the reversible switch). Entries are only pruned
by the store after everything they could affect has expired.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tether.identity.claims import Claims
from tether.store.credentials import Revocation

KINDS = ("token", "agent", "task", "runtime")


@dataclass
class RevocationSet:
    """Revoked values by kind, and the store cursor they are current up to."""

    cursor: int = 0
    _revoked: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in KINDS})

    def apply(self, entries: Iterable[Revocation], cursor: int | None = None) -> None:
        for entry in entries:
            self._revoked[entry.kind].add(entry.value)
        if cursor is not None and cursor > self.cursor:
            self.cursor = cursor

    def add(self, kind: str, value: str) -> None:
        self._revoked[kind].add(value)

    def __contains__(self, item: tuple[str, str]) -> bool:
        kind, value = item
        return value in self._revoked[kind]

    def reason(self, claims: Claims) -> str | None:
        """Why ``claims`` is revoked (naming the kind), or None when it is not.

        A token derived from others (delegation, re-scoping of a delegated token,
        certificate binding) names each of them (``derived_from``, bounded by
        ``MAX_DERIVED_FROM``): revoking any of them, or disabling a user of the chain, which
        revokes that user's delegated tokens, ends it, at a set lookup per ancestor. The users
        of a delegation chain are revoked through their tokens; the one agent of the chain
        (the innermost actor) is ``agent_id``, checked as the agent. The renewals and
        re-scopings of an agent's own token carry its ``family`` instead (its first token's
        jti, revoked with any token of the family): one more set lookup, however long the
        chain.
        """
        revoked = self._revoked
        tokens = revoked["token"]
        if claims.jti in tokens:
            return "the token is revoked"
        if claims.family is not None and claims.family in tokens:
            return "a token of its renewal family is revoked"
        if claims.parent_jti is not None and claims.parent_jti in tokens:
            return "the token it was issued from is revoked"
        for jti in claims.derived_from:
            if jti in tokens:
                return "the token it was derived from is revoked"
        return self.issuance_reason(claims.agent_id, claims.task.id, claims.runtime.id)

    def issuance_reason(self, agent_id: str, task_id: str, runtime_id: str) -> str | None:
        """Why a credential for this agent, task and runtime must not be issued (one of
        them is revoked), or None: checked before a grant consumes anything."""
        revoked = self._revoked
        if agent_id in revoked["agent"]:
            return "the agent is revoked"
        if task_id in revoked["task"]:
            return "the task is revoked"
        if runtime_id in revoked["runtime"]:
            return "the runtime is revoked"
        return None

    def __len__(self) -> int:
        return sum(len(v) for v in self._revoked.values())
