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
=====================================  ======  ============================================
"""

from __future__ import annotations

import logging
from typing import Any, Final
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tether.api.adminauth import identity_of
from tether.api.problems import ProblemError
from tether.identity.dpop import DEFAULT_ALGS
from tether.identity.errors import CredentialError, DPoPInvalid
from tether.identity.exchange import ExchangeError
from tether.identity.replay import ReplayCacheFull

router = APIRouter(tags=["oauth"])

TOKEN_PATH: Final = "/oauth/token"  # noqa: S105 - a path, not a secret
FORM: Final = "application/x-www-form-urlencoded"
MAX_FORM_BYTES: Final = 64 * 1024
DPOP_ALGS: Final = " ".join(sorted(DEFAULT_ALGS))
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}
AUDIT_LOGGER: Final = "tether.audit.credentials"
_audit_log = logging.getLogger(AUDIT_LOGGER)


def audit_refusal(request: Request, *, error: str, reason: str, status: int) -> None:
    """The audit-ready record of a refused credential (the audit issue wires it to the trail).

    ``reason`` is always a text Tether wrote, never one copied from the request.
    """
    record = {
        "event": "credential.refused",
        "endpoint": f"{request.method} {request.url.path}",
        "peer": request.client.host if request.client else None,
        "error": error,
        "reason": reason,
        "status": status,
    }
    _audit_log.info(
        "credential refused on %s: %s (%s)", record["endpoint"], reason, error,
        extra={"audit": record},
    )  # fmt: skip


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
    form = await _form(request)
    try:
        issued = await identity.exchange(
            form,
            dpop=single_dpop(request),
            url=identity.settings.issuer + TOKEN_PATH,
            address=request.client.host if request.client else None,
        )
    except ExchangeError as error:
        audit_refusal(request, error=error.error, reason=error.description, status=error.status)
        raise oauth_problem(error.status, error.error, error.description) from None
    except DPoPInvalid as error:
        audit_refusal(request, error=error.code, reason=error.reason, status=400)
        raise oauth_problem(400, error.code, error.reason) from None
    except CredentialError as error:
        audit_refusal(request, error=error.code, reason=error.reason, status=error.status)
        raise credential_problem(error) from None
    except ReplayCacheFull:
        raise oauth_problem(503, "temporarily_unavailable", "try again shortly") from None
    return JSONResponse(issued.response(), headers=_NO_STORE)


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
            raise oauth_problem(400, "invalid_request", f"{name[:40]!r} is given twice")
        form[name] = value
    return form
