"""Access requests over HTTP: agents ask, humans approve or deny, everyone can wait.

Agent routes take the agent's DPoP-bound token (:func:`tether.api.certs.agent_claims`);
human routes a personal API token (:mod:`tether.api.humans`; an admin token may read but
never vote)::

    POST /v1/access-requests                  agent: ask ahead for an action or a rule
    GET  /v1/access-requests                  human: list (status, agent, actionable)
    GET  /v1/access-requests/events           human: server-sent events of every change
    GET  /v1/access-requests/{id}[?wait=N]    agent (its own) or human; long poll
    POST /v1/access-requests/{id}/approve     human, {"reason": ...}
    POST /v1/access-requests/{id}/deny        human, {"reason": ...}

Security decisions:

* **An agent asks for what its policy could allow, as itself.** The request the policy
  sees is built from the verified token (agent, runtime, task, scope, delegation), never
  from the body; only the target and the action come from the agent. A deny stays a deny
  (403); an allow needs no approval (200, ``not-needed``).
* A rule-wide ask is accepted only for a rule with ``approval.scope: rule`` whose agent
  selector names this agent.
* An agent reads only its own requests; another's id is answered 404, like an unknown one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tether.api.adminauth import audit_admin
from tether.api.bodies import body_schema, json_body
from tether.api.certs import agent_claims
from tether.api.humans import Caller, signed_in, signed_in_user
from tether.api.problems import ProblemError
from tether.api.state import AppState
from tether.approvals.digest import ActionDigest, canonical_json
from tether.approvals.model import AccessRequest, ApprovalError, Ask
from tether.approvals.service import ApprovalService
from tether.approvals.store import changed_since
from tether.identity.claims import Claims
from tether.policy.model import ALLOW, APPROVAL_REQUIRED
from tether.policychain import delegation_of
from tether.store import agents as agent_store

router = APIRouter(prefix="/v1/access-requests", tags=["approvals"])

MAX_WAIT: Final = 60.0
STREAM_SECONDS: Final = 300.0
KEEPALIVE_SECONDS: Final = 15.0


class AskBody(BaseModel):
    """Ask ahead: an ``action`` of the policy contract on ``target``, or a whole ``rule``."""

    model_config = ConfigDict(extra="forbid")

    target: Annotated[str, Field(min_length=1, max_length=1024)]
    action: dict[str, Any] | None = None
    rule: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    reason: Annotated[str, Field(max_length=500)] | None = None


class VoteBody(BaseModel):
    """Why (kept with the vote, audited)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(max_length=500)] | None = None


def _approvals(request: Request) -> ApprovalService:
    state: AppState = request.app.state.tether
    if state.approvals is None:
        raise ProblemError(503, "approvals are not configured on this node")
    return state.approvals


def _problem(error: ApprovalError) -> ProblemError:
    return ProblemError(error.status, error.message)


def _status_url(request: Request, request_id: str) -> str:
    return str(request.url_for("show_access_request", request_id=request_id))


def _answer(request: Request, found: AccessRequest, status: int = 200) -> JSONResponse:
    body = found.to_json()
    body["status_url"] = _status_url(request, found.id)
    return JSONResponse(body, status_code=status, headers={"Location": body["status_url"]})


@router.post("", status_code=202, openapi_extra=body_schema(AskBody))
async def ask(
    claims: Annotated[Claims, Depends(agent_claims)],
    body: Annotated[AskBody, Depends(json_body(AskBody))],
    request: Request,
) -> JSONResponse:
    """An agent asks ahead; 202 with the (pending or approved) access request."""
    service = _approvals(request)
    if (body.action is None) == (body.rule is None):
        raise ProblemError(422, "give exactly one of action and rule")
    try:
        if body.rule is not None:
            found = await service.request(await _rule_ask(service, claims, body, request))
            return _answer(request, found, 202)
        policy_request = await _policy_request(claims, body, request)
        decision, pending = await service.decide(policy_request, reason=body.reason)
    except ApprovalError as error:
        raise _problem(error) from None
    if decision.decision == ALLOW:
        return JSONResponse({"status": "not-needed", "decision": decision.to_dict()})
    if decision.decision != APPROVAL_REQUIRED or pending is None:
        raise ProblemError(403, f"the policy denies this action ({decision.reason})",
                           decision=decision.to_dict())  # fmt: skip
    return _answer(request, pending, 202)


async def _agent_labels(state: AppState, agent_id: str) -> dict[str, str]:
    """The agent's labels from its verified row; 403 when the row does not verify."""
    assert state.identity is not None
    try:
        async with state.identity.engine.connect() as conn:
            agent = await agent_store.verified_agent(conn, state.identity.sealer, agent_id)
    except agent_store.AgentUnverified:
        raise ProblemError(403, "the agent's stored row does not verify") from None
    return {} if agent is None else dict(agent.labels)


async def _policy_request(claims: Claims, body: AskBody, request: Request) -> dict[str, Any]:
    state: AppState = request.app.state.tether
    assert state.identity is not None
    labels = await _agent_labels(state, claims.agent_id)
    value: dict[str, Any] = {
        "agent": {"id": claims.agent_id, "labels": labels},
        "runtime": {"id": claims.runtime.id, "labels": dict(claims.runtime.labels)},
        "task": {"id": claims.task.id, "purpose": claims.task.purpose},
        "scope": {"targets": list(claims.scope)},
        "target": {"name": body.target},
        "action": body.action,
    }
    delegation = delegation_of(claims)  # ``sub``, and a chain's earlier users (policychain)
    if delegation is not None:
        value["delegation"] = delegation
    return value


async def _rule_ask(
    service: ApprovalService, claims: Claims, body: AskBody, request: Request
) -> Ask:
    assert body.rule is not None
    rule = service.policies().by_id.get(body.rule)
    if rule is None or rule.approval is None or rule.approval.scope != "rule":
        raise ProblemError(400, f"rule {body.rule!r} is not an approval rule with scope: rule")
    state: AppState = request.app.state.tether
    assert state.identity is not None
    labels = await _agent_labels(state, claims.agent_id)
    if rule.agents is not None and not rule.agents(claims.agent_id, labels):
        raise ProblemError(403, f"rule {body.rule!r} does not apply to this agent")
    if rule.targets is not None and not rule.targets(body.target, {}):
        raise ProblemError(403, f"rule {body.rule!r} does not apply to target {body.target!r}")
    canonical = {"rule": rule.id}
    digest = _sha256(canonical_json({"v": 1, "kind": rule.kind, "target": body.target,
                                     "action": canonical}))  # fmt: skip
    delegation = claims.sub if claims.agent is not None else None
    return Ask(
        agent_id=claims.agent_id, task_id=claims.task.id, rule_id=rule.id,
        action=ActionDigest(rule.kind, body.target, canonical, digest),
        runtime_id=claims.runtime.id, delegation_user=delegation, reason=body.reason,
        delegation_chain=tuple(user.sub for user in claims.delegation_users[1:]),
    )  # fmt: skip


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@router.get("")
async def list_requests(
    request: Request,
    status: Annotated[
        str | None, Query(pattern="^(pending|approved|denied|cancelled|expired)$")
    ] = None,
    agent: Annotated[str | None, Query(max_length=200)] = None,
    actionable: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Access requests, newest first; ``actionable`` keeps those the caller may vote on."""
    caller = await signed_in(request)
    service = _approvals(request)
    found = await service.search(status=status, agent_id=agent, limit=limit)
    user = caller.user
    if actionable or not _reads_all(caller):
        found = [r for r in found if user is not None and r.status == "pending"
                 and service.may_vote(r, user) is None and user.id not in _voters(r)]  # fmt: skip
    return {"access_requests": [r.to_json() for r in found]}


def _reads_all(caller: Caller) -> bool:
    """Admin tokens and users with a role read every request; other users (named as
    approvers by a rule, without a role) see only the requests they may vote on."""
    return caller.user is None or bool(caller.user.roles)


def _voters(found: AccessRequest) -> set[str]:
    return {v.user_id for v in found.votes}


@router.get("/events")
async def events(
    request: Request,
    seconds: Annotated[float, Query(gt=0, le=3600)] = STREAM_SECONDS,
) -> StreamingResponse:
    """Server-sent events: one ``access-request`` event per change, for ``seconds``."""
    if not _reads_all(await signed_in(request)):
        raise ProblemError(403, "the event stream needs a role (admin, approver or auditor)")
    service = _approvals(request)
    return StreamingResponse(
        _stream(request, service, seconds),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _stream(
    request: Request, service: ApprovalService, seconds: float
) -> AsyncIterator[bytes]:
    seen: dict[str, int] = {}
    since = service.clock() - timedelta(seconds=1)
    deadline = time.monotonic() + seconds
    last_sent = time.monotonic()
    yield b": tether access-request events\n\n"
    while time.monotonic() < deadline and not await request.is_disconnected():
        async with service.engine.connect() as conn:
            changed = await changed_since(conn, since, 500)
        for found in changed:
            since = max(since, found.updated_at or since)
            if seen.get(found.id) == found.revision:
                continue
            seen[found.id] = found.revision
            data = json.dumps(found.to_json(), separators=(",", ":"))
            event_id = f"{found.id}.{found.revision}"
            yield f"event: access-request\nid: {event_id}\ndata: {data}\n\n".encode()
            last_sent = time.monotonic()
        if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
            yield b": keepalive\n\n"
            last_sent = time.monotonic()
        await service.bell.wait(min(1.0, max(0.0, deadline - time.monotonic())))


@router.get("/{request_id}", name="show_access_request")
async def show(
    request_id: str,
    request: Request,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0.0,
) -> JSONResponse:
    """One access request; with ``wait``, answers once it is decided or ``wait`` passed."""
    agent_id, caller = await _reader(request)
    service = _approvals(request)
    deadline = time.monotonic() + wait
    while True:
        try:
            found = await service.get(request_id)
        except ApprovalError as error:
            raise _problem(error) from None
        if agent_id is not None and found.agent_id != agent_id:
            raise ProblemError(404, f"no access request {request_id!r}")
        if caller is not None and not _reads_all(caller) and not _concerns(found, caller):
            raise ProblemError(404, f"no access request {request_id!r}")
        left = deadline - time.monotonic()
        if found.status != "pending" or left <= 0 or await request.is_disconnected():
            return _answer(request, found)
        await service.bell.wait(min(left, 1.0))


async def _reader(request: Request) -> tuple[str | None, Caller | None]:
    """The agent id for an agent's DPoP call, or the signed-in human (or 401)."""
    values = request.headers.getlist("authorization")
    if values and values[0].partition(" ")[0].lower() == "dpop":
        return (await agent_claims(request)).agent_id, None
    return None, await signed_in(request)


def _concerns(found: AccessRequest, caller: Caller) -> bool:
    """Whether a user without a role may read ``found``: they are named as its approver."""
    user = caller.user
    return user is not None and any(
        spec == f"user:{user.id}"
        or (spec.startswith("group:") and spec[6:] in user.groups)
        or (spec == "owner" and found.owner == user.id)
        for spec in found.approvers
    )


@router.post("/{request_id}/approve", openapi_extra=body_schema(VoteBody))
async def approve(request_id: str, request: Request) -> JSONResponse:
    """Approve as the signed-in user; the grant is made once enough approvals are in."""
    return await _vote(request_id, request, "approve")


@router.post("/{request_id}/deny", openapi_extra=body_schema(VoteBody))
async def deny(request_id: str, request: Request) -> JSONResponse:
    """Deny as the signed-in user; one denial decides."""
    return await _vote(request_id, request, "deny")


async def _vote(request_id: str, request: Request, vote: str) -> JSONResponse:
    user = await signed_in_user(request)
    body = await json_body(VoteBody)(request)
    service = _approvals(request)
    try:
        if vote == "approve":
            found = await service.approve(request_id, user, body.reason)
        else:
            found = await service.deny(request_id, user, body.reason)
    except ApprovalError as error:
        await _audit_refused(request, user.id, vote, request_id, error)
        raise _problem(error) from None
    return _answer(request, found)


async def _audit_refused(
    request: Request, user: str, vote: str, request_id: str, error: ApprovalError
) -> None:
    await audit_admin(request, actor=f"user:{user}", action=f"approval.{vote}",
                      target=f"access-request:{request_id}", outcome="refused",
                      status=error.status, reason=error.message)  # fmt: skip
