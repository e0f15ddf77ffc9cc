"""Agent API: who am I, and certificates for the agent's own keys.

Every route is authenticated by :meth:`IdentityService.authenticate` (the one check every
front-end uses): ``Authorization: DPoP <access token>`` plus a ``DPoP`` proof for this exact
method and URL (the external URL: ``identity.issuer`` plus the path). A refusal is a 401
problem with ``WWW-Authenticate: DPoP error="...", error_description="...", algs="..."``;
without any credential, the challenge carries no error (RFC 6750 section 3.1).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from tether.api.adminauth import identity_of
from tether.api.bodies import body_schema, json_body
from tether.api.oauth import DPOP_ALGS, audit_refusal, credential_problem, single_dpop
from tether.api.problems import ProblemError
from tether.identity.claims import Claims
from tether.identity.errors import CredentialError, IssuanceError
from tether.identity.replay import ReplayCacheFull
from tether.identity.service import Presented

router = APIRouter(tags=["agent"])


async def agent_claims(request: Request) -> Claims:
    """The verified claims of the request's DPoP-bound token, or a 401 problem."""
    identity = identity_of(request)
    values = request.headers.getlist("authorization")
    if not values:
        audit_refusal(request, error="missing_token", reason="no access token", status=401)
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
        audit_refusal(request, error=error.code, reason=error.reason, status=error.status)
        raise credential_problem(error) from None
    except ReplayCacheFull:
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
    try:
        certificate = await identity.ssh_certificate(
            claims, body.public_key, body.principals, _source(request)
        )
    except CredentialError as error:
        raise credential_problem(error) from None
    except IssuanceError as error:
        raise ProblemError(400, f"certificate refused: {error}") from None
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
        raise credential_problem(error) from None
    except IssuanceError as error:
        raise ProblemError(400, f"certificate refused: {error}") from None
    answer: dict[str, Any] = {
        "certificate": certificate,
        "ca": identity.keys.x509_ca.ca_cert_pem().decode(),
    }
    if bound is not None:
        answer["access_token"] = bound.response()
    return answer


def _source(request: Request) -> str | None:
    """The caller's address as a one-address CIDR block, when it is an IP address."""
    host = request.client.host if request.client else None
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return None
    return str(ipaddress.ip_network(address))
