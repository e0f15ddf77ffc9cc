"""The identity service: who an agent is, the credentials it gets, and their every use.

This is the one authorization sequence for credentials (STYLE 4): every front-end calls
:meth:`IdentityService.authenticate` with what the agent presented, and gets either the
verified :class:`~tether.identity.claims.Claims` or a
:class:`~tether.identity.errors.CredentialError` — signature, expiry, audience, issuer,
proof of possession (DPoP or certificate binding), revocation and the agent's state are all
checked there, on every use, so no front-end can forget one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.crypto.envelope import EnvelopeCipher
from tether.identity import exchange as ex
from tether.identity.agentstates import AgentStates
from tether.identity.certbind import check_binding, x5t_s256
from tether.identity.certificates import CertificateIssuer
from tether.identity.claims import Actor, Claims, Confirmation, Runtime, Task
from tether.identity.dpop import DPoPVerifier
from tether.identity.errors import CredentialError, IssuanceError, TokenInvalid, TokenRevoked
from tether.identity.issued import (
    IdentitySettings,
    IssuedToken,
    Presented,
    credential_record,
)
from tether.identity.keystore import TetherKeys, rotate_access_key
from tether.identity.replay import MemoryReplayCache
from tether.identity.revocation import RevocationSet
from tether.identity.scope import narrowed
from tether.identity.tokens import TokenIssuer, TokenVerifier
from tether.identity.workload import (
    TrustedIssuers,
    WorkloadTokenError,
    verify_user_token,
    verify_workload_token,
)
from tether.identity.x509ca import spiffe_ids_of
from tether.store import agents as agent_store
from tether.store import credentials as cred_store
from tether.store.identity import AgentNotActive, RuntimeOfAnotherAgent, digest

log = logging.getLogger(__name__)

JOIN_TOKEN_PREFIX = "tjt_"  # noqa: S105 - a public prefix, not a secret
_REVOCATION_BATCH = 1000


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
    ) -> None:
        self.engine, self.keys, self.cipher, self.settings = engine, keys, cipher, settings
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
        self.dpop = DPoPVerifier(clock=seconds, replay_cache=MemoryReplayCache(seconds))
        self.revoked = RevocationSet()
        self.certificates = CertificateIssuer(keys, settings, clock)
        # Agents' states, read single-flight and refreshed by watch_revocations.
        self.agent_states = AgentStates(engine, settings.revocation_poll, seconds)
        # Called with (kind, value, reason) after a revocation here (approvals cancel theirs).
        self.revocation_listeners: list[Callable[[str, str, str], Awaitable[object]]] = []

    # --- every use ----------------------------------------------------------------------------

    async def authenticate(self, presented: Presented) -> Claims:
        """The verified claims of a presented token, or ``CredentialError`` (fails closed)."""
        claims = self.verifier.verify(presented.token)
        if claims.cnf.jkt is not None:
            self.dpop.verify(
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
        await self.check_live(claims)
        return claims

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
        """Enable or disable an agent (None: unknown or offboarded); effective here at once."""
        async with self.engine.begin() as conn:
            agent = await agent_store.set_agent_state(conn, agent_id, state, self.clock())
        self.agent_states.forget(agent_id)
        return agent

    async def offboard(
        self, agent_id: str, *, reason: str, by: str
    ) -> agent_store.Offboarding | None:
        """Offboard an agent: final state, agent revocation, unused join tokens expired."""
        async with self.engine.begin() as conn:
            done = await agent_store.offboard_agent(
                conn, agent_id, reason=reason, revoked_by=by, now=self.clock()
            )
        if done is not None:
            self.revoked.add("agent", agent_id)
            self.agent_states.forget(agent_id)
            await self._notify_revocation("agent", agent_id, reason)
        return done

    # --- revocation ---------------------------------------------------------------------------

    async def revoke(
        self, kind: cred_store.RevocationKind, value: str, *, reason: str, by: str
    ) -> bool:
        """Revoke a token id, agent, task or runtime; True when newly revoked."""
        now = self.clock()
        async with self.engine.begin() as conn:
            _entry, created = await cred_store.insert_revocation(
                conn, kind=kind, value=value, reason=reason, revoked_by=by, now=now
            )
        self.revoked.add(kind, value)
        await self._notify_revocation(kind, value, reason)
        return created

    async def _notify_revocation(self, kind: str, value: str, reason: str) -> None:
        for listener in self.revocation_listeners:
            await listener(kind, value, reason)

    async def refresh_revocations(self) -> int:
        """Apply entries other nodes added since the last refresh; returns how many."""
        applied = 0
        while True:  # every batch: the first refresh loads the whole table
            async with self.engine.connect() as conn:
                batch = await cred_store.revocations_since(
                    conn, self.revoked.cursor, _REVOCATION_BATCH
                )
            self.revoked.apply(batch.entries, batch.cursor)
            applied += len(batch.entries)
            if len(batch.entries) < _REVOCATION_BATCH:
                return applied

    async def watch_revocations(self, stop: asyncio.Event) -> None:
        """Poll the store until ``stop`` is set (one poll interval bounds propagation):
        revocations, and the state of every agent in the cache, so that requests find
        their agent's state fresh instead of reading it themselves."""
        while not stop.is_set():
            try:
                await self.refresh_revocations()
                await self.agent_states.refresh()
            except Exception as error:  # noqa: BLE001 - keep polling; the next poll retries
                log.error("refreshing revocations failed: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.revocation_poll)

    async def rotate_keys(self) -> str:
        """Rotate the access-token signing key; returns the new kid."""
        key = await rotate_access_key(self.engine, self.cipher, self.keys.ring, self.clock())
        return key.kid

    # --- join tokens --------------------------------------------------------------------------

    async def create_join_token(
        self,
        agent_id: str,
        *,
        runtime_labels: Mapping[str, str] | None = None,
        ttl: int | None = None,
    ) -> tuple[str, agent_store.JoinToken]:
        """A one-time join token for ``agent_id``: the secret (shown once) and its record."""
        ttl = ttl or self.settings.join_token_ttl
        if not 0 < ttl <= 86400:
            raise ValueError("a join token lives between 1 second and 1 day")
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        now = self.clock()
        async with self.engine.begin() as conn:
            record = await agent_store.insert_join_token(
                conn, id=token_id, token_hash=digest(secret), agent_id=agent_id, now=now,
                expires_at=now + timedelta(seconds=ttl), runtime_labels=runtime_labels,
            )  # fmt: skip
        return f"{JOIN_TOKEN_PREFIX}{token_id}.{secret}", record

    # --- the token endpoint -------------------------------------------------------------------

    async def exchange(
        self, form: Mapping[str, str], *, dpop: str | None, url: str, address: str | None = None
    ) -> IssuedToken:
        """RFC 8693 token exchange; ``ExchangeError`` (HTTP 400) or ``CredentialError``."""
        request = ex.parse_form(form)
        # Checked before anything is consumed: a refused lifetime must not burn a join token.
        if (request.lifetime or 0) > self.settings.max_token_lifetime:
            raise ex.ExchangeError("invalid_request", "requested_lifetime is above the cap")
        if request.subject_token_type == ex.ID_TOKEN:
            return await self._delegate(request, dpop, url)
        if request.subject_token_type == ex.ACCESS_TOKEN:
            held = await self.authenticate(Presented(request.subject_token, "POST", url, dpop))
            not_after = held.exp
            if request.task_id == held.task.id and held.act is None:
                not_after = await self._session_end(held)  # renewal, see exchange's docstring
            return await self._issue(
                request, held.sub, held.runtime, held.cnf, held.scope, not_after, held.act,
                held.agent, groups=held.groups,
            )  # fmt: skip
        proof = self.dpop.verify(dpop, htm="POST", htu=url)
        cnf = Confirmation(jkt=proof.jkt)
        if request.subject_token_type == ex.JOIN_TOKEN:
            agent_id, runtime = await self._join(request.subject_token, address)
        else:
            agent_id, runtime = await self._attest(request.subject_token, address)
        return await self._issue(request, agent_id, runtime, cnf, None, None, None, None)

    async def _join(self, token: str, address: str | None) -> tuple[str, Runtime]:
        token_id, _, secret = token.removeprefix(JOIN_TOKEN_PREFIX).partition(".")
        if not token.startswith(JOIN_TOKEN_PREFIX) or not token_id or not secret:
            raise ex.ExchangeError("invalid_grant", "malformed join token")
        runtime_id = f"join/{token_id}"
        now = self.clock()
        async with self.engine.begin() as conn:
            record = await agent_store.consume_join_token(
                conn, id=token_id, token_hash=digest(secret), runtime_id=runtime_id, now=now
            )
            if record is None:
                raise ex.ExchangeError(
                    "invalid_grant",
                    "the join token is unknown, used, expired or its agent inactive",
                )
            labels = {**record.runtime_labels, "platform": "join-token"}
            await agent_store.upsert_runtime(
                conn, id=runtime_id, agent_id=record.agent_id, platform="join-token",
                attested_by="join-token", now=now, labels=labels, address=address,
            )  # fmt: skip
        return record.agent_id, Runtime(runtime_id, labels)

    async def _attest(self, token: str, address: str | None) -> tuple[str, Runtime]:
        try:
            workload = await verify_workload_token(token, self.issuers, self.clock())
        except WorkloadTokenError as error:
            raise ex.ExchangeError("invalid_grant", f"workload token refused: {error}") from None
        mapped = self.settings.workload_agents.get(workload.issuer_name, {})
        agent_id = mapped.get(workload.subject)
        if agent_id is None:
            raise ex.ExchangeError("invalid_grant", "no agent is mapped to this workload")
        labels = dict(workload.labels)
        async with self.engine.begin() as conn:
            agent = await agent_store.get_agent(conn, agent_id)
            if agent is None or agent.state != "active":
                raise ex.ExchangeError("invalid_grant", "the agent is not active")
            try:
                await agent_store.upsert_runtime(
                    conn, id=workload.runtime_id, agent_id=agent_id,
                    platform=labels.get("platform", "workload"),
                    attested_by=workload.issuer_name, now=self.clock(), labels=labels,
                    address=address,
                )  # fmt: skip
            except RuntimeOfAnotherAgent:
                raise ex.ExchangeError(
                    "invalid_grant", "this runtime was attested for another agent"
                ) from None
        return agent_id, Runtime(workload.runtime_id, labels)

    async def _session_end(self, held: Claims) -> int:
        """When renewals of ``held``'s task must stop: last attestation + the session cap."""
        async with self.engine.connect() as conn:
            runtime = await agent_store.get_runtime(conn, held.runtime.id)
        if runtime is None:
            raise ex.ExchangeError("invalid_grant", "the token's runtime is unknown")
        attested = int(runtime.last_seen_at.timestamp())
        return attested + self.settings.max_session_lifetime

    async def _delegate(
        self, request: ex.ExchangeRequest, dpop: str | None, url: str
    ) -> IssuedToken:
        assert request.actor_token is not None  # parse_form guarantees it
        actor = await self.authenticate(Presented(request.actor_token, "POST", url, dpop))
        depth = 1
        chain = actor.act
        while chain is not None:
            depth, chain = depth + 1, chain.act
        if depth > self.settings.max_delegation_depth:
            raise ex.ExchangeError("invalid_request", "delegation chain too deep")
        try:
            user = await verify_user_token(request.subject_token, self.issuers, self.clock())
        except WorkloadTokenError as error:
            raise ex.ExchangeError("invalid_grant", f"user token refused: {error}") from None
        act = Actor(actor.agent_id, actor.act)
        expiry = min(actor.exp, int(user.expires_at.timestamp()))
        return await self._issue(
            request, user.user, actor.runtime, actor.cnf, actor.scope, expiry, act,
            actor.agent_id, groups=user.groups,
        )  # fmt: skip

    async def _issue(
        self,
        request: ex.ExchangeRequest,
        subject: str,
        runtime: Runtime,
        cnf: Confirmation,
        held_scope: Sequence[str] | None,
        not_after: int | None,
        act: Actor | None,
        agent: str | None,
        groups: Sequence[str] = (),
    ) -> IssuedToken:
        scope = (
            narrowed(request.scope, held_scope)
            if held_scope is not None
            else (request.scope or ("*",))
        )
        if scope is None:
            raise ex.ExchangeError("invalid_scope", "the requested scope is wider than held")
        lifetime = request.lifetime or self.settings.token_lifetime
        if lifetime > self.settings.max_token_lifetime:
            raise ex.ExchangeError("invalid_request", "requested_lifetime is above the cap")
        now = int(self.clock().timestamp())
        if not_after is not None:
            if request.lifetime is not None and now + request.lifetime > not_after:
                raise ex.ExchangeError("invalid_request", "requested_lifetime outlives its source")
            lifetime = min(lifetime, not_after - now)
            if lifetime <= 0:
                raise ex.ExchangeError("invalid_grant", "the presented token has expired")
        token, claims = self.tokens.issue(
            subject=subject, task=Task(request.task_id, request.task_purpose), scope=scope,
            runtime=runtime, cnf=cnf, act=act, agent=agent, lifetime=lifetime, groups=groups,
        )  # fmt: skip
        await self._record(credential_record(claims, "access_token", key_thumbprint=cnf.jkt))
        return IssuedToken(token, claims)

    async def _record(self, credential: cred_store.Credential) -> None:
        try:
            async with self.engine.begin() as conn:
                await cred_store.insert_credential(conn, credential)
        except AgentNotActive:
            raise TokenRevoked("the agent is not active") from None

    # --- certificates -------------------------------------------------------------------------

    async def ssh_certificate(
        self, claims: Claims, public_key: str, principals: Sequence[str], source: str | None
    ) -> str:
        """An OpenSSH user certificate for the token's agent, as long as the token at most.

        ``IssuanceError`` (an ``SshCaError``) for a key or principals the CA refuses.
        """
        await self.check_live(claims)
        certificate, record = self.certificates.ssh(claims, public_key, principals, source)
        await self._record(record)
        return certificate

    async def x509_certificate(self, claims: Claims, csr_pem: str) -> str:
        """A SPIFFE client certificate (URI SAN) for the token's agent.

        ``IssuanceError`` (an ``X509CaError``) for a CSR the CA refuses.
        """
        await self.check_live(claims)
        pem, record = self.certificates.x509(claims, csr_pem)
        await self._record(record)
        return pem

    async def certificate_bound_token(self, claims: Claims, certificate_pem: str) -> IssuedToken:
        """A token bound to a client certificate Tether issued (RFC 8705 ``cnf.x5t#S256``).

        Same subject, task, scope, runtime and delegation as ``claims``; it expires with
        the certificate or the presenting token, whichever is first. Only a certificate of
        Tether's own client CA for this very agent can be bound: the agent proved it holds
        the key when the CA checked the CSR's signature.
        """
        await self.check_live(claims)
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
            lifetime=lifetime, groups=claims.groups,
        )  # fmt: skip
        await self._record(credential_record(bound, "access_token", key_thumbprint=None))
        return IssuedToken(token, bound)


__all__ = [
    "CredentialError",
    "IdentityService",
    "IdentitySettings",
    "IssuanceError",
    "IssuedToken",
    "Presented",
]
