"""The broker's refusals: RFC 9457 problem responses, one builder per kind of refusal.

Every refusal carries the request id (also in the ``X-Request-Id`` header) so that an agent
or its operator can find the audit events of the request. Texts are Tether's own: nothing
from the target's answer or the vault reaches a refusal body (a target's error page could
echo the injected credential).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from starlette.responses import JSONResponse

from tether.api.problems import problem
from tether.approvals.frontend import RETRY_AFTER
from tether.identity.dpop import DEFAULT_ALGS
from tether.identity.errors import CredentialError
from tether.policy.model import Decision

DPOP_ALGS: Final = " ".join(sorted(DEFAULT_ALGS))
REQUEST_ID: Final = "X-Request-Id"
AUDIT_UNAVAILABLE: Final = "the audit trail is unavailable"  # the 503 of invariant 5


def unauthenticated(request_id: str) -> JSONResponse:
    """401 without an error code: no credential was presented (RFC 6750 section 3.1)."""
    return problem(
        401, "an access token is required",
        headers={"WWW-Authenticate": f'DPoP algs="{DPOP_ALGS}"', REQUEST_ID: request_id},
        request_id=request_id,
    )  # fmt: skip


def credential_refused(error: CredentialError, request_id: str) -> JSONResponse:
    """401 with ``WWW-Authenticate: DPoP error=...`` naming the failed check."""
    headers = {"WWW-Authenticate": error.challenge("DPoP", algs=DPOP_ALGS), REQUEST_ID: request_id}
    return problem(
        error.status, error.reason, headers=headers, error=error.code, request_id=request_id
    )


def denied(
    decision: Decision, request_id: str, access: Mapping[str, Any] | None = None
) -> JSONResponse:
    """403 naming the reason, the rule (or null) and the request id; for an approval, the
    access request raised (``access``: its id, status and status URL) and ``Retry-After``."""
    members: dict[str, Any] = {
        "decision": decision.decision,
        "reason": decision.reason,
        "rule": decision.rule,
        "request_id": request_id,
        **(access or {}),
    }
    headers = {REQUEST_ID: request_id}
    if decision.decision == "approval_required":
        detail = f"rule {decision.rule!r} needs a human approval for this request"
        if access is not None:
            detail += f": access request {access['access_request']}, see {access['status_url']}"
            headers["Retry-After"] = str(RETRY_AFTER)
    elif decision.rule is not None:
        detail = f"denied by rule {decision.rule!r} ({decision.reason})"
    else:
        detail = f"denied ({decision.reason})"
    if decision.detail and decision.decision != "approval_required":
        detail = f"{detail}: {decision.detail}"
    return problem(403, detail, headers=headers, **members)


def plain(status: int, detail: str, request_id: str, **members: Any) -> JSONResponse:
    """Any other refusal: 404, 413, 414, 431, 502, 503, 504..."""
    return problem(
        status, detail, headers={REQUEST_ID: request_id}, request_id=request_id, **members
    )
