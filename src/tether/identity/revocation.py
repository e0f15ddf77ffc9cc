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

Every read is checked against the sealed revocation ledger read in the same statement
(:mod:`tether.store.revocation_ledger`): the whole list at the first load, then each poll's
new entries as a continuation of the ledger the node trusts, the whole list again whenever
they are not. A list that does not verify (a revocation deleted, changed or planted behind
Tether's back) turns the set *unverified*, and every credential is refused until it verifies
again.

A database put back whole as it was earlier (ledger included) verifies, and would forget
the revocations made since: a running node never does (its set only grows), and a
restarted one holds again what its own copy recorded (:mod:`tether.identity.revocation_copy`).
Whatever the set holds that a whole read lacks, though still in force, is :attr:`missing`:
still honoured, and reported.

Revocation is permanent for every kind: a revoked token id, agent, task or runtime is never
accepted again (``tether agent disable`` is the reversible switch). Entries are only pruned
by the store after everything they could affect has expired.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from tether.crypto.seal import RowSealer
from tether.identity.claims import Claims
from tether.identity.revocation_copy import KINDS, Held
from tether.store import revocation_ledger as ledger
from tether.store.credentials import Revocation, RevocationRead
from tether.store.revocation_ledger import Ledger

__all__ = ["KINDS", "NOT_LOADED", "UNVERIFIED", "RevocationSet"]

UNVERIFIED = "the revocation list does not verify"
NOT_LOADED = "the revocation list is not loaded"


@dataclass
class RevocationSet:
    """Revoked values by kind, and the store cursor they are current up to.

    ``trusted`` is the revocation ledger (:mod:`tether.store.revocation_ledger`) the set is
    known to be complete against; while there is none (before the first load, or after a
    load that did not match its ledger) ``unverified`` says so, and every credential and
    every issuance is refused (:meth:`reason`, :meth:`issuance_reason`, ``in``): a node
    cannot tell which revocation is missing, so it honours none of its credentials.
    """

    cursor: int = 0
    _revoked: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in KINDS})
    trusted: Ledger | None = None
    unverified: str | None = NOT_LOADED
    # Every entry held, with its expiry (None: forever), for the copy and for `missing`.
    _expiry: dict[tuple[str, str], float | None] = field(default_factory=dict)
    # Entries held, in force, that the last whole read lacked (and no read has brought back).
    _missing: set[tuple[str, str]] = field(default_factory=set)
    # Bumped whenever an entry is held anew or its expiry grows: the copy is behind.
    version: int = 0

    def apply(self, entries: Iterable[Revocation], cursor: int | None = None) -> None:
        for entry in entries:
            expires = None if entry.expires_at is None else entry.expires_at.timestamp()
            self._hold(entry.kind, entry.value, expires)
        if cursor is not None and cursor > self.cursor:
            self.cursor = cursor

    def hold(self, entries: Iterable[Held]) -> None:
        """Honour ``entries`` (a node's copy, read at start) as if the store held them."""
        for entry in entries:
            self._hold(entry.kind, entry.value, entry.expires_at)

    def _hold(self, kind: str, value: str, expires: float | None) -> None:
        self._revoked[kind].add(value)
        key = (kind, value)
        if key not in self._expiry:
            self._expiry[key] = expires
            self.version += 1
            return
        known = self._expiry[key]
        if known is not None and (expires is None or expires > known):
            self._expiry[key] = expires  # the longer-lived entry wins: never weakened
            self.version += 1

    def take(
        self,
        read: RevocationRead,
        sealer: RowSealer,
        *,
        whole: bool = False,
        now: datetime | None = None,
    ) -> str | None:
        """Apply ``read``'s entries (always: honouring more revocations is safe) and check
        them against the ledger read with them; None when they verify, else why not.

        ``whole``: ``read`` holds every entry, which must be exactly what the ledger
        accounts for; otherwise it holds the entries after :attr:`cursor`, which must take
        the trusted ledger to the one read. A whole read that does not verify turns the set
        unverified; a partial one leaves that to the caller's whole read. A whole read also
        recomputes :attr:`missing` (entries in force at ``now`` it lacks; without ``now``,
        every entry held counts as in force)."""
        self.apply(read.entries, read.cursor)
        read_keys = {(entry.kind, entry.value) for entry in read.entries}
        if whole:
            self._missing = self._in_force(now) - read_keys
        else:
            self._missing -= read_keys
        held = ledger.verified(sealer, read.ledger)
        if isinstance(held, str):
            problem: str | None = held
        elif whole:
            problem = None if ledger.matches(sealer, held, read.rows) else ledger.MISMATCH
        elif self.trusted is None:
            problem = NOT_LOADED
        else:
            fits = ledger.continues(sealer, self.trusted, read.rows, held)
            problem = None if fits else ledger.MISMATCH
        if problem is None:
            self.trusted, self.unverified = held if isinstance(held, Ledger) else None, None
        elif whole:
            self.trusted, self.unverified = None, UNVERIFIED
        return problem

    def forget_expired(self, before: datetime) -> int:
        """Stop holding the entries whose expiry came before ``before`` (the moment the
        store prunes them too: they can only affect credentials that expired by then), so
        that a node's memory does not grow with every join token used; how many."""
        moment = before.timestamp()
        gone = [key for key, expires in self._expiry.items()
                if expires is not None and expires <= moment]  # fmt: skip
        for key in gone:
            del self._expiry[key]
            self._revoked[key[0]].discard(key[1])
            self._missing.discard(key)
        return len(gone)

    def _in_force(self, now: datetime | None) -> set[tuple[str, str]]:
        moment = None if now is None else now.timestamp()
        return {
            key
            for key, expires in self._expiry.items()
            if expires is None or moment is None or expires > moment
        }

    def missing(self, now: datetime) -> list[Held]:
        """The entries this set honours, still in force at ``now``, that the last whole read
        of the store lacked: the store was put back to an earlier state (or they were
        removed and the ledger rebuilt). Sorted by kind and value."""
        moment = now.timestamp()
        return [
            Held(kind, value, self._expiry[(kind, value)])
            for kind, value in sorted(self._missing)
            if (expires := self._expiry[(kind, value)]) is None or expires > moment
        ]

    def held(self, now: datetime) -> list[Held]:
        """Every entry still in force at ``now`` (what a node's copy records)."""
        return [
            Held(kind, value, self._expiry[(kind, value)])
            for kind, value in sorted(self._in_force(now))
        ]

    def add(self, kind: str, value: str, expires: float | None = None) -> None:
        """Honour a revocation this node just committed, until ``expires`` (a POSIX time;
        None, as ``revoke`` makes them: forever)."""
        self._hold(kind, value, expires)

    def refusal(self, kind: str, value: str, revoked: str) -> str | None:
        """Why a credential known by ``(kind, value)`` is refused: :attr:`unverified` while
        the list does not verify (it refuses all, and says so), ``revoked`` when the value
        is revoked, else None."""
        if self.unverified is not None:
            return self.unverified
        return revoked if value in self._revoked[kind] else None

    def holds(self, kind: str, value: str) -> bool:
        """Whether ``(kind, value)`` is revoked here, whether or not the list verifies (for
        credentials that the state of the list does not otherwise govern: admin and
        personal tokens)."""
        return value in self._revoked[kind]

    def __contains__(self, item: tuple[str, str]) -> bool:
        if self.unverified is not None:
            return True
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
        if self.unverified is not None:
            return self.unverified
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
        if self.unverified is not None:
            return self.unverified
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
