"""The token endpoint's grants: what :meth:`IdentityService.exchange` does with an RFC 8693
token exchange (the grant itself is documented in :mod:`tether.identity.exchange`).

Each function takes the :class:`~tether.identity.service.IdentityService` whose store, keys
and settings it uses. Security decisions:

* The requested lifetime is checked against the cap before anything is consumed: a refused
  lifetime must not burn a single-use join token.
* A new key is bound only with a DPoP proof of it; a token derived from a Tether token (re-scoping,
  renewal, delegation) keeps the key (or certificate) of the token presented.
* A join token is consumed in the same transaction that records its runtime; an unknown, used
  or expired token, or one whose agent is not active, is ``invalid_grant``. Its use is also
  a revocation (:func:`tether.store.agents.join_token_revocation`) that the node holds and
  copies before answering: the token's row put back unused is refused (logged), also by a
  node restarted after the whole database was put back.
* Nothing is issued for a revoked agent, task or runtime, nor with a revoked actor in the
  chain (``invalid_grant`` naming what is revoked, audited as ``token.refused``): revocation
  is permanent, so issuing a token that every use then refuses would only hide the refusal.
  A join or workload grant is checked before anything is consumed or recorded (a join token
  refused so stays unused), every grant again on the claims it would issue. The revocations
  other nodes added are read first (one query past the cursor), so issuing never waits for
  the poll interval to honour one.
* A workload token gives a credential only to the agent the configuration maps its issuer and
  subject to, only while that agent is active, and never for a runtime already attested for
  another agent.
* Derived tokens only narrow: the scope must be covered by the one held, the expiry is no later
  than any token it came from, except a renewal (same task, not delegated), which is bounded by
  ``max_session_lifetime`` from the runtime's last attestation instead.
* Delegation chains are limited to ``max_delegation_depth``, and a delegated token expires with
  the user's ID token if that comes first. A delegated token may itself be the actor token of
  a further delegation: the new token's ``act`` then names its user (RFC 8693 nesting, so
  every user of the chain is in it and in the store's record, and each earlier user's groups
  are in its ``act_groups``, so the policy decides the action for every one of them), and
  every token it was
  derived from is in its ``derived_from`` (as are the sources of a re-scoped delegated
  token), so disabling any user of the chain or revoking any token upstream ends it. A user
  Tether has disabled (a Tether user of the id an ID token of the chain names) delegates
  nothing, not even through a chain; the store refuses to record a credential with a
  disabled user anywhere in its chain too, which closes the race with a disabling
  (:mod:`tether.store.credentials`). A user Tether has no record of may delegate: users
  need not have signed in to Tether.
* An agent's own token exchanged for a renewal or another task joins the renewal family of
  the token presented (claim ``family``, :mod:`tether.identity.claims`): its size does not
  grow with the chain, and revoking any token of the family ends all of them (a thief who
  renewed a stolen token and the agent hold the same family; the agent joins again). A
  token issued before families existed starts one at its own jti. Every other grant starts
  a new family, and a delegation names the actor token's family in ``derived_from``. A
  renewal racing the revocation on another node cannot escape it: it carries the family,
  which every node refuses once the revocation reaches it.
* Every issued token is recorded before it is returned; recording fails (the token is never
  handed out) when its agent stopped being active meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from tether.identity import exchange as ex
from tether.identity.claims import (
    MAX_DERIVED_FROM,
    Actor,
    Claims,
    Confirmation,
    Delegator,
    Runtime,
    Task,
)
from tether.identity.issued import IssuedToken, Presented, credential_record
from tether.identity.scope import narrowed
from tether.identity.workload import WorkloadTokenError, verify_user_token, verify_workload_token
from tether.store import agents as agent_store
from tether.store.identity import RuntimeOfAnotherAgent, digest
from tether.users import store as user_store

if TYPE_CHECKING:
    from tether.identity.service import IdentityService

log = logging.getLogger(__name__)

JOIN_TOKEN_PREFIX = "tjt_"  # noqa: S105 - a public prefix, not a secret
# One answer for every refused join token: the reason is not told (no probing of tokens).
_JOIN_REFUSED: Final = "the join token is unknown, used, expired or its agent inactive"


async def exchange(
    service: IdentityService,
    form: Mapping[str, str],
    *,
    dpop: str | None,
    url: str,
    address: str | None = None,
) -> IssuedToken:
    """RFC 8693 token exchange; ``ExchangeError`` (HTTP 400) or ``CredentialError``."""
    request = ex.parse_form(form)
    # Checked before anything is consumed: a refused lifetime must not burn a join token.
    if (request.lifetime or 0) > service.settings.max_token_lifetime:
        raise ex.ExchangeError("invalid_request", "requested_lifetime is above the cap")
    await service.refresh_revocations()  # another node's revocation counts at once here
    if request.subject_token_type == ex.ID_TOKEN:
        return await _delegate(service, request, dpop, url)
    if request.subject_token_type == ex.ACCESS_TOKEN:
        held = await service.authenticate(Presented(request.subject_token, "POST", url, dpop))
        # The verifier's leeway (clock skew) is for using a token, not for making a fresh
        # one out of a token that has expired.
        if held.exp <= int(service.clock().timestamp()):
            raise ex.ExchangeError("invalid_grant", "the presented token has expired")
        not_after = held.exp
        if request.task_id == held.task.id and held.act is None:
            not_after = await _session_end(service, held)  # renewal, see exchange's docstring
        # A delegated token's re-scoping names it; an agent's own token's re-scoping or
        # renewal keeps only what it came from (renewals would grow it without bound) and
        # joins its renewal family instead, started at its jti if it predates families.
        if held.act is not None:
            derived, family = held.lineage, None
        else:
            derived, family = held.derived_from, held.family or held.jti
        return await _issue(
            service, request, held.sub, held.runtime, held.cnf, held.scope, not_after,
            held.act, held.agent, groups=held.groups, derived_from=derived, family=family,
            act_groups=held.act_groups,
        )  # fmt: skip
    # Every check of the proof first (a bad one spends no join token), but its jti recorded
    # only once the join or workload token proved something: anyone can sign a proof with a
    # key of their own, and recording those let anyone fill the replay cache (full: 503).
    checked = service.dpop.check(dpop, htm="POST", htu=url)
    cnf = Confirmation(jkt=checked.jkt)

    async def record_proof() -> None:
        await service.verify_proof(dpop, htm="POST", htu=url)

    if request.subject_token_type == ex.JOIN_TOKEN:
        agent_id, runtime = await _join(service, request, address, record_proof)
    else:
        agent_id, runtime = await _attest(service, request, address, record_proof)
    return await _issue(service, request, agent_id, runtime, cnf, None, None, None, None)


async def _join(
    service: IdentityService,
    request: ex.ExchangeRequest,
    address: str | None,
    record_proof: Callable[[], Awaitable[None]],
) -> tuple[str, Runtime]:
    token = request.subject_token
    token_id, _, secret = token.removeprefix(JOIN_TOKEN_PREFIX).partition(".")
    if not token.startswith(JOIN_TOKEN_PREFIX) or not token_id or not secret:
        raise ex.ExchangeError("invalid_grant", "malformed join token")
    runtime_id = f"join/{token_id}"
    now = service.clock()
    used = agent_store.join_token_revocation(token_id)
    if service.revoked.holds("token", used):
        log.error("join token %r refused: it was used, but its row is unused: the database "
                  "was put back to an earlier state (docs/vault.md, Tampering with the "
                  "database)", token_id)  # fmt: skip
        raise ex.ExchangeError("invalid_grant", _JOIN_REFUSED)
    # A first look, read only, before the proof is recorded (a made-up token records nothing)
    # and outside the transaction below (the shared replay check takes a connection of its own).
    async with service.engine.connect() as conn:
        unused = await agent_store.join_token_unused(
            conn, id=token_id, token_hash=digest(secret), now=now
        )
    if not unused:
        raise ex.ExchangeError("invalid_grant", _JOIN_REFUSED)
    await record_proof()  # a replayed proof is refused here, the join token still unused
    async with service.engine.begin() as conn:
        record = await agent_store.consume_join_token(
            conn,
            service.sealer,
            id=token_id,
            token_hash=digest(secret),
            runtime_id=runtime_id,
            now=now,
        )
        if record is None:
            raise ex.ExchangeError("invalid_grant", _JOIN_REFUSED)
        _refuse_revoked(service, record.agent_id, request.task_id, runtime_id)  # rolls back
        labels = {**record.runtime_labels, "platform": "join-token"}
        await agent_store.upsert_runtime(
            conn, service.sealer, id=runtime_id, agent_id=record.agent_id, platform="join-token",
            attested_by="join-token", now=now, labels=labels, address=address,
        )  # fmt: skip
    service.revoked.add("token", used, record.expires_at.timestamp())
    await service.save_revocation_copy()
    return record.agent_id, Runtime(runtime_id, labels)


async def _attest(
    service: IdentityService,
    request: ex.ExchangeRequest,
    address: str | None,
    record_proof: Callable[[], Awaitable[None]],
) -> tuple[str, Runtime]:
    try:
        workload = await verify_workload_token(
            request.subject_token, service.issuers, service.clock()
        )
    except WorkloadTokenError as error:
        raise ex.ExchangeError("invalid_grant", f"workload token refused: {error}") from None
    mapped = service.settings.workload_agents.get(workload.issuer_name, {})
    agent_id = mapped.get(workload.subject)
    if agent_id is None:
        raise ex.ExchangeError("invalid_grant", "no agent is mapped to this workload")
    labels = dict(workload.labels)
    _refuse_revoked(service, agent_id, request.task_id, workload.runtime_id)
    await record_proof()
    async with service.engine.begin() as conn:
        try:
            agent = await agent_store.verified_agent(conn, service.sealer, agent_id)
        except agent_store.AgentUnverified:
            agent = None  # changed outside Tether: refused like an unknown agent (logged)
        if agent is None or agent.state != "active":
            raise ex.ExchangeError("invalid_grant", "the agent is not active")
        try:
            await agent_store.upsert_runtime(
                conn, service.sealer, id=workload.runtime_id, agent_id=agent_id,
                platform=labels.get("platform", "workload"),
                attested_by=workload.issuer_name, now=service.clock(), labels=labels,
                address=address,
            )  # fmt: skip
        except RuntimeOfAnotherAgent:
            raise ex.ExchangeError(
                "invalid_grant", "this runtime was attested for another agent"
            ) from None
    return agent_id, Runtime(workload.runtime_id, labels)


async def _session_end(service: IdentityService, held: Claims) -> int:
    """When renewals of ``held``'s task must stop: last attestation + the session cap."""
    async with service.engine.connect() as conn:
        runtime = await agent_store.verified_runtime(conn, service.sealer, held.runtime.id)
    if runtime is None:  # or its row does not verify (logged)
        raise ex.ExchangeError("invalid_grant", "the token's runtime is unknown")
    attested = int(runtime.last_seen_at.timestamp())
    return attested + service.settings.max_session_lifetime


async def _delegate(
    service: IdentityService, request: ex.ExchangeRequest, dpop: str | None, url: str
) -> IssuedToken:
    assert request.actor_token is not None  # parse_form guarantees it
    actor = await service.authenticate(Presented(request.actor_token, "POST", url, dpop))
    depth = 1
    chain = actor.act
    while chain is not None:
        depth, chain = depth + 1, chain.act
    if depth > service.settings.max_delegation_depth:
        raise ex.ExchangeError("invalid_request", "delegation chain too deep")
    try:
        user = await verify_user_token(request.subject_token, service.issuers, service.clock())
    except WorkloadTokenError as error:
        raise ex.ExchangeError("invalid_grant", f"user token refused: {error}") from None
    async with service.engine.connect() as conn:
        for delegator in (user.user, *actor.delegators):  # every user of the chain
            state = await user_store.user_state(conn, delegator)
            if state == "disabled":
                raise ex.ExchangeError("invalid_grant", "the user is disabled")
            # A user Tether has a record of must verify (its seal; logged if not): a user
            # disabled and set back to active behind Tether's back delegates nothing.
            if (
                state is not None
                and await user_store.get_user(conn, service.sealer, delegator) is None
            ):
                raise ex.ExchangeError("invalid_grant", "the user's record does not verify")
    # RFC 8693 4.1: the actor is who the actor token names, with its own actors nested: a
    # delegated actor token puts its user in the chain (the innermost actor is the agent).
    act = Actor(actor.sub, actor.act)
    expiry = min(actor.exp, int(user.expires_at.timestamp()))
    # Each earlier user of the chain keeps the groups their own ID token gave (an actor token
    # issued before act_groups existed gives its earlier users none: fail closed).
    return await _issue(
        service, request, user.user, actor.runtime, actor.cnf, actor.scope, expiry, act,
        actor.agent_id, groups=user.groups, derived_from=actor.lineage,
        act_groups=actor.delegation_users,
    )  # fmt: skip


async def _issue(
    service: IdentityService,
    request: ex.ExchangeRequest,
    subject: str,
    runtime: Runtime,
    cnf: Confirmation,
    held_scope: Sequence[str] | None,
    not_after: int | None,
    act: Actor | None,
    agent: str | None,
    groups: Sequence[str] = (),
    derived_from: Sequence[str] = (),
    family: str | None = None,
    act_groups: Sequence[Delegator] = (),
) -> IssuedToken:
    if len(derived_from) > MAX_DERIVED_FROM:
        raise ex.ExchangeError(
            "invalid_request", f"a token is derived from at most {MAX_DERIVED_FROM} tokens"
        )
    scope = (
        narrowed(request.scope, held_scope) if held_scope is not None else (request.scope or ("*",))
    )
    if scope is None:
        raise ex.ExchangeError("invalid_scope", "the requested scope is wider than held")
    lifetime = request.lifetime or service.settings.token_lifetime
    if lifetime > service.settings.max_token_lifetime:
        raise ex.ExchangeError("invalid_request", "requested_lifetime is above the cap")
    now = int(service.clock().timestamp())
    if not_after is not None:
        if request.lifetime is not None and now + request.lifetime > not_after:
            raise ex.ExchangeError("invalid_request", "requested_lifetime outlives its source")
        lifetime = min(lifetime, not_after - now)
        if lifetime <= 0:
            raise ex.ExchangeError("invalid_grant", "the presented token has expired")
    token, claims = service.tokens.issue(
        subject=subject, task=Task(request.task_id, request.task_purpose), scope=scope,
        runtime=runtime, cnf=cnf, act=act, agent=agent, lifetime=lifetime, groups=groups,
        derived_from=derived_from, family=family, act_groups=act_groups,
    )  # fmt: skip
    revoked = service.revoked.reason(claims)  # the new task, a token it came from, its family
    if revoked is not None:
        raise ex.ExchangeError("invalid_grant", revoked)
    await service.record_credential(
        credential_record(claims, "access_token", key_thumbprint=cnf.jkt)
    )
    return IssuedToken(token, claims)


def _refuse_revoked(service: IdentityService, agent_id: str, task_id: str, runtime: str) -> None:
    """``invalid_grant`` when the agent, the task asked for or the runtime is revoked."""
    reason = service.revoked.issuance_reason(agent_id, task_id, runtime)
    if reason is not None:
        raise ex.ExchangeError("invalid_grant", reason)
