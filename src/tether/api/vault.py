"""Admin API: the credential vault's secrets and the target registry.

Every route is authenticated by an admin token and audited (:mod:`tether.api.adminauth`).

Security decisions:

* **A secret's value goes in, never out.** ``PUT /v1/secrets/{name}`` takes it (base64, so
  any bytes fit in JSON); no route returns it, and neither the audit event nor an error
  message carries it: they name the secret and its version.
* **Tether's own secrets are out of reach**: a name under ``tether/`` is refused (422) by
  every secret route and left out of the list, so an admin token cannot read their
  metadata, overwrite or delete them.
* Bodies are validated strictly (unknown members refused); errors are problem details: 404
  for an unknown name, 409 for a name taken (``mode: create``, or adding a target), 422 for
  an invalid name, value or spec.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tether.api.adminauth import AdminCall, admin_call, tether_state
from tether.api.bodies import body_schema, json_body
from tether.api.problems import ProblemError
from tether.vault.names import InvalidName, Kind, check_secret_name, is_reserved
from tether.vault.secrets import (
    MAX_DESCRIPTION_CHARS,
    SecretError,
    SecretExists,
    SecretInfo,
    SecretNotFound,
    SecretStore,
)
from tether.vault.target_specs import secret_names, warnings
from tether.vault.targets import Target, TargetError, TargetExists, TargetNotFound, TargetStore

secrets_router = APIRouter(prefix="/v1/secrets", tags=["vault"])
targets_router = APIRouter(prefix="/v1/targets", tags=["targets"])

Labels = Annotated[dict[str, str], Field(max_length=64)]


class SecretPut(BaseModel):
    """A secret's new value (standard base64) and, optionally, its description.

    ``mode``: ``set`` creates or rotates, ``create`` refuses an existing name (409),
    ``rotate`` refuses a missing one (404).
    """

    model_config = ConfigDict(extra="forbid")

    value_b64: Annotated[str, Field(max_length=100_000)]
    description: Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS)] | None = None
    mode: Literal["set", "create", "rotate"] = "set"


class TargetCreate(BaseModel):
    """A new target: its name, kind, spec (per kind, see docs/targets.md) and labels."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Kind
    spec: dict[str, Any]
    labels: Labels = Field(default_factory=dict)


class TargetReplace(BaseModel):
    """A target's new kind, spec and labels."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind
    spec: dict[str, Any]
    labels: Labels = Field(default_factory=dict)


def secret_json(info: SecretInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "version": info.version,
        "description": info.description,
        "created_at": info.created_at.isoformat(),
        "updated_at": info.updated_at.isoformat(),
    }


def target_json(target: Target) -> dict[str, Any]:
    return {
        "name": target.name,
        "kind": target.kind,
        "labels": dict(target.labels),
        "spec": target.spec.model_dump(mode="json"),
        "warnings": list(warnings(target.spec)),
        "created_at": target.created_at.isoformat(),
        "updated_at": target.updated_at.isoformat(),
    }


def _secrets(request: Request) -> SecretStore:
    store = tether_state(request).secrets
    if store is None:
        raise ProblemError(503, "the vault is not configured on this node")
    return store


def _targets(request: Request) -> TargetStore:
    store = tether_state(request).targets
    if store is None:
        raise ProblemError(503, "the target registry is not configured on this node")
    return store


def _operator_name(name: str) -> str:
    try:
        return check_secret_name(name)
    except InvalidName as error:
        raise ProblemError(422, str(error)) from None


# --- secrets ------------------------------------------------------------------------------


@secrets_router.get("")
async def list_secrets(
    request: Request, call: Annotated[AdminCall, Depends(admin_call("secret.list"))]
) -> dict[str, Any]:
    """Every secret's name, version, description and times (never a value)."""
    call.target = "secrets"
    infos = await _secrets(request).list()
    return {"secrets": [secret_json(info) for info in infos if not is_reserved(info.name)]}


@secrets_router.put("/{name:path}", openapi_extra=body_schema(SecretPut))
async def put_secret(
    name: str,
    request: Request,
    call: Annotated[AdminCall, Depends(admin_call("secret.put"))],
    body: Annotated[SecretPut, Depends(json_body(SecretPut))],
) -> JSONResponse:
    """Create (201) or rotate (200) a secret; answers its info, never its value."""
    call.target = f"vault:{name}"
    call.detail["mode"] = body.mode
    name = _operator_name(name)
    try:
        value = base64.b64decode(body.value_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ProblemError(422, "value_b64: not standard base64") from None
    try:
        info = await _secrets(request).put(
            name, value, description=body.description, mode=body.mode
        )
    except SecretNotFound as missing:
        raise ProblemError(404, str(missing)) from None
    except SecretExists as taken:
        raise ProblemError(409, str(taken)) from None
    except SecretError as refused:
        raise ProblemError(422, str(refused)) from None
    call.detail["version"] = info.version
    answer = {**secret_json(info), "created": info.version == 1}
    return JSONResponse(answer, status_code=201 if info.version == 1 else 200)


@secrets_router.get("/{name:path}")
async def show_secret(
    name: str,
    request: Request,
    call: Annotated[AdminCall, Depends(admin_call("secret.show"))],
) -> dict[str, Any]:
    """A secret's name, version, description and times (never its value)."""
    call.target = f"vault:{name}"
    try:
        return secret_json(await _secrets(request).info(_operator_name(name)))
    except SecretNotFound as missing:
        raise ProblemError(404, str(missing)) from None


@secrets_router.delete("/{name:path}")
async def delete_secret(
    name: str,
    request: Request,
    call: Annotated[AdminCall, Depends(admin_call("secret.delete"))],
) -> dict[str, Any]:
    """Delete a secret for good; targets naming it fail until it is set again."""
    call.target = f"vault:{name}"
    try:
        await _secrets(request).delete(_operator_name(name))
    except SecretNotFound as missing:
        raise ProblemError(404, str(missing)) from None
    return {"name": name, "deleted": True}


# --- targets ------------------------------------------------------------------------------


@targets_router.get("")
async def list_targets(
    request: Request,
    call: Annotated[AdminCall, Depends(admin_call("target.list"))],
    kind: Annotated[Kind | None, Query()] = None,
) -> dict[str, Any]:
    """Every target (of ``kind``, if given), by name."""
    call.target = "targets"
    try:
        found = await _targets(request).list(kind)
    except TargetError as refused:  # a stored row is invalid or changed outside Tether
        raise ProblemError(409, str(refused)) from None
    return {"targets": [target_json(t) for t in found]}


@targets_router.post("", status_code=201, openapi_extra=body_schema(TargetCreate))
async def add_target(
    request: Request,
    call: Annotated[AdminCall, Depends(admin_call("target.add"))],
    body: Annotated[TargetCreate, Depends(json_body(TargetCreate))],
) -> dict[str, Any]:
    """Register a target (409 if the name is taken)."""
    call.target = f"target:{body.name}"
    try:
        target = await _targets(request).add(body.name, body.kind, body.spec, body.labels)
    except TargetExists as taken:
        raise ProblemError(409, str(taken)) from None
    except TargetError as refused:
        raise ProblemError(422, str(refused)) from None
    return await _with_missing(request, target)


@targets_router.get("/{name}")
async def show_target(
    name: str,
    request: Request,
    call: Annotated[AdminCall, Depends(admin_call("target.show"))],
) -> dict[str, Any]:
    """One target, with the secrets it names that do not exist (``missing_secrets``)."""
    call.target = f"target:{name}"
    try:
        target = await _targets(request).get(name)
    except TargetError as refused:  # its stored row is invalid or changed outside Tether
        raise ProblemError(409, str(refused)) from None
    if target is None:
        raise ProblemError(404, f"no target named {name!r}")
    return await _with_missing(request, target)


@targets_router.put("/{name}", openapi_extra=body_schema(TargetReplace))
async def replace_target(
    name: str,
    request: Request,
    call: Annotated[AdminCall, Depends(admin_call("target.replace"))],
    body: Annotated[TargetReplace, Depends(json_body(TargetReplace))],
) -> dict[str, Any]:
    """Replace a target's kind, spec and labels (404 if there is no such target)."""
    call.target = f"target:{name}"
    try:
        target = await _targets(request).replace(name, body.kind, body.spec, body.labels)
    except TargetNotFound as missing:
        raise ProblemError(404, str(missing)) from None
    except TargetError as refused:
        raise ProblemError(422, str(refused)) from None
    return await _with_missing(request, target)


@targets_router.delete("/{name}")
async def remove_target(
    name: str,
    request: Request,
    call: Annotated[AdminCall, Depends(admin_call("target.remove"))],
) -> dict[str, Any]:
    """Remove a target; the secrets it named stay in the vault."""
    call.target = f"target:{name}"
    try:
        await _targets(request).remove(name)
    except TargetNotFound as missing:
        raise ProblemError(404, str(missing)) from None
    return {"name": name, "removed": True}


async def _with_missing(request: Request, target: Target) -> dict[str, Any]:
    store = _secrets(request)
    missing = []
    for name in secret_names(target.spec):
        try:
            await store.info(name)
        except SecretNotFound:
            missing.append(name)
    return {**target_json(target), "missing_secrets": missing}


routers = (secrets_router, targets_router)
