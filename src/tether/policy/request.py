"""Validation and normalisation of a spec request (spec sections 2 and 4, step 1).

``normalize`` turns the JSON value that an enforcement point built into a
:class:`Request`: identities as plain fields, the action as a tuple of *parts*
(one per simple command, SQL statement, or HTTP method to authorise), and the
read-only ``request`` view that CEL ``when`` expressions see. Anything
malformed raises a :class:`~tether.policy.errors.RequestError` whose reason
becomes the deny reason; nothing here ever returns a half-checked request.

This module is the entry point; the parts live in :mod:`tether.policy.request_model` (the
request and its parts), :mod:`tether.policy.request_fields` (identities and context) and
:mod:`tether.policy.request_action` (the action of each kind), each listing the choices it
makes where the spec is silent. The one made here (deny-side): unknown top-level keys are
``invalid-request``: an enforcement point that sends a field the engine does not understand
is a bug that must surface, not be ignored.
"""

from __future__ import annotations

from tether.policy import request_action, request_fields
from tether.policy.errors import InvalidRequest
from tether.policy.request_model import (
    Delegation,
    FilesPart,
    HttpPart,
    McpResourcePart,
    McpToolPart,
    Part,
    Request,
    SqlPart,
    SshCommandPart,
    SshForwardPart,
    SshShellPart,
)

__all__ = [
    "Delegation",
    "FilesPart",
    "HttpPart",
    "McpResourcePart",
    "McpToolPart",
    "Part",
    "Request",
    "SqlPart",
    "SshCommandPart",
    "SshForwardPart",
    "SshShellPart",
    "normalize",
]


def normalize(value: object, *, default_schema: str = "public") -> Request:
    """Validate a request value and build its parts; raises ``RequestError`` subclasses.

    ``default_schema`` is the schema unqualified SQL names resolve to (the target's
    default schema, or the first schema of the session's tracked ``search_path``).
    """
    if not isinstance(value, dict):
        raise InvalidRequest("the request must be a JSON object")
    if not value.keys() <= request_fields.TOP_KEYS:
        unknown = value.keys() - request_fields.TOP_KEYS
        raise InvalidRequest(f"unknown request field(s): {', '.join(sorted(map(str, unknown)))}")
    agent_id, agent_labels = request_fields.identity(value, "agent", required=True)
    runtime_id, runtime_labels = request_fields.identity(value, "runtime", required=False)
    target_name, target_labels = request_fields.identity(
        value, "target", required=True, id_key="name"
    )
    kind, body = request_action.split_action(value.get("action"))
    # Positional: keyword arguments cost twice as much on this hot path (field order!).
    request = Request(
        agent_id or "",
        agent_labels,
        runtime_id,
        runtime_labels,
        request_fields.delegation(value.get("delegation")),
        request_fields.task(value.get("task")),
        request_fields.scope(value.get("scope")),
        target_name or "",
        target_labels,
        kind,
        (),
        {},
        request_fields.optional_str(value, "source_ip"),
        request_fields.timestamp(value.get("time")),
        request_fields.approvals(value.get("approvals")),
        value,
    )
    if kind == "sql":
        request_action.normalize_sql(request, body, default_schema)
    else:
        request_action.NORMALIZERS[kind](request, body)
    return request
