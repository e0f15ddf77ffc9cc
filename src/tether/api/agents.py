"""Admin API: the agent inventory, agents' state, and their one-time join tokens.

Every route is authenticated by an admin token and audited (:mod:`tether.api.adminauth`).
Bodies are validated strictly (unknown members refused) and errors are problem details:
404 for an unknown agent, 409 for a duplicate id or an agent whose state forbids the change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.api.adminauth import AdminCall, admin_call
from tether.api.bodies import body_schema, json_body
from tether.api.problems import ProblemError
from tether.identity.names import AGENT_ID
from tether.store import agents as agent_store
from tether.store import credentials as cred_store
from tether.store.identity import AgentNotActive

router = APIRouter(prefix="/v1/agents", tags=["agents"])

LabelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")]
LabelValue = Annotated[str, Field(max_length=256)]
Labels = Annotated[dict[LabelName, LabelValue], Field(max_length=64)]
Text = Annotated[str, Field(min_length=1, max_length=500)]


class AgentCreate(BaseModel):
    """A new agent."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=f"^{AGENT_ID.pattern}$")]
    owner: Annotated[str, Field(min_length=1, max_length=200)]
    purpose: Text | None = None
    labels: Labels = Field(default_factory=dict)


class JoinTokenCreate(BaseModel):
    """A join token's lifetime (default: ``identity.join_token_ttl``) and runtime labels."""

    model_config = ConfigDict(extra="forbid")

    ttl: Annotated[int, Field(gt=0, le=86400)] | None = None
    runtime_labels: Labels = Field(default_factory=dict)


class Offboard(BaseModel):
    """Why the agent is offboarded (kept with the revocation)."""

    model_config = ConfigDict(extra="forbid")

    reason: Text = "offboarded"


def agent_json(agent: agent_store.Agent) -> dict[str, Any]:
    return {
        "id": agent.id,
        "owner": agent.owner,
        "purpose": agent.purpose,
        "labels": dict(agent.labels),
        "state": agent.state,
        "created_at": _time(agent.created_at),
        "updated_at": _time(agent.updated_at),
        "last_seen_at": _time(agent.last_seen_at),
    }


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


@router.post("", status_code=201, openapi_extra=body_schema(AgentCreate))
async def create_agent(
    call: Annotated[AdminCall, Depends(admin_call("agent.create"))],
    body: Annotated[AgentCreate, Depends(json_body(AgentCreate))],
) -> dict[str, Any]:
    """Record a new, active agent (409 if the id exists)."""
    call.target = f"agent:{body.id}"
    identity = call.identity
    try:
        async with identity.engine.begin() as conn:
            agent = await agent_store.create_agent(
                conn,
                identity.sealer,
                id=body.id,
                owner=body.owner,
                purpose=body.purpose,
                labels=body.labels,
                now=identity.clock(),
            )
    except IntegrityError:
        raise ProblemError(409, f"agent {body.id!r} already exists") from None
    return agent_json(agent)


@router.get("")
async def list_agents(
    call: Annotated[AdminCall, Depends(admin_call("agent.list"))],
    state: Annotated[Literal["active", "disabled", "offboarded"] | None, Query()] = None,
    owner: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Agents, by id; ``state`` and ``owner`` filter."""
    call.target = "agents"
    async with call.identity.engine.connect() as conn:
        agents = await agent_store.list_agents(conn, state=state, owner=owner)
    return {"agents": [agent_json(a) for a in agents]}


@router.get("/{agent_id}")
async def show_agent(
    agent_id: str, call: Annotated[AdminCall, Depends(admin_call("agent.show"))]
) -> dict[str, Any]:
    """One agent with its runtimes and the credentials it holds now."""
    call.target = f"agent:{agent_id}"
    identity = call.identity
    async with identity.engine.connect() as conn:
        agent = await _existing(conn, agent_id)
        runtimes = await agent_store.list_runtimes(conn, agent_id)
        live = await cred_store.list_credentials(conn, agent_id=agent_id, live_at=identity.clock())
    return {
        **agent_json(agent),
        "runtimes": [_runtime_json(r) for r in runtimes],
        "credentials": [_credential_json(c) for c in live],
    }


@router.post("/{agent_id}/disable")
async def disable_agent(
    agent_id: str, call: Annotated[AdminCall, Depends(admin_call("agent.disable"))]
) -> dict[str, Any]:
    """Refuse every credential of the agent until it is enabled again."""
    return await _set_state(call, agent_id, "disabled")


@router.post("/{agent_id}/enable")
async def enable_agent(
    agent_id: str, call: Annotated[AdminCall, Depends(admin_call("agent.enable"))]
) -> dict[str, Any]:
    """Make a disabled agent active again (an offboarded one stays offboarded: 409)."""
    return await _set_state(call, agent_id, "active")


@router.post("/{agent_id}/offboard", openapi_extra=body_schema(Offboard))
async def offboard_agent(
    agent_id: str,
    call: Annotated[AdminCall, Depends(admin_call("agent.offboard"))],
    body: Annotated[Offboard, Depends(json_body(Offboard))],
) -> dict[str, Any]:
    """Offboard for good: everything the agent holds is revoked, its join tokens expire."""
    call.target = f"agent:{agent_id}"
    reason = body.reason
    call.detail["reason"] = reason
    done = await call.identity.offboard(agent_id, reason=reason, by=call.actor)
    if done is None:
        raise ProblemError(404, f"no agent {agent_id!r}")
    call.detail["expired_joins"] = done.expired_join_tokens
    return {**agent_json(done.agent), "expired_join_tokens": done.expired_join_tokens}


@router.post("/{agent_id}/join-tokens", status_code=201, openapi_extra=body_schema(JoinTokenCreate))
async def create_join_token(
    agent_id: str,
    call: Annotated[AdminCall, Depends(admin_call("agent.join-token"))],
    body: Annotated[JoinTokenCreate, Depends(json_body(JoinTokenCreate))],
) -> dict[str, Any]:
    """A one-time join token for the agent; its text is in this answer and nowhere else."""
    call.target = f"agent:{agent_id}"
    request = body
    identity = call.identity
    async with identity.engine.connect() as conn:
        await _existing(conn, agent_id)
    try:
        text, record = await identity.create_join_token(
            agent_id, runtime_labels=request.runtime_labels, ttl=request.ttl
        )
    except AgentNotActive as error:
        unverified = identity.revoked.unverified is not None  # say why: nothing is issued
        detail = str(error) if unverified else f"agent {agent_id!r} is not active"
        raise ProblemError(409, detail) from None
    call.detail["join_id"] = record.id
    return {
        "join_token": text,
        "id": record.id,
        "agent_id": agent_id,
        "expires_at": _time(record.expires_at),
        "runtime_labels": dict(record.runtime_labels),
    }


async def _set_state(
    call: AdminCall, agent_id: str, state: Literal["active", "disabled"]
) -> dict[str, Any]:
    call.target = f"agent:{agent_id}"
    try:
        agent = await call.identity.set_agent_state(agent_id, state)
    except agent_store.AgentUnverified:
        raise ProblemError(
            409, f"agent {agent_id!r}: its stored row does not verify (changed outside "
            "Tether, written before agents were sealed: see tether store seal, or put back "
            "older than a row this node saw: disable it, review it, then enable it)",
        ) from None  # fmt: skip
    if agent is None:
        async with call.identity.engine.connect() as conn:
            await _existing(conn, agent_id)
        raise ProblemError(409, f"agent {agent_id!r} is offboarded, which is final")
    return agent_json(agent)


async def _existing(conn: AsyncConnection, agent_id: str) -> agent_store.Agent:
    agent = await agent_store.get_agent(conn, agent_id)
    if agent is None:
        raise ProblemError(404, f"no agent {agent_id!r}")
    return agent


def _runtime_json(runtime: agent_store.Runtime) -> dict[str, Any]:
    return {
        "id": runtime.id,
        "platform": runtime.platform,
        "labels": dict(runtime.labels),
        "attested_by": runtime.attested_by,
        "first_seen_at": _time(runtime.first_seen_at),
        "last_seen_at": _time(runtime.last_seen_at),
        "address": runtime.address,
    }


def _credential_json(credential: cred_store.Credential) -> dict[str, Any]:
    return {
        "id": credential.jti,
        "kind": credential.kind,
        "subject": credential.subject,
        "task_id": credential.task_id,
        "runtime_id": credential.runtime_id,
        "scope": list(credential.scope),
        "issued_at": _time(credential.issued_at),
        "expires_at": _time(credential.expires_at),
        "actor_chain": None if credential.actor_chain is None else list(credential.actor_chain),
        "derived_from": list(credential.derived_from or ()),
        "family": credential.family,
    }
