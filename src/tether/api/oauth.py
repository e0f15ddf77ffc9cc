"""The OAuth 2.0 side: the token endpoint (RFC 8693 token exchange, DPoP) and the JWKS.

``POST /oauth/token`` takes an ``application/x-www-form-urlencoded`` body and one ``DPoP``
header; the proof's ``htu`` is the endpoint's external URL, ``identity.issuer`` plus
``/oauth/token``. Errors are RFC 9457 problem details that also carry RFC 6749's
``error`` and ``error_description`` members, so OAuth clients and problem-aware clients
both read them:

=====================================  ======  ============================================
refusal                                status  ``error``
=====================================  ======  ============================================
a malformed or refused request          400     ``invalid_request``, ``invalid_grant``,
                                               ``invalid_scope``, ``unsupported_grant_type``
the DPoP proof (missing, bad, several)  400     ``invalid_dpop_proof`` (RFC 9449 section 5)
a presented Tether token                401     ``invalid_token``, with ``WWW-Authenticate``
replay cache saturated                  503     ``temporarily_unavailable``
the audit trail cannot commit           503     ``temporarily_unavailable``
=====================================  ======  ============================================

Every answer of the token endpoint, and of the certificate endpoints
(:mod:`tether.api.certs`), is an audit event: ``token.issued`` (the token's ``jti``, scope,
expiry, grant and the agent, runtime, task and delegation it names) or ``token.refused``
(why, the RFC 6749 error, the agent when the request named one, the peer address).

Security decisions:

* **The credential is never in the event**: no token, proof or certificate text, only
  its id (``jti``, ``<kind>:<serial>``), and of a refused join token its public id. The
  reason is always a text Tether wrote, never one copied from the request.
* **Issued means audited**: the token leaves only after its ``token.issued`` event has
  committed; when the trail cannot commit it the answer is ``503
  temporarily_unavailable`` and the token, though recorded, is never handed out.
* A refusal stands whether or not its event could be written (it is logged either way).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tether.api.adminauth import identity_of, peer_of, tether_state
from tether.api.problems import ProblemError
from tether.audit.log import AuditUnavailable
from tether.audit.subject import Subject
from tether.identity import exchange as ex
from tether.identity.claims import Claims
from tether.identity.dpop import DEFAULT_ALGS
from tether.identity.errors import CredentialError, DPoPInvalid
from tether.identity.exchange import ExchangeError
from tether.identity.replay import ReplayCacheFull
from tether.identity.service import JOIN_TOKEN_PREFIX

router = APIRouter(tags=["oauth"])

TOKEN_PATH: Final = "/oauth/token"  # noqa: S105 - a path, not a secret
FORM: Final = "application/x-www-form-urlencoded"
MAX_FORM_BYTES: Final = 64 * 1024
DPOP_ALGS: Final = " ".join(sorted(DEFAULT_ALGS))
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}
AUDIT_LOGGER: Final = "tether.audit.credentials"
_audit_log = logging.getLogger(AUDIT_LOGGER)
log = logging.getLogger(__name__)


# The public id of a join token: ``tjt_<id>.`` (the secret after the dot).
_JOIN_TOKEN_ID: Final = re.compile(re.escape(JOIN_TOKEN_PREFIX) + r"([A-Za-z0-9_-]{1,64})\.")


def subject_of(claims: Claims, source_ip: str | None) -> Subject:
    """Who a token names: its agent, runtime, task, and for a delegation the user and the
    actor chain (outermost first)."""
    chain: list[str] = []
    actor = claims.act
    while actor is not None:
        chain.append(actor.sub)
        actor = actor.act
    return Subject(
        agent=claims.agent_id, runtime=claims.runtime.id, task=claims.task.id,
        user=claims.sub if claims.act is not None else None, actor_chain=tuple(chain),
        source_ip=source_ip,
    )  # fmt: skip


async def audit_refusal(
    request: Request,
    *,
    error: str,
    reason: str,
    status: int,
    agent: str | None = None,
    grant_type: str | None = None,
    **detail: Any,
) -> None:
    """Record a refused credential request (``token.refused``) and log it; never raises.

    ``reason`` is always a text Tether wrote, never one copied from the request.
    """
    endpoint = f"{request.method} {request.url.path}"
    record = {
        "event": "credential.refused", "endpoint": endpoint, "peer": peer_of(request),
        "error": error, "reason": reason, "status": status,
    }  # fmt: skip
    if agent is not None:
        record["agent"] = agent
    _audit_log.info(
        "credential refused on %s: %s (%s)", endpoint, reason, error, extra={"audit": record}
    )
    auditor = tether_state(request).auditor
    if auditor is None:
        return
    try:
        await auditor.token_refused(
            Subject(agent=agent, source_ip=peer_of(request)), reason=reason,
            grant_type=grant_type,
            detail={"endpoint": endpoint, "error": error, "status": status, **detail},
        )  # fmt: skip
    except AuditUnavailable as failure:
        _audit_log.error("credential refusal on %s not audited: %s", endpoint, failure)


async def audit_issued(
    request: Request,
    claims: Claims,
    *,
    issued: str,
    jti: str,
    expires_at: int,
    grant_type: str | None = None,
    **detail: Any,
) -> None:
    """Record an issued credential (``token.issued``) before it is handed out; a 503
    problem when the trail cannot commit the event."""
    auditor = tether_state(request).auditor
    if auditor is None:
        return
    try:
        await auditor.token_issued(
            subject_of(claims, peer_of(request)), jti=jti, issued=issued, scope=claims.scope,
            expires_at=datetime.fromtimestamp(expires_at, UTC), grant_type=grant_type,
            audience=claims.aud,
            detail={"endpoint": f"{request.method} {request.url.path}", **detail},
        )  # fmt: skip
    except AuditUnavailable:
        _audit_log.error("%s %s not audited: withheld", issued, jti)
        raise oauth_problem(
            503, "temporarily_unavailable", "the audit trail is unavailable; try again shortly"
        ) from None


def oauth_problem(status: int, error: str, description: str, **headers: str) -> ProblemError:
    """A problem that is also an RFC 6749 error response."""
    return ProblemError(
        status,
        description,
        headers={**_NO_STORE, **headers},
        error=error,
        error_description=description,
    )


def credential_problem(error: CredentialError) -> ProblemError:
    """401 with ``WWW-Authenticate: DPoP error=..., algs=...`` (or the error's own status)."""
    headers = {}
    if error.status == 401:
        headers["WWW-Authenticate"] = error.challenge("DPoP", algs=DPOP_ALGS)
    return oauth_problem(error.status, error.code, error.reason, **headers)


def single_dpop(request: Request) -> str | None:
    """The one ``DPoP`` header, None when absent; ``DPoPInvalid`` when there are several."""
    values = request.headers.getlist("dpop")
    if len(values) > 1:
        raise DPoPInvalid("more than one DPoP header")
    return values[0] if values else None


@router.get("/.well-known/jwks.json")
async def jwks(request: Request) -> JSONResponse:
    """The public keys that verify Tether's access tokens (the active and previous ones)."""
    identity = identity_of(request)
    document = identity.keys.ring.jwks(identity.clock().timestamp())
    return JSONResponse(document, headers={"Cache-Control": "public, max-age=60"})


@router.post(
    TOKEN_PATH,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {FORM: {"schema": {"type": "object", "additionalProperties": True}}},
        }
    },
)
async def token(request: Request) -> JSONResponse:
    """RFC 8693 token exchange: a join, workload, Tether or user token for a DPoP-bound one."""
    identity = identity_of(request)
    form: dict[str, str] = {}
    try:
        form = await _form(request)
        issued = await identity.exchange(
            form,
            dpop=single_dpop(request),
            url=identity.settings.issuer + TOKEN_PATH,
            address=peer_of(request),
        )
    except ProblemError as refused:  # the form itself
        error = str(refused.members.get("error", "invalid_request"))
        await _refused(request, form, error, refused.detail, refused.status)
        raise
    except ExchangeError as error:
        await _refused(request, form, error.error, error.description, error.status)
        raise oauth_problem(error.status, error.error, error.description) from None
    except DPoPInvalid as error:
        await _refused(request, form, error.code, error.reason, 400)
        raise oauth_problem(400, error.code, error.reason) from None
    except CredentialError as error:
        await _refused(request, form, error.code, error.reason, error.status)
        raise credential_problem(error) from None
    except ReplayCacheFull:
        await _refused(request, form, "temporarily_unavailable", "replay cache full", 503)
        raise oauth_problem(503, "temporarily_unavailable", "try again shortly") from None
    except Exception as failure:  # the store failed: nothing issued, the refusal audited
        log.error("token exchange failed", exc_info=failure)
        reason = f"internal error ({type(failure).__name__})"
        await _refused(request, form, "server_error", reason, 500)
        raise oauth_problem(500, "server_error", "internal error; see the server log") from None
    claims = issued.claims
    await audit_issued(
        request, claims, issued="access_token", jti=claims.jti, expires_at=claims.exp,
        grant_type=form.get("grant_type"), subject_type=form.get("subject_token_type"),
        binding=issued.response()["token_type"],
    )  # fmt: skip
    return JSONResponse(issued.response(), headers=_NO_STORE)


async def _refused(
    request: Request, form: dict[str, str], error: str, reason: str, status: int
) -> None:
    """Audit a refusal of the token endpoint with what the form says, secrets aside."""
    detail: dict[str, Any] = {}
    kind = form.get("subject_token_type")
    if kind is not None:
        detail["subject_type"] = kind[:200]
    if kind == ex.JOIN_TOKEN:
        claimed = _JOIN_TOKEN_ID.match(form.get("subject_token", ""))
        if claimed is not None:
            detail["join_id"] = claimed.group(1)
    grant = form.get("grant_type")
    await audit_refusal(
        request, error=error, reason=reason, status=status,
        grant_type=None if grant is None else grant[:200], **detail,
    )  # fmt: skip


async def _form(request: Request) -> dict[str, str]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != FORM:
        raise oauth_problem(400, "invalid_request", f"the body must be {FORM}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise oauth_problem(400, "invalid_request", "the body is too large")
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise oauth_problem(400, "invalid_request", "the body is not a valid form") from None
    form: dict[str, Any] = {}
    for name, value in pairs:
        if name in form:  # RFC 6749 section 3.2: no parameter more than once
            # Named only when shaped like a parameter: the reason is audited (no secret in it).
            named = repr(name) if ex.is_parameter_name(name) else "a parameter"
            raise oauth_problem(400, "invalid_request", f"{named} is given twice")
        form[name] = value
    return form
