"""Authentication of the admin API, and the audit-ready record of every admin call.

Admin endpoints take ``Authorization: Bearer <admin token>`` (see
:mod:`tether.identity.admintokens`). Each route depends on :func:`admin_call` with the name
of its action; the dependency refuses an unknown, expired or revoked token with a 401
problem, and after the route has run (or refused) it emits exactly one record through
:func:`audit_admin`: who (the admin token), what (the action), on what (the target), and
how it ended (``success``, ``refused`` with the status, ``denied`` when unauthenticated,
``error``). The audit trail's issue wires :func:`audit_admin` to the trail; until then the
record goes to the ``tether.audit.admin`` logger, with the record itself as ``extra``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from tether.api.problems import ProblemError
from tether.api.state import AppState
from tether.identity.admintokens import find_admin_token
from tether.identity.service import IdentityService

AUDIT_LOGGER: Final = "tether.audit.admin"
_audit_log = logging.getLogger(AUDIT_LOGGER)
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="tether-admin"'}


def audit_admin(
    *, actor: str, action: str, target: str | None, outcome: str, **detail: Any
) -> dict[str, Any]:
    """Emit the audit-ready record of one admin call, and return it."""
    record: dict[str, Any] = {
        "event": "admin",
        "time": datetime.now(UTC).isoformat(),
        "actor": actor,
        "action": action,
        "target": target,
        "outcome": outcome,
        **detail,
    }
    _audit_log.info(
        "admin %s on %s by %s: %s", action, target or "-", actor, outcome, extra={"audit": record}
    )
    return record


@dataclass
class AdminCall:
    """One authenticated admin call; the route names its ``target`` as soon as it knows it."""

    actor: str
    action: str
    identity: IdentityService
    target: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def tether_state(request: Request) -> AppState:
    """The node's state, as ``create_app`` attached it."""
    state: AppState = request.app.state.tether
    return state


def identity_of(request: Request) -> IdentityService:
    identity = tether_state(request).identity
    if identity is None:  # create_app mounts these routes only with an identity service
        raise ProblemError(503, "identity is not configured on this node")
    return identity


def admin_call(action: str) -> Callable[[Request], AsyncIterator[AdminCall]]:
    """The dependency of an admin route doing ``action``: authenticates, then audits."""

    async def dependency(request: Request) -> AsyncIterator[AdminCall]:
        identity = identity_of(request)
        call = AdminCall(await _authenticate(request, identity, action), action, identity)
        try:
            yield call
        except ProblemError as refused:
            _audit(call, "refused", status=refused.status, reason=refused.detail)
            raise
        except RequestValidationError:
            _audit(call, "refused", status=422, reason="invalid request body")
            raise
        except HTTPException as refused:
            _audit(call, "refused", status=refused.status_code, reason=str(refused.detail))
            raise
        except Exception:
            _audit(call, "error", status=500)
            raise
        else:
            _audit(call, "success")

    return dependency


def _audit(call: AdminCall, outcome: str, **detail: Any) -> None:
    audit_admin(
        actor=call.actor,
        action=call.action,
        target=call.target,
        outcome=outcome,
        **call.detail,
        **detail,
    )


async def _authenticate(request: Request, identity: IdentityService, action: str) -> str:
    """``admin-token:<id>`` of the caller, or a 401 problem (audited as ``denied``)."""
    presented = _bearer(request)
    token = None
    if presented is not None:
        token = await find_admin_token(identity.engine, presented, now=identity.clock())
    if token is None:
        reason = "missing admin token" if presented is None else "unknown, expired or revoked"
        audit_admin(
            actor="anonymous",
            action=action,
            target=request.url.path,
            outcome="denied",
            status=401,
            reason=reason,
        )
        raise ProblemError(401, f"admin token required: {reason}", headers=_CHALLENGE)
    return f"admin-token:{token.id}"


def _bearer(request: Request) -> str | None:
    values = request.headers.getlist("authorization")
    if len(values) != 1:
        return None
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
