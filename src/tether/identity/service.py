"""The identity service: who an agent is, the credentials it gets, and their every use.

This is the one authorization sequence for credentials (STYLE 4): every front-end calls
:meth:`IdentityService.authenticate` with what the agent presented, and gets either the
verified :class:`~tether.identity.claims.Claims` or a
:class:`~tether.identity.errors.CredentialError` — signature, expiry, audience, issuer,
proof of possession (DPoP or certificate binding), revocation and the agent's state are all
checked there, on every use, so no front-end can forget one.

The token endpoint (:meth:`IdentityService.exchange`) is in :mod:`tether.identity.grants`,
which documents what each grant checks before it issues a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.revisions import RowRevisions
from tether.identity import grants
from tether.identity.agentstates import AgentStates
from tether.identity.certbind import check_binding, x5t_s256
from tether.identity.certificates import CertificateIssuer
from tether.identity.claims import Claims, Confirmation
from tether.identity.dpop import DPoPResult, DPoPVerifier
from tether.identity.errors import (
    CredentialError,
    IssuanceError,
    ReplayDetected,
    TokenInvalid,
    TokenRevoked,
)
from tether.identity.grants import JOIN_TOKEN_PREFIX
from tether.identity.issued import (
    IdentitySettings,
    IssuedToken,
    Presented,
    credential_record,
)
from tether.identity.keystore import TetherKeys, rotate_access_key
from tether.identity.replay import MemoryReplayCache, ReplayCheckFailed, shared_memory_cache
from tether.identity.revision_copy import RevisionCopy
from tether.identity.revocation import UNVERIFIED, RevocationSet
from tether.identity.revocation_copy import RevocationCopy
from tether.identity.tokens import TokenIssuer, TokenVerifier
from tether.identity.workload import TrustedIssuers
from tether.identity.x509ca import spiffe_ids_of
from tether.store import agents as agent_store
from tether.store import credentials as cred_store
from tether.store import keys as key_store
from tether.store import replay as replay_store
from tether.store.identity import AGENTS, AgentNotActive, UserDisabled, digest

log = logging.getLogger(__name__)

_ENDED_LISTED = 100  # live credentials a token revocation lists as ended, at most
_REPLAY_PRUNE_EVERY = 60.0  # seconds between deletions of expired rows of dpop_replay
# A row of dpop_replay is deleted this long after it expired by the pruning node's clock: a
# node whose clock is behind still accepts the proof for as long as it lags, and must still
# find its row (a row kept longer costs nothing; the one deleted early let a replay in).
REPLAY_PRUNE_MARGIN = timedelta(minutes=5)
_REVOCATION_PRUNE_EVERY = 600.0  # seconds between prunes of expired revocations
# A revocation is pruned this long after its expires_at (the expiry of the longest credential
# it can affect): far beyond the verifier's leeway and any clock skew between nodes.
REVOCATION_PRUNE_MARGIN = timedelta(hours=1)
_RECORDS_PER_PRUNE = 100_000  # records deleted at most a run; the next run goes on


@dataclass(frozen=True)
class Revoked:
    """What :meth:`IdentityService.revoke_reporting` did: ``created`` when the entry is new;
    for a token, the renewal ``family`` revoked with it (its own jti when it has none) and
    the ids of the live credentials it ended (``more``: there were more than listed)."""

    created: bool
    family: str | None = None
    ended: tuple[str, ...] = ()
    more: bool = False


class IdentityService:
    """Issues, verifies and revokes Tether's credentials over the store."""

    def __init__(
        self,
        engine: AsyncEngine,
        keys: TetherKeys,
        cipher: EnvelopeCipher,
        settings: IdentitySettings,
        *,
        issuers: TrustedIssuers | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        revocation_copy: RevocationCopy | None = None,
        revision_copy: RevisionCopy | None = None,
    ) -> None:
        self.engine, self.keys, self.cipher, self.settings = engine, keys, cipher, settings
        # Row seals under the master key (tether.crypto.seal), remembering the newest
        # revision of each row admitted (tether.crypto.revisions): this node's, kept in
        # its file when it serves (tether.identity.revision_copy).
        self.revision_copy = revision_copy
        if revision_copy is not None:
            revisions = revision_copy.revisions
        else:  # a node's cipher may already be witnessed (tether.node.open_identity)
            revisions = cipher.sealer.revisions or RowRevisions()
        self.sealer = cipher.sealer.witnessed(revisions)
        self.clock = clock
        self.issuers = issuers or TrustedIssuers([])

        def seconds() -> float:
            return clock().timestamp()

        self.tokens = TokenIssuer(
            keys.ring,
            issuer=settings.issuer,
            audience=settings.audience,
            clock=seconds,
            default_lifetime=settings.token_lifetime,
            max_lifetime=settings.max_token_lifetime,
        )
        self.verifier = TokenVerifier(
            keys.ring, issuer=settings.issuer, audience=settings.audience, clock=seconds
        )
        # DPoP replays (tether.identity.replay): PostgreSQL nodes check a cache of their own
        # and then the shared table; on SQLite the one process's services share one cache.
        self.shared_replay = replay_store.is_shared(engine)
        if not self.shared_replay and engine.dialect.name == "sqlite":
            self.replay_cache = shared_memory_cache(engine.url.database or "", seconds)
        else:
            self.replay_cache = MemoryReplayCache(seconds)
        self.dpop = DPoPVerifier(clock=seconds, replay_cache=self.replay_cache)
        self._maintained_at: dict[str, float] = {}  # maintain(): when each job last ran
        self.revoked = RevocationSet()
        # The node's copy of the revocations in force, outside the database (a serving
        # node's; tether.identity.revocation_copy), and how many of them it last reported
        # missing from the database.
        self.revocation_copy = revocation_copy
        self._missing_reported = 0
        self.certificates = CertificateIssuer(keys, settings, clock)
        # Agents' states, read single-flight and refreshed by watch_revocations.
        self.agent_states = AgentStates(engine, self.sealer, settings.revocation_poll, seconds)
        # Called with (kind, value, reason) after a revocation here (approvals cancel theirs).
        self.revocation_listeners: list[Callable[[str, str, str], Awaitable[object]]] = []

    # --- every use ----------------------------------------------------------------------------

    async def authenticate(self, presented: Presented) -> Claims:
        """The verified claims of a presented token, or ``CredentialError`` (fails closed)."""
        claims = self.verifier.verify(presented.token)
        if claims.cnf.jkt is not None:
            await self.verify_proof(
                presented.dpop,
                htm=presented.method,
                htu=presented.url,
                access_token=presented.token,
                expected_jkt=claims.cnf.jkt,
            )
        else:
            if presented.peer_certificate_der is None:
                raise TokenInvalid("a certificate-bound token needs the client certificate")
            check_binding(claims, presented.peer_certificate_der)
            refused = self.revoked.refusal(
                "token",
                certificate_id(presented.peer_certificate_der),
                "the certificate is revoked",
            )
            if refused is not None:
                raise TokenRevoked(refused)
        await self.check_live(claims)
        return claims

    async def verify_proof(
        self,
        proof: str | None,
        *,
        htm: str,
        htu: str,
        access_token: str | None = None,
        expected_jkt: str | None = None,
    ) -> DPoPResult:
        """Every check of a DPoP proof, its replay on any node included.

        ``ReplayDetected`` when its jti was used (here or, on PostgreSQL, on any node);
        ``ReplayCacheFull`` (``ReplayCheckFailed`` for a database error: fail closed)
        when the check cannot be made.
        """
        # Every check, then this node's replay cache (cheap: a replay to this very node).
        result = self.dpop.verify(
            proof, htm=htm, htu=htu, access_token=access_token, expected_jkt=expected_jkt
        )
        key, expires = result.replay_key, result.replay_expires_at
        if self.shared_replay:
            try:
                async with self.engine.begin() as conn:
                    fresh = await replay_store.claim(
                        conn, key, datetime.fromtimestamp(expires, UTC), self.clock()
                    )
            except (SQLAlchemyError, OSError) as error:
                log.error("the shared DPoP replay check failed: %s", error)
                raise ReplayCheckFailed("the shared DPoP replay check failed") from None
            if not fresh:
                raise ReplayDetected()
        return result

    async def prune_replays(self) -> int:
        """Delete the rows of the shared replay table (PostgreSQL) expired for more than
        :data:`REPLAY_PRUNE_MARGIN`; how many."""
        if not self.shared_replay:
            return 0
        async with self.engine.begin() as conn:
            return await replay_store.prune(conn, self.clock() - REPLAY_PRUNE_MARGIN)

    async def check_live(self, claims: Claims) -> None:
        """Revocation and agent state: what a live session re-checks every second."""
        reason = self.revoked.reason(claims)
        if reason is not None:
            raise TokenRevoked(reason)
        state = await self._agent_state(claims.agent_id)
        if state != "active":
            raise TokenRevoked(f"the agent is {state}")

    async def _agent_state(self, agent_id: str) -> str:
        return await self.agent_states.get(agent_id)

    # --- agents' state ------------------------------------------------------------------------

    async def set_agent_state(
        self, agent_id: str, state: Literal["active", "disabled"]
    ) -> agent_store.Agent | None:
        """Enable or disable an agent (None: unknown or offboarded); effective here at once.
        :class:`agent_store.AgentUnverified` when enabling an agent whose row does not
        verify (docs/vault.md, "Tampering with the database")."""
        async with self.engine.begin() as conn:
            agent = await agent_store.set_agent_state(
                conn, self.sealer, agent_id, state, self.clock()
            )
        if agent is not None:
            await self._written(AGENTS, agent_id, agent.revision)
        self.agent_states.forget(agent_id)
        return agent

    async def offboard(
        self, agent_id: str, *, reason: str, by: str
    ) -> agent_store.Offboarding | None:
        """Offboard an agent: final state, agent revocation, unused join tokens expired."""
        async with self.engine.begin() as conn:
            done = await agent_store.offboard_agent(
                conn, self.sealer, agent_id, reason=reason, revoked_by=by, now=self.clock()
            )
        if done is not None:
            self.revoked.add("agent", agent_id)
            await self.save_revocation_copy()
            await self._written(AGENTS, agent_id, done.agent.revision)
            self.agent_states.forget(agent_id)
            await self._notify_revocation("agent", agent_id, reason)
        return done

    async def _written(self, table: str, key: str, revision: int) -> None:
        """A row this node just changed: never admit an older one again, here or after a
        restart (its file is written before the change is answered)."""
        self.sealer.saw(table, key, revision)
        await self.save_revision_copy()

    def hold_revision_copy(self) -> int:
        """Honour what the node's revisions file records (at start, before anything is
        read); how many marks. :class:`RevisionCopyError` when it does not parse."""
        return 0 if self.revision_copy is None else self.revision_copy.hold()

    async def save_revision_copy(self) -> None:
        """Bring the node's revisions file up to date (when a mark moved)."""
        if self.revision_copy is not None:
            await self.revision_copy.save()

    # --- revocation ---------------------------------------------------------------------------

    async def revoke(
        self, kind: cred_store.RevocationKind, value: str, *, reason: str, by: str
    ) -> bool:
        """Revoke a token id, agent, task or runtime; True when newly revoked."""
        return (await self.revoke_reporting(kind, value, reason=reason, by=by)).created

    async def revoke_reporting(
        self, kind: cred_store.RevocationKind, value: str, *, reason: str, by: str
    ) -> Revoked:
        """Revoke a token id, agent, task or runtime, and say what it ended.

        Revoking an access token revokes its whole renewal family (:mod:`tether.identity
        .claims`): the family's first token, whose jti names the family, is revoked in the
        same transaction, so that every node refuses every token carrying the family within
        one poll, older and newer than the one revoked alike. A token recorded without a
        family (issued before families existed) is revoked alone, as before; renewals of it
        made since name it as their family and end with it. A certificate revoked by its id
        is revoked alone: it is no member of a family.
        """
        now = self.clock()
        values = [value]
        async with self.engine.begin() as conn:
            family = await cred_store.family_of(conn, value) if kind == "token" else None
            _entry, created = await cred_store.insert_revocation(
                conn, self.sealer, kind=kind, value=value, reason=reason, revoked_by=by, now=now
            )
            if family is not None and family != value:
                await cred_store.insert_revocation(
                    conn, self.sealer, kind="token", value=family, revoked_by=by, now=now,
                    reason=f"{reason} (renewal family of token {value})",
                )  # fmt: skip
                values.append(family)
        for revoked in values:
            self.revoked.add(kind, revoked)
        await self.save_revocation_copy()
        for revoked in values:
            await self._notify_revocation(kind, revoked, reason)
        ended: list[str] = []
        if kind == "token":  # for the report only: read after the commit, not under its lock
            async with self.engine.connect() as conn:
                ended = await cred_store.live_lineage(
                    conn, value, family or value, now, _ENDED_LISTED + 1
                )
        return Revoked(
            created,
            family=family or (value if kind == "token" else None),
            ended=tuple(ended[:_ENDED_LISTED]),
            more=len(ended) > _ENDED_LISTED,
        )

    async def _notify_revocation(self, kind: str, value: str, reason: str) -> None:
        for listener in self.revocation_listeners:
            await listener(kind, value, reason)

    async def refresh_revocations(self) -> int:
        """Apply the entries added since the last refresh, checked against the sealed
        revocation ledger (:mod:`tether.store.revocation_ledger`): every entry the first
        time, and whenever the new ones do not continue the ledger this node trusts.
        While they do not verify, every credential is refused (``RevocationSet.unverified``);
        the change either way is logged once, as is a change in how many revocations this
        node holds that the database lacks (:meth:`RevocationSet.missing`). The node's copy
        follows. Returns how many entries were read."""
        was = self.revoked.unverified
        problem: str | None = "not trusted yet"
        if self.revoked.trusted is not None:
            read = await self._read_revocations(self.revoked.cursor)
            problem = self.revoked.take(read, self.sealer)
        if problem is not None:
            read = await self._read_revocations(0)
            problem = self.revoked.take(read, self.sealer, whole=True, now=self.clock())
        if problem is not None and was != UNVERIFIED:  # at start, or a list that verified
            log.error("every credential is refused: %s (docs/vault.md, Tampering with the "
                      "database)", problem)  # fmt: skip
        elif problem is None and was == UNVERIFIED:
            log.warning("the revocation list verifies again: credentials are accepted")
        self._report_missing()
        await self.save_revocation_copy()
        return len(read.entries)

    def _report_missing(self) -> None:
        missing = self.revoked.missing(self.clock())
        if len(missing) == self._missing_reported:
            return
        self._missing_reported = len(missing)
        if missing:
            first = missing[0]
            log.error(
                "%d revocation(s) this node holds, still in force, are missing from the "
                "database (the first: %s %r); they are still honoured here. The database was "
                "put back to an earlier state, or they were deleted and the ledger rebuilt: "
                "revoke them again (docs/vault.md, Tampering with the database)",
                len(missing), first.kind, first.value,
            )  # fmt: skip
        else:
            log.warning("every revocation this node holds is in the database again")

    @property
    def revocations_missing(self) -> int:
        """How many revocations in force this node holds that the database lacks."""
        return len(self.revoked.missing(self.clock()))

    def hold_revocation_copy(self) -> int:
        """Honour what the node's copy records (at start, before the first refresh); how
        many entries. :class:`RevocationCopyError` when the copy does not parse."""
        if self.revocation_copy is None:
            return 0
        held = self.revocation_copy.load()
        self.revoked.hold(held)
        return len(held)

    async def save_revocation_copy(self, *, force: bool = False) -> None:
        """Bring the node's copy up to date (``force``: rewrite it, dropping expired ones)."""
        if self.revocation_copy is None:
            return
        now = self.clock()
        revoked = self.revoked
        await self.revocation_copy.save(revoked.version, lambda: revoked.held(now), force=force)

    async def _read_revocations(self, after: int) -> cred_store.RevocationRead:
        async with self.engine.connect() as conn:
            return await cred_store.read_revocations(conn, after)

    async def watch_revocations(self, stop: asyncio.Event) -> None:
        """Poll the store until ``stop`` is set (one poll interval bounds propagation):
        revocations, and the state of every agent in the cache, so that requests find
        their agent's state fresh instead of reading it themselves."""
        while not stop.is_set():
            try:
                await self.refresh_revocations()
                await self.agent_states.refresh()
                await self.save_revision_copy()
            except Exception as error:  # noqa: BLE001 - keep polling; the next poll retries
                log.error("refreshing revocations failed: %s", error)
            await self.maintain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.revocation_poll)

    async def prune_revocations(self) -> int:
        """Delete the revocations whose ``expires_at`` passed more than
        :data:`REVOCATION_PRUNE_MARGIN` ago, accounted for in the revocation ledger (nothing
        is pruned while the list does not verify); how many. This node stops holding them
        in memory too (the others at their own prune): they affect only credentials that
        expired."""
        async with self.engine.begin() as conn:
            cutoff = self.clock() - REVOCATION_PRUNE_MARGIN
            pruned = await cred_store.prune_revocations(conn, self.sealer, cutoff)
        if pruned:
            log.info("pruned %d expired revocation(s)", pruned)
        self.revoked.forget_expired(cutoff)
        return pruned

    async def prune_records(self) -> int:
        """Delete the records of credentials and join tokens that expired more than
        ``record_retention`` seconds ago (a credential's only once its whole renewal family
        did), :data:`_RECORDS_PER_PRUNE` at most a run, a thousand a transaction; how many.
        Nothing with a retention of 0."""
        if not self.settings.record_retention:
            return 0
        cutoff = self.clock() - timedelta(seconds=self.settings.record_retention)
        deleted = 0
        for prune in (cred_store.prune_records, agent_store.prune_join_tokens):
            while deleted < _RECORDS_PER_PRUNE:
                async with self.engine.begin() as conn:
                    count = await prune(conn, cutoff)
                deleted += count
                if count == 0:
                    break
        if deleted:
            log.info("deleted %d record(s) of credentials and join tokens expired before %s",
                     deleted, cutoff.isoformat())  # fmt: skip
        return deleted

    async def maintain(self) -> None:
        """The watcher's periodic deletions: expired DPoP replay rows (a shared replay
        table, every minute), expired revocations, the expired entries of the node's
        revocation copy, and records past their retention (every ten minutes)."""
        if self.shared_replay:
            await self._now_and_then(
                "replays", _REPLAY_PRUNE_EVERY, self.prune_replays,
                "deleting expired DPoP replay entries",
            )  # fmt: skip
        await self._now_and_then(
            "revocations", _REVOCATION_PRUNE_EVERY, self.prune_revocations,
            "pruning expired revocations",
        )  # fmt: skip
        if self.revocation_copy is not None:
            await self._now_and_then(
                "revocation copy", _REVOCATION_PRUNE_EVERY, self._rewrite_copy,
                "rewriting the revocation copy",
            )  # fmt: skip
        await self._now_and_then(
            "records", _REVOCATION_PRUNE_EVERY, self.prune_records,
            "deleting records past identity.record_retention",
        )  # fmt: skip

    async def _rewrite_copy(self) -> int:
        await self.save_revocation_copy(force=True)  # drops the entries that expired
        return 0

    async def _now_and_then(
        self, name: str, every: float, work: Callable[[], Awaitable[int]], what: str
    ) -> None:
        now = self.clock().timestamp()
        last = self._maintained_at.get(name)
        if last is not None and now - last < every:
            return
        self._maintained_at[name] = now
        try:
            await work()
        except Exception as error:  # noqa: BLE001 - keep polling; the next run retries
            log.error("%s failed: %s", what, error)

    async def rotate_keys(self) -> str:
        """Rotate the access-token signing key; returns the new kid. The keys' rows are read
        again once it committed, so that this node (and its file, before answering) never
        admits the old key's earlier row again."""
        key = await rotate_access_key(
            self.engine, self.cipher, self.keys.ring, self.clock(), sealer=self.sealer
        )
        async with self.engine.connect() as conn:
            await key_store.sealed_signing_keys(conn, self.sealer, "access-token")
        await self.save_revision_copy()
        return key.kid

    # --- join tokens --------------------------------------------------------------------------

    async def create_join_token(
        self,
        agent_id: str,
        *,
        runtime_labels: Mapping[str, str] | None = None,
        ttl: int | None = None,
    ) -> tuple[str, agent_store.JoinToken]:
        """A one-time join token for ``agent_id``: the secret (shown once) and its record.

        ``AgentNotActive`` for an agent that is not active, or revoked (its state may still
        read ``active``: a join token for it could never be exchanged), or while the
        revocation list does not verify."""
        refused = self.revoked.refusal("agent", agent_id, f"agent {agent_id!r} is revoked")
        if refused is not None:
            raise AgentNotActive(refused)
        ttl = ttl or self.settings.join_token_ttl
        if not 0 < ttl <= 86400:
            raise ValueError("a join token lives between 1 second and 1 day")
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        now = self.clock()
        async with self.engine.begin() as conn:
            record = await agent_store.insert_join_token(
                conn, self.sealer, id=token_id, token_hash=digest(secret), agent_id=agent_id,
                now=now, expires_at=now + timedelta(seconds=ttl), runtime_labels=runtime_labels,
            )  # fmt: skip
        return f"{JOIN_TOKEN_PREFIX}{token_id}.{secret}", record

    # --- the token endpoint -------------------------------------------------------------------

    async def exchange(
        self, form: Mapping[str, str], *, dpop: str | None, url: str, address: str | None = None
    ) -> IssuedToken:
        """RFC 8693 token exchange; ``ExchangeError`` (HTTP 400) or ``CredentialError``."""
        return await grants.exchange(self, form, dpop=dpop, url=url, address=address)

    async def record_credential(self, credential: cred_store.Credential) -> None:
        """Record an issued credential; ``TokenRevoked`` if its agent is no longer active
        or the user it is delegated by is disabled."""
        try:
            async with self.engine.begin() as conn:
                await cred_store.insert_credential(conn, self.sealer, credential)
        except AgentNotActive:
            raise TokenRevoked("the agent is not active") from None
        except UserDisabled:
            raise TokenRevoked("the user is disabled") from None

    # --- certificates -------------------------------------------------------------------------

    async def _check_issuable(self, claims: Claims) -> None:
        """``check_live`` after reading the revocations other nodes added (one query past
        the cursor): nothing is issued under a revocation already committed anywhere."""
        await self.refresh_revocations()
        await self.check_live(claims)

    async def ssh_certificate(
        self, claims: Claims, public_key: str, principals: Sequence[str], source: str | None
    ) -> str:
        """An OpenSSH user certificate for the token's agent, as long as the token at most.

        ``IssuanceError`` (an ``SshCaError``) for a key or principals the CA refuses.
        """
        await self._check_issuable(claims)
        certificate, record = self.certificates.ssh(claims, public_key, principals, source)
        await self.record_credential(record)
        return certificate

    async def x509_certificate(self, claims: Claims, csr_pem: str) -> str:
        """A SPIFFE client certificate (URI SAN) for the token's agent.

        ``IssuanceError`` (an ``X509CaError``) for a CSR the CA refuses.
        """
        await self._check_issuable(claims)
        pem, record = self.certificates.x509(claims, csr_pem)
        await self.record_credential(record)
        return pem

    async def certificate_bound_token(self, claims: Claims, certificate_pem: str) -> IssuedToken:
        """A token bound to a client certificate Tether issued (RFC 8705 ``cnf.x5t#S256``).

        Same subject, task, scope, runtime and delegation as ``claims``; it expires with
        the certificate or the presenting token, whichever is first, and it names the
        presenting token (``parent_jti``, and in ``derived_from`` with every token that one
        came from), so revoking any of them ends it too, as it ends the SSH certificates
        issued under it. Only a certificate of
        Tether's own client CA for this very agent can be bound: the agent proved it holds
        the key when the CA checked the CSR's signature.
        """
        await self._check_issuable(claims)
        cert = x509.load_pem_x509_certificate(certificate_pem.encode())
        if cert.issuer != self.keys.x509_ca.ca_cert.subject:
            raise TokenInvalid("only certificates of Tether's client CA can be bound")
        expected = f"spiffe://{self.settings.trust_domain}/agent/{claims.agent_id}"
        if spiffe_ids_of(certificate_pem) != [expected]:
            raise TokenInvalid("the certificate is not this agent's")
        now = int(self.clock().timestamp())
        lifetime = min(int(cert.not_valid_after_utc.timestamp()), claims.exp) - now
        if lifetime <= 0:
            raise TokenInvalid("the certificate or the token has expired")
        der = cert.public_bytes(serialization.Encoding.DER)
        token, bound = self.tokens.issue(
            subject=claims.sub, task=claims.task, scope=claims.scope, runtime=claims.runtime,
            cnf=Confirmation(x5t_s256=x5t_s256(der)), act=claims.act, agent=claims.agent,
            lifetime=lifetime, groups=claims.groups, parent_jti=claims.jti,
            derived_from=claims.lineage, act_groups=claims.act_groups,
        )  # fmt: skip
        await self.record_credential(credential_record(bound, "access_token", key_thumbprint=None))
        return IssuedToken(token, bound)


@functools.lru_cache(maxsize=1024)  # a pure function of the certificate's bytes
def certificate_id(der: bytes) -> str:
    """The id an X.509 client certificate of Tether is recorded, audited and revoked under
    (``x509_certificate:<hex serial>``, as :meth:`CertificateIssuer.x509` records it)."""
    return f"x509_certificate:{x509.load_der_x509_certificate(der).serial_number:x}"


__all__ = [
    "JOIN_TOKEN_PREFIX",
    "CredentialError",
    "IdentityService",
    "IdentitySettings",
    "IssuanceError",
    "IssuedToken",
    "Presented",
    "Revoked",
]
