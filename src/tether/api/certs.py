"""Agent API: who am I, and certificates for the agent's own keys.

Every route is authenticated by :meth:`IdentityService.authenticate` (the one check every
front-end uses): ``Authorization: DPoP <access token>`` plus a ``DPoP`` proof for this exact
method and URL (the external URL: ``identity.issuer`` plus the path). A refusal is a 401
problem with ``WWW-Authenticate: DPoP error="...", error_description="...", algs="..."``;
without any credential, the challenge carries no error (RFC 6750 section 3.1).

Every refusal is a ``token.refused`` audit event and every certificate (and certificate-
bound token) a ``token.issued`` one, committed before the answer is sent
(:func:`tether.api.oauth.audit_issued`); events carry the credential's id
(``ssh_certificate:<serial>``, ``x509_certificate:<hex serial>``, a token's ``jti``),
never the certificate or the token.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from cryptography import x509
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from tether.api.adminauth import identity_of
from tether.api.bodies import body_schema, json_body
from tether.api.oauth import (
    DPOP_ALGS,
    audit_issued,
    audit_refusal,
    credential_problem,
    single_dpop,
)
from tether.api.problems import ProblemError
from tether.identity.claims import Claims
from tether.identity.errors import CredentialError, IssuanceError
from tether.identity.replay import ReplayCacheFull
from tether.identity.service import Presented
from tether.identity.sshca import describe_certificate

router = APIRouter(tags=["agent"])


async def agent_claims(request: Request) -> Claims:
    """The verified claims of the request's DPoP-bound token, or a 401 problem."""
    identity = identity_of(request)
    values = request.headers.getlist("authorization")
    if not values:
        await audit_refusal(request, error="missing_token", reason="no access token", status=401)
        challenge = f'DPoP algs="{DPOP_ALGS}"'
        raise ProblemError(
            401, "an access token is required", headers={"WWW-Authenticate": challenge}
        )
    scheme, _, token = values[0].partition(" ")
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    try:
        if len(values) > 1 or scheme.lower() != "dpop" or not token.strip():
            raise CredentialError("use one Authorization: DPoP <token> header")
        return await identity.authenticate(
            Presented(
                token=token.strip(),
                method=request.method,
                url=identity.settings.issuer + raw_path.decode("latin-1"),
                dpop=single_dpop(request),
            )
        )
    except CredentialError as error:
        await audit_refusal(request, error=error.code, reason=error.reason, status=error.status)
        raise credential_problem(error) from None
    except ReplayCacheFull:
        await audit_refusal(request, error="temporarily_unavailable", reason="replay cache full",
                            status=503)  # fmt: skip
        raise ProblemError(503, "DPoP replay cache is full; try again shortly") from None


Agent = Annotated[Claims, Depends(agent_claims)]


class SshCertificateRequest(BaseModel):
    """An OpenSSH public key line and the login names the certificate is for."""

    model_config = ConfigDict(extra="forbid")

    public_key: Annotated[str, Field(min_length=1, max_length=16384)]
    principals: Annotated[list[Annotated[str, Field(max_length=64)]], Field(min_length=1)]


class X509CertificateRequest(BaseModel):
    """A PEM certificate signing request; only its public key is used."""

    model_config = ConfigDict(extra="forbid")

    csr: Annotated[str, Field(min_length=1, max_length=16384)]
    # Also issue an access token bound to the certificate (RFC 8705 cnf.x5t#S256).
    bind_token: bool = False


@router.get("/v1/whoami")
async def whoami(claims: Agent) -> dict[str, Any]:
    """The verified claims of the presented token."""
    return {**claims.to_json(), "agent_id": claims.agent_id}


@router.post("/v1/certificates/ssh", openapi_extra=body_schema(SshCertificateRequest))
async def ssh_certificate(
    claims: Agent,
    body: Annotated[SshCertificateRequest, Depends(json_body(SshCertificateRequest))],
    request: Request,
) -> dict[str, Any]:
    """An SSH user certificate for the agent's key, usable from the caller's address only."""
    identity = identity_of(request)
    source = _source(request)
    try:
        certificate = await identity.ssh_certificate(
            claims, body.public_key, body.principals, source
        )
    except CredentialError as error:
        await _refused(request, claims, error.code, error.reason, error.status)
        raise credential_problem(error) from None
    except IssuanceError as error:
        await _refused(request, claims, "certificate_refused", str(error), 400)
        raise ProblemError(400, f"certificate refused: {error}") from None
    described = describe_certificate(certificate)
    await audit_issued(
        request, claims, issued="ssh_certificate", jti=f"ssh_certificate:{described.serial}",
        expires_at=int(described.valid_before.timestamp()), principals=list(body.principals),
        source_address=source,
    )  # fmt: skip
    return {"certificate": certificate}


@router.post("/v1/certificates/x509", openapi_extra=body_schema(X509CertificateRequest))
async def x509_certificate(
    claims: Agent,
    body: Annotated[X509CertificateRequest, Depends(json_body(X509CertificateRequest))],
    request: Request,
) -> dict[str, Any]:
    """A short-lived SPIFFE client certificate for the CSR's key, and the CA certificate."""
    identity = identity_of(request)
    try:
        certificate = await identity.x509_certificate(claims, body.csr)
        bound = (
            await identity.certificate_bound_token(claims, certificate) if body.bind_token else None
        )
    except CredentialError as error:
        await _refused(request, claims, error.code, error.reason, error.status)
        raise credential_problem(error) from None
    except IssuanceError as error:
        await _refused(request, claims, "certificate_refused", str(error), 400)
        raise ProblemError(400, f"certificate refused: {error}") from None
    cert = x509.load_pem_x509_certificate(certificate.encode())
    serial = format(cert.serial_number, "x")
    await audit_issued(
        request, claims, issued="x509_certificate", jti=f"x509_certificate:{serial}",
        expires_at=int(cert.not_valid_after_utc.timestamp()),
    )  # fmt: skip
    if bound is not None:
        await audit_issued(
            request, bound.claims, issued="access_token", jti=bound.claims.jti,
            expires_at=bound.claims.exp, bound_to=f"x509_certificate:{serial}",
        )  # fmt: skip
    answer: dict[str, Any] = {
        "certificate": certificate,
        "ca": identity.keys.x509_ca.ca_cert_pem().decode(),
    }
    if bound is not None:
        answer["access_token"] = bound.response()
    return answer


async def _refused(request: Request, claims: Claims, error: str, reason: str, status: int) -> None:
    await audit_refusal(
        request, error=error, reason=reason, status=status, agent=claims.agent_id,
        task=claims.task.id, jti=claims.jti,
    )  # fmt: skip


def _source(request: Request) -> str | None:
    """The caller's address as a one-address CIDR block, when it is an IP address."""
    host = request.client.host if request.client else None
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return None
    return str(ipaddress.ip_network(address))
