"""Authentication of the admin API, and the audit event of every admin call.

Admin endpoints take ``Authorization: Bearer <admin token>`` (see
:mod:`tether.identity.admintokens`). Each route depends on :func:`admin_call` with the name
of its action; the dependency refuses an unknown, expired or revoked token with a 401
problem, and after the route has run (or refused) it emits exactly one ``admin.change``
event through :func:`audit_admin`: who (``admin-token:<id>``, or ``anonymous``), what (the
action), on what (the target), from where (the peer address), and how it ended
(``success``; ``refused`` with the status and reason; ``denied`` when the admin token was
missing, unknown, expired or revoked; ``error``). The same record also goes to the
``tether.audit.admin`` logger.

Security decisions:

* **Audited before the answer leaves.** The auditing part of the dependency runs with
  FastAPI's ``function`` scope: its exit (the audit of the outcome) completes before the
  response is sent. A successful change whose event cannot be committed
  (:class:`~tether.audit.log.AuditUnavailable`) is answered ``503``: its effect happened,
  but its result (a join token, a new key id) is never handed out unaudited. A refusal
  stays a refusal whether or not its event could be written.
* **Refused admin logins are events too** (``denied``), with the peer address and, when
  the presented text has the shape of an admin token, its public id (never the secret).
* A node built without an audit trail (``AppState.auditor`` None: embedded uses and unit
  tests) only logs; ``tether serve`` always has one, and refuses to start without it.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from tether.api.humans import personal_token_actor
from tether.api.problems import ProblemError
from tether.api.state import AppState
from tether.audit.log import AuditUnavailable
from tether.identity.admintokens import ADMIN_TOKEN_PREFIX, find_admin_token
from tether.identity.service import IdentityService

AUDIT_LOGGER: Final = "tether.audit.admin"
_audit_log = logging.getLogger(AUDIT_LOGGER)
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="tether-admin"'}
# The public id of a presented admin token: ``tat_<id>.`` (the secret after the dot).
_TOKEN_ID: Final = re.compile(re.escape(ADMIN_TOKEN_PREFIX) + r"([A-Za-z0-9_-]{1,64})\.")
UNAUDITED: Final = "the audit trail is unavailable: the change was made, its answer is withheld"


def peer_of(request: Request) -> str | None:
    """The address of the peer that sent ``request``."""
    return request.client.host if request.client else None


async def audit_admin(
    request: Request,
    *,
    actor: str,
    action: str,
    target: str | None,
    outcome: str,
    **detail: Any,
) -> dict[str, Any]:
    """Record one admin call in the audit trail (and the logger); return the record.

    Raises :class:`~tether.audit.log.AuditUnavailable` when the trail cannot commit it.
    """
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
    auditor = tether_state(request).auditor
    if auditor is not None:
        where = {"method": request.method, "path": request.url.path}
        await auditor.admin_change(
            actor, action, target, outcome, {**where, **detail}, source_ip=peer_of(request)
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
    # False: the route found that this successful call must not be audited (a follow
    # poll of the audit trail that read only such polls' own events). Refusals always are.
    audited: bool = True


def tether_state(request: Request) -> AppState:
    """The node's state, as ``create_app`` attached it."""
    state: AppState = request.app.state.tether
    return state


def identity_of(request: Request) -> IdentityService:
    identity = tether_state(request).identity
    if identity is None:  # create_app mounts these routes only with an identity service
        raise ProblemError(503, "identity is not configured on this node")
    return identity


def admin_call(action: str) -> Callable[..., Any]:
    """The dependency of an admin route doing ``action``: authenticates, then audits.

    The audited part is a sub-dependency of ``function`` scope, so that the outcome is in
    the trail before the response is sent (a ``request``-scoped one ends after it)."""

    async def audited(request: Request) -> AsyncIterator[AdminCall]:
        identity = identity_of(request)
        call = AdminCall(await _authenticate(request, identity, action), action, identity)
        try:
            yield call
        except ProblemError as refused:
            await _audit_refusal(request, call, "refused", status=refused.status,
                                 reason=refused.detail)  # fmt: skip
            raise
        except RequestValidationError:
            await _audit_refusal(request, call, "refused", status=422,
                                 reason="invalid request body")  # fmt: skip
            raise
        except HTTPException as refused:
            await _audit_refusal(request, call, "refused", status=refused.status_code,
                                 reason=str(refused.detail))  # fmt: skip
            raise
        except Exception:
            await _audit_refusal(request, call, "error", status=500)
            raise
        if not call.audited:
            return
        try:
            await _audit(request, call, "success")
        except AuditUnavailable:
            _audit_log.error("admin %s by %s not audited: answered 503", action, call.actor)
            raise ProblemError(503, UNAUDITED) from None

    async def dependency(call: AdminCall) -> AdminCall:
        return call

    # Set as an object, not written as an annotation: with postponed annotations FastAPI
    # could not resolve the closure's ``audited`` from a string.
    marker = Annotated[AdminCall, Depends(audited, scope="function")]
    parameter = inspect.Parameter("call", inspect.Parameter.KEYWORD_ONLY, annotation=marker)
    dependency.__signature__ = inspect.Signature([parameter], return_annotation=AdminCall)  # type: ignore[attr-defined]
    return dependency


async def _audit(request: Request, call: AdminCall, outcome: str, **detail: Any) -> None:
    await audit_admin(
        request,
        actor=call.actor,
        action=call.action,
        target=call.target,
        outcome=outcome,
        **{**call.detail, **detail},
    )


async def _audit_refusal(request: Request, call: AdminCall, outcome: str, **detail: Any) -> None:
    """Audit a refused call; the refusal stands even when its event cannot be written."""
    try:
        await _audit(request, call, outcome, **detail)
    except AuditUnavailable as error:
        _audit_log.error("admin %s refusal by %s not audited: %s", call.action, call.actor, error)


async def _authenticate(request: Request, identity: IdentityService, action: str) -> str:
    """``admin-token:<id>`` of the caller, or a 401 problem (audited as ``denied``)."""
    human = await personal_token_actor(request, action)  # ``user:<id>`` (tether.api.humans)
    if human is not None:
        return human
    presented = _bearer(request)
    token = None
    if presented is not None:
        token = await find_admin_token(
            identity.engine, identity.sealer, presented, now=identity.clock(),
            revoked=identity.revoked,
        )  # fmt: skip
    if token is None:
        reason = "missing admin token" if presented is None else "unknown, expired or revoked"
        detail: dict[str, Any] = {"status": 401, "reason": reason}
        claimed = _TOKEN_ID.match(presented or "")
        if claimed is not None:
            detail["presented_id"] = claimed.group(1)
        try:
            await audit_admin(request, actor="anonymous", action=action,
                              target=request.url.path, outcome="denied", **detail)  # fmt: skip
        except AuditUnavailable as error:
            _audit_log.error("refused admin login not audited: %s", error)
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
