"""Admin API: revocations and signing-key rotation.

A revocation takes effect on this node before the answer is sent, and on every other node
sharing the database within one ``identity.revocation_poll``; it is permanent. Revoking a
token revokes its renewal family with it (every renewal and re-scoping of the agent's own
token, older or newer: :meth:`~tether.identity.service.IdentityService.revoke_reporting`);
the answer and the audit event name the family and list the live credentials it ended
(``ended``, at most 100; ``ended_more`` when there were more). Rotating the
signing key makes a new key sign from now on, while the previous one keeps verifying the
tokens it signed until they expire (the overlap is ``identity.max_token_lifetime``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tether.api.adminauth import AdminCall, admin_call
from tether.api.bodies import body_schema, json_body

router = APIRouter(tags=["revocation"])


class RevocationCreate(BaseModel):
    """What to revoke: a token id (``jti``), an agent, a task or a runtime id."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["token", "agent", "task", "runtime"]
    value: Annotated[str, Field(min_length=1, max_length=512)]
    reason: Annotated[str, Field(min_length=1, max_length=500)]


@router.post("/v1/revocations", status_code=201, openapi_extra=body_schema(RevocationCreate))
async def revoke(
    call: Annotated[AdminCall, Depends(admin_call("revoke"))],
    body: Annotated[RevocationCreate, Depends(json_body(RevocationCreate))],
) -> JSONResponse:
    """Revoke for good; 201 when new, 200 when it was revoked already (unchanged)."""
    call.target = f"{body.kind}:{body.value}"
    call.detail["reason"] = body.reason
    done = await call.identity.revoke_reporting(
        body.kind, body.value, reason=body.reason, by=call.actor
    )
    answer: dict[str, Any] = {"kind": body.kind, "value": body.value, "created": done.created}
    if done.family is not None:  # a token: its renewal family ended with it, and what else
        ended: dict[str, Any] = {"family": done.family, "ended": list(done.ended)}
        if done.more:
            ended["ended_more"] = True
        answer |= ended
        # The trail redacts a target "token:<value>" (``token`` is a sensitive field name
        # by default); a jti is no secret, so the event names it here too.
        call.detail |= {"jti": body.value, **ended}
    return JSONResponse(answer, status_code=201 if done.created else 200)


@router.post("/v1/keys/rotate")
async def rotate_keys(
    call: Annotated[AdminCall, Depends(admin_call("keys.rotate"))],
) -> dict[str, Any]:
    """Make a new access-token signing key active; returns its kid."""
    call.target = "access-token-key"
    kid = await call.identity.rotate_keys()
    call.detail["kid"] = kid
    return {"kid": kid, "overlap_seconds": int(call.identity.keys.ring.overlap)}
