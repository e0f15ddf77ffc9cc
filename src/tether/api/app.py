"""The HTTP API: health, the decision endpoint, and (with an identity service) the token
endpoint, the agent API and the admin API (:mod:`tether.api.oauth`, :mod:`tether.api.certs`,
:mod:`tether.api.agents`, :mod:`tether.api.admin`).

``POST /v1/decide`` answers every JSON body with a decision: a body that is JSON but not a
valid request is denied ``invalid-request`` with status 200, because that deny *is* the
contract's answer to it. Only a body that is not acceptable JSON at all (or too large) is an
HTTP error, as RFC 9457 problem details. Each decision is a ``decision`` audit event,
committed before it is answered; when the trail cannot commit it the answer is a ``503``
problem, never a decision.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.middleware import Middleware

from tether import __version__
from tether.api import access_requests, admin, agents, audit, certs, oauth, oidc_login, users, vault
from tether.api.problems import PROBLEM_JSON, Problem, install_problem_handlers, problem
from tether.api.schemas import DECIDE_REQUEST_SCHEMA, DecisionBody, Health
from tether.api.state import AppState
from tether.audit.log import AuditUnavailable
from tether.jsoninput import JsonInputError, parse_json

MAX_BODY_BYTES: Final = 1 << 20

_PROBLEM_RESPONSE: Final[dict[str, Any]] = {
    "model": Problem,
    "content": {PROBLEM_JSON: {}},
}


class _BodyTooLarge(Exception):
    pass


def create_app(state: AppState, *, middleware: Sequence[Middleware] = ()) -> FastAPI:
    """The API application serving from ``state``; ``middleware`` mounts front-ends served
    on the same listener (the HTTP broker's ``/t/...`` routes, built by the node)."""
    app = FastAPI(
        title="Tether",
        version=__version__,
        summary="Privileged access broker for AI agents",
        docs_url="/docs",
        middleware=list(middleware),
    )
    install_problem_handlers(app)
    app.state.tether = state
    _add_routes(app, state)
    if state.identity is not None:
        for router in (oauth.router, certs.router, agents.router, admin.router, audit.router):
            app.include_router(router)
        for router in vault.routers:
            app.include_router(router)
        for router in (access_requests.router, users.router, oidc_login.router):  # humans
            app.include_router(router)
    return app


def _add_routes(app: FastAPI, state: AppState) -> None:
    @app.get("/healthz", response_model=Health, response_model_exclude_none=True, tags=["node"])
    async def healthz() -> Health:
        """Liveness (always 200: a restart would not help), the version of the policy set in
        force, whether the node refuses every credential (an unverified revocation list),
        and how many revocations it holds that the database lost."""
        current = state.policies.current
        health = Health(status="ok", policy_version=current.version, rules=len(current.rules))
        if state.identity is not None:
            unverified = state.identity.revoked.unverified is not None
            health.revocations = "unverified" if unverified else "verified"
            health.status = "refusing" if unverified else "ok"
            health.revocations_missing = state.identity.revocations_missing or None
        return health

    @app.post(
        "/v1/decide",
        tags=["policy"],
        response_model=DecisionBody,
        responses={400: _PROBLEM_RESPONSE, 413: _PROBLEM_RESPONSE},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": DECIDE_REQUEST_SCHEMA}},
            }
        },
    )
    async def decide(request: Request) -> JSONResponse:
        """Decide one request of the policy contract against the policy set in force."""
        try:
            body = parse_json(await _read_body(request))
        except _BodyTooLarge:
            return problem(413, f"request body: larger than {MAX_BODY_BYTES} bytes")
        except JsonInputError as error:
            return problem(400, f"request body: {error}")
        began = time.perf_counter()
        decision = state.policies.current.decide(body)
        if state.auditor is not None:  # audited before it is answered, allowed or not
            took = (time.perf_counter() - began) * 1000
            request_object = body if isinstance(body, Mapping) else {}
            try:
                await state.auditor.decision(
                    request_object, decision, duration_ms=took, extra=_unvouched(request)
                )
            except AuditUnavailable:
                return problem(503, "the audit trail is unavailable: no decision is given")
        return JSONResponse(decision.to_dict())


def _unvouched(request: Request) -> dict[str, Any]:
    """What marks a decision event of ``/v1/decide``: it takes no credential, so the agent,
    runtime, task, user and ``source_ip`` it records are the body's word only. The event
    said nothing of it, and read like a broker's decision for that agent from that address;
    ``peer`` is the address the question really came from."""
    peer = request.client.host if request.client is not None else None
    return {"unauthenticated": True, "peer": peer}


async def _read_body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
