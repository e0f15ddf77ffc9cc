"""The canonical form of one action, and its digest: what an approval is bound to.

An approver approves *this exact action*; the grant that results holds for a request only
when the request's action has the same digest. The digest is computed from the action as
the policy engine normalised it (:func:`tether.policy.request.normalize`), which is also
what the front-ends forward (DESIGN invariant 4), so what was approved is what reaches
the target:

========  ===============================================================================
kind      canonical form
========  ===============================================================================
http      every method to authorise (the request's, then any override header's), the
          path exactly as forwarded, the raw query; with ``bind_body`` the body's SHA-256
ssh       the command re-quoted from its parsed words (``'rm' x`` and ``rm x`` are one
          action, since the target receives the same text); or ``shell``; or ``forward``
sql       the statements as PostgreSQL's own deparser writes them back (keyword case and
          spacing normalised, every literal kept), the database and the default schema
mcp       the tool and its arguments as canonical JSON (keys sorted, no spaces); or the
          resource URI
files     the operation, the path, and the destination of a rename
========  ===============================================================================

The digest is the lowercase hex SHA-256 of the canonical JSON of
``{"v": 1, "kind", "target", "action"}``: the target is inside, so an approval for one
target never covers another. Normalisation only ever *merges* forms that reach the target
identically; anything that could behave differently keeps a different digest (a float
``1.0`` and an integer ``1`` in MCP arguments are different actions).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pglast import parser as pg_parser

from tether.policy import request as req
from tether.policy.errors import RequestError
from tether.policy.httpmethods import PATH_OVERRIDE_HEADERS, header_key
from tether.policychain import single

DIGEST_VERSION: Final = 1


class DigestError(ValueError):
    """The action cannot be canonicalised (it would not pass the policy's normalisation)."""


@dataclass(frozen=True, slots=True)
class ActionDigest:
    """An action in canonical form and its SHA-256 digest."""

    kind: str
    target: str
    canonical: Mapping[str, Any]
    digest: str


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 as itself; NaN and infinities refused."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def action_digest(
    request: Mapping[str, Any],
    *,
    body: bytes | None = None,
    bind_body: bool = False,
    default_schema: str = "public",
) -> ActionDigest:
    """The digest of a spec request's action on its target; raises :class:`DigestError`."""
    try:
        normalized = req.normalize(dict(single(request)), default_schema=default_schema)
    except RequestError as error:
        raise DigestError(f"{error.reason}: {error.detail}") from None
    except (TypeError, ValueError, RecursionError) as error:
        raise DigestError(f"invalid-request: {type(error).__name__}") from None
    body_of_kind = request["action"][normalized.kind]
    canonical = _CANONICAL[normalized.kind](normalized, body_of_kind, default_schema)
    if bind_body and normalized.kind == "http":
        canonical["body_sha256"] = hashlib.sha256(body or b"").hexdigest()
    document = {
        "v": DIGEST_VERSION,
        "kind": normalized.kind,
        "target": normalized.target_name,
        "action": canonical,
    }
    try:
        text = canonical_json(document)
    except ValueError as error:
        raise DigestError(f"invalid-request: {error}") from None
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return ActionDigest(normalized.kind, normalized.target_name, canonical, digest)


def _http(request: req.Request, body: Mapping[str, Any], _schema: str) -> dict[str, Any]:
    first = request.parts[0]
    assert isinstance(first, req.HttpPart)
    methods = [part.method for part in request.parts if isinstance(part, req.HttpPart)]
    action: dict[str, Any] = {"methods": methods, "path": first.path.path,
                              "query": first.path.query}  # fmt: skip
    # A path-override header (Destination, X-Original-URL...) names what the target acts
    # on: its exact value is part of the action (an approval of one destination is not one
    # of another), shown to the approver too. Absent, the form is as it always was.
    headers = body.get("headers") or {}
    named = sorted(
        [header_key(name), str(value).strip(" \t")]
        for name, value in (headers.items() if isinstance(headers, Mapping) else ())
        if header_key(str(name)) in PATH_OVERRIDE_HEADERS
    )
    if named:
        action["path_overrides"] = named
    return action


def _ssh(request: req.Request, body: Mapping[str, Any], _schema: str) -> dict[str, Any]:
    if request.shell_command is not None:
        return {"command": request.shell_command.canonical()}
    if "shell" in body:
        return {"shell": True}
    return {"forward": body["forward"]}


def _sql(_request: req.Request, body: Mapping[str, Any], schema: str) -> dict[str, Any]:
    query = body["query"]
    try:
        deparsed = str(pg_parser.deparse_protobuf(pg_parser.parse_sql_protobuf(query)))
    except Exception:  # noqa: BLE001 - the deparser refused: keep the text as sent, exactly
        deparsed = query
    return {"sql": deparsed, "database": body.get("database"), "default_schema": schema}


def _mcp(_request: req.Request, body: Mapping[str, Any], _schema: str) -> dict[str, Any]:
    if "resource" in body:
        return {"resource": body["resource"]}
    return {"tool": body["tool"], "arguments": body.get("arguments", {})}


def _files(request: req.Request, body: Mapping[str, Any], _schema: str) -> dict[str, Any]:
    view = request.view["files"]
    return {key: view[key] for key in ("op", "path", "to") if key in view}


_CANONICAL: Final = {"http": _http, "ssh": _ssh, "sql": _sql, "mcp": _mcp, "files": _files}
