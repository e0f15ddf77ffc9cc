"""Audit events as OCSF 1.1 JSON, the form every SIEM sink sends (see docs/siem.md).

:func:`to_ocsf` maps one :class:`~tether.audit.events.AuditEvent` to one OCSF event: the
class its kind belongs to (:data:`KIND_CLASSES`, and the table in docs/siem.md), the
activity within that class, the attributes every OCSF event carries (``category_uid``,
``class_uid``, ``activity_id``, ``type_uid = class_uid * 100 + activity_id``,
``severity_id``, ``status_id``, ``time`` in epoch milliseconds, ``metadata``) and the
objects of the class (``http_request``, ``file``, ``query_info``, ...), built in
:mod:`tether.audit.ocsf_objects`.

Decisions:

* **Nothing is lost in translation.** What OCSF has no attribute for — the task, the
  delegation chain, the decision's reason, the whole ``action`` and ``detail`` — goes to
  ``unmapped.tether``, with the event's ``seq`` and chain hashes, so that a SIEM holds the
  full event and can check it against ``tether audit verify``.
* **Only already-redacted data.** Events are redacted when built (:mod:`tether.audit.events`);
  this module copies, it never reads a secret that the event did not already show.
* **The outcome drives status and severity.** ``allow`` is Success and Informational;
  ``deny`` and ``error`` are Failure (Medium, High), ``approval_required`` is Failure with
  ``status_detail`` saying so (Low); a refused token is Failure (Medium).
* **An agent is a service account, not a person**: ``actor.user`` is the agent with
  ``type_id`` 99 and ``type`` "Service" (OCSF has no agent type); a human (``user``) has
  ``type_id`` 1 "User". For delegated actions the human is also the IAM classes' ``user``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from tether import __version__
from tether.audit import ocsf_objects as obj
from tether.audit.events import AuditEvent

OCSF_VERSION: Final = "1.1.0"
PRODUCT: Final = {"name": "Tether", "vendor_name": "Tether", "version": __version__}

STATUS_SUCCESS: Final = 1
STATUS_FAILURE: Final = 2
SEVERITY_INFORMATIONAL: Final = 1
SEVERITY_LOW: Final = 2
SEVERITY_MEDIUM: Final = 3
SEVERITY_HIGH: Final = 4

_DECISION_OUTCOME: Final = {
    "allow": (STATUS_SUCCESS, SEVERITY_INFORMATIONAL),
    "approval_required": (STATUS_FAILURE, SEVERITY_LOW),
    "deny": (STATUS_FAILURE, SEVERITY_MEDIUM),
    "error": (STATUS_FAILURE, SEVERITY_HIGH),
}

# The ``outcome`` of admin calls (success, refused, denied, error) and approvals (raised,
# granted, refused, expired).
_OUTCOMES: Final = {
    "success": (STATUS_SUCCESS, SEVERITY_INFORMATIONAL),
    "granted": (STATUS_SUCCESS, SEVERITY_INFORMATIONAL),
    "raised": (STATUS_SUCCESS, SEVERITY_LOW),
    "refused": (STATUS_FAILURE, SEVERITY_LOW),
    "expired": (STATUS_FAILURE, SEVERITY_LOW),
    "denied": (STATUS_FAILURE, SEVERITY_MEDIUM),
    "error": (STATUS_FAILURE, SEVERITY_HIGH),
}


@dataclass(frozen=True, slots=True)
class OcsfClass:
    """An OCSF event class and its category."""

    uid: int
    name: str
    category_uid: int
    category_name: str
    activities: Mapping[int, str]


ACCOUNT_CHANGE: Final = OcsfClass(
    3001, "Account Change", 3, "Identity & Access Management",
    {1: "Create", 2: "Enable", 5: "Disable", 6: "Delete", 99: "Other"},
)  # fmt: skip
AUTHENTICATION: Final = OcsfClass(
    3002, "Authentication", 3, "Identity & Access Management",
    {1: "Logon", 2: "Logoff", 99: "Other"},
)  # fmt: skip
AUTHORIZE_SESSION: Final = OcsfClass(
    3003, "Authorize Session", 3, "Identity & Access Management",
    {1: "Assign Privileges", 99: "Other"},
)  # fmt: skip
ENTITY_MANAGEMENT: Final = OcsfClass(
    3004, "Entity Management", 3, "Identity & Access Management",
    {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"},
)  # fmt: skip
SSH_ACTIVITY: Final = OcsfClass(
    4007, "SSH Activity", 4, "Network Activity",
    {1: "Open", 2: "Close", 4: "Fail", 5: "Refuse", 6: "Traffic", 99: "Other"},
)  # fmt: skip
API_ACTIVITY: Final = OcsfClass(
    6003, "API Activity", 6, "Application Activity",
    {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"},
)  # fmt: skip
DATASTORE_ACTIVITY: Final = OcsfClass(
    6005, "Datastore Activity", 6, "Application Activity",
    {1: "Read", 2: "Update", 3: "Connect", 4: "Query", 5: "Write", 6: "Create", 7: "Delete",
     99: "Other"},
)  # fmt: skip
FILE_HOSTING: Final = OcsfClass(
    6006, "File Hosting Activity", 6, "Application Activity",
    {1: "Upload", 2: "Download", 4: "Delete", 5: "Rename", 99: "Other"},
)  # fmt: skip

# Attributes each class requires beyond the base event's (OCSF 1.1), for tests and docs.
REQUIRED: Final[Mapping[int, tuple[str, ...]]] = {
    3001: ("user",),
    3002: ("user",),
    3003: ("user",),
    3004: ("entity",),
    4007: ("dst_endpoint", "src_endpoint"),
    6003: ("actor", "api", "src_endpoint"),
    6005: ("actor", "src_endpoint", "database"),
    6006: ("actor", "file", "src_endpoint"),
}
BASE_REQUIRED: Final = (
    "activity_id", "category_uid", "class_uid", "metadata", "severity_id", "time", "type_uid",
)  # fmt: skip

Mapper = Callable[[AuditEvent], tuple[OcsfClass, int, dict[str, Any]]]


def _session_start(event: AuditEvent) -> tuple[OcsfClass, int, dict[str, Any]]:
    if obj.protocol(event) == "ssh":
        return SSH_ACTIVITY, 1 if _succeeded(event) else 5, obj.network(event)
    return AUTHORIZE_SESSION, 1, obj.iam_subject(event) | obj.privileges(event)


def _session_end(event: AuditEvent) -> tuple[OcsfClass, int, dict[str, Any]]:
    if obj.protocol(event) == "ssh":
        return SSH_ACTIVITY, 2, obj.network(event)
    return AUTHENTICATION, 2, obj.iam_subject(event) | obj.service(event)


def _decision(event: AuditEvent) -> tuple[OcsfClass, int, dict[str, Any]]:
    return AUTHORIZE_SESSION, 1, obj.iam_subject(event) | obj.privileges(event)


def _approval(event: AuditEvent) -> tuple[OcsfClass, int, dict[str, Any]]:
    return AUTHORIZE_SESSION, 1, obj.iam_subject(event) | obj.privileges(event)


def _http(event: AuditEvent) -> tuple[OcsfClass, int, dict[str, Any]]:
    activity = obj.HTTP_ACTIVITY.get(obj.http_method(event), 99)
    return API_ACTIVITY, activity, obj.api_http(event)


def _mcp(event: AuditEvent) -> tuple[OcsfClass, int, dict[str, Any]]:
    reads = (
        obj.text(event.action, "resource") is not None and obj.text(event.action, "tool") is None
    )
    return API_ACTIVITY, 2 if reads else 99, obj.api_mcp(event)


def _ssh_command(event: AuditEvent) -> tuple[OcsfClass, int, dict[str, Any]]:
    if event.decision in ("deny", "approval_required"):
        activity = 5
    elif event.decision == "error":
        activity = 4
    else:
        activity = 6
    return SSH_ACTIVITY, activity, obj.network(event) | obj.command(event)


def _transfer(event: AuditEvent) -> tuple[OcsfClass, int, dict[str, Any]]:
    return FILE_HOSTING, obj.file_activity(event), obj.file_transfer(event)


def _sql(event: AuditEvent) -> tuple[OcsfClass, int, dict[str, Any]]:
    return DATASTORE_ACTIVITY, obj.sql_activity(event), obj.datastore(event)


def _token(event: AuditEvent) -> tuple[OcsfClass, int, dict[str, Any]]:
    return AUTHENTICATION, 1, obj.iam_subject(event) | obj.service(event)


def _revocation(event: AuditEvent) -> tuple[OcsfClass, int, dict[str, Any]]:
    revoked = obj.text(event.action, "kind") or "credential"
    if revoked == "agent":
        return ACCOUNT_CHANGE, 5, obj.account(event)
    return ENTITY_MANAGEMENT, 99, obj.entity(event, revoked) | {"activity_name": "Revoke"}


def _admin(event: AuditEvent) -> tuple[OcsfClass, int, dict[str, Any]]:
    entity, operation = obj.admin_call(event)
    if entity == "agent" and operation in obj.ACCOUNT_ACTIVITY:
        return ACCOUNT_CHANGE, obj.ACCOUNT_ACTIVITY[operation], obj.account(event)
    activity = obj.ENTITY_ACTIVITY.get(operation, 99)
    specific = obj.entity(event, entity) | {"activity_name": operation or "Other"}
    if activity != 99:
        del specific["activity_name"]
    return ENTITY_MANAGEMENT, activity, specific


KIND_CLASSES: Final[Mapping[str, Mapper]] = {
    "session.start": _session_start,
    "session.end": _session_end,
    "decision": _decision,
    "approval": _approval,
    "http.exchange": _http,
    "mcp.call": _mcp,
    "ssh.command": _ssh_command,
    "file.transfer": _transfer,
    "sql.statement": _sql,
    "token.issued": _token,
    "token.refused": _token,
    "revocation": _revocation,
    "admin.change": _admin,
}


def to_ocsf(event: AuditEvent) -> dict[str, Any]:
    """The OCSF 1.1 event for ``event`` (a JSON-ready dict)."""
    cls, activity_id, specific = KIND_CLASSES[event.kind](event)
    status_id, severity_id = outcome(event)
    result: dict[str, Any] = {
        "category_uid": cls.category_uid,
        "category_name": cls.category_name,
        "class_uid": cls.uid,
        "class_name": cls.name,
        "activity_id": activity_id,
        "activity_name": cls.activities.get(activity_id, event.kind),
        "type_uid": cls.uid * 100 + activity_id,
        "type_name": f"{cls.name}: {cls.activities.get(activity_id, 'Other')}",
        "severity_id": severity_id,
        "severity": obj.SEVERITY_NAMES[severity_id],
        "status_id": status_id,
        "status": "Success" if status_id == STATUS_SUCCESS else "Failure",
        "time": obj.epoch_ms(event.time),
        "metadata": metadata(event),
        "actor": obj.actor(event),
        "src_endpoint": obj.src_endpoint(event),
        "unmapped": {"tether": obj.tether_fields(event)},
    }
    result.update(obj.status_detail(event))
    result.update(obj.duration(event))
    result.update(specific)
    if "dst_endpoint" not in result and event.target is not None:
        result["dst_endpoint"] = obj.dst_endpoint(event)
    return result


def outcome(event: AuditEvent) -> tuple[int, int]:
    """``(status_id, severity_id)``: from the decision, else from the kind's own outcome
    (an admin call's or an approval's ``outcome``); an allowed action that then failed
    (an SQL ``error``, an MCP ``is_error``) is a Failure of Low severity."""
    if event.kind == "token.refused":
        return STATUS_FAILURE, SEVERITY_MEDIUM
    if event.kind in ("admin.change", "approval"):
        said = (obj.text(event.action, "outcome") or "").lower()
        return _OUTCOMES.get(said, (STATUS_SUCCESS, SEVERITY_INFORMATIONAL))
    if event.decision in _DECISION_OUTCOME and event.decision != "allow":
        return _DECISION_OUTCOME[event.decision]
    if obj.text(event.action, "error") is not None or event.action.get("is_error") is True:
        return STATUS_FAILURE, SEVERITY_LOW
    return STATUS_SUCCESS, SEVERITY_INFORMATIONAL


def _succeeded(event: AuditEvent) -> bool:
    return outcome(event)[0] == STATUS_SUCCESS


def metadata(event: AuditEvent) -> dict[str, Any]:
    """``metadata``: product, schema version, event uid and sequence, correlation, labels."""
    labels = [
        f"{name}:{value}"
        for name, value in (
            ("kind", event.kind),
            ("policy_version", event.policy_version),
            ("rule", event.rule),
            ("task", event.task),
        )
        if value is not None
    ]
    meta: dict[str, Any] = {
        "product": dict(PRODUCT),
        "version": OCSF_VERSION,
        "uid": event.id,
        "labels": labels,
        "logged_time": obj.epoch_ms(event.time),
    }
    if event.seq is not None:
        meta["sequence"] = event.seq
    if event.session_id is not None:
        meta["correlation_uid"] = event.session_id
    return meta


def fitted_ocsf(event: AuditEvent, budget: int | None) -> dict[str, Any]:
    """:func:`to_ocsf`, or, with a ``budget``, the event shrunk to at most that many octets
    of JSON when it is longer (longest strings cut, marked ``unmapped.tether.truncated``:
    :func:`tether.audit.sinks.rfc5424.shrink_ocsf`), for a receiver that refused it whole."""
    ocsf = to_ocsf(event)
    if budget is None:
        return ocsf
    from tether.audit.sinks.rfc5424 import ocsf_message, shrink_ocsf

    if len(ocsf_message(ocsf)) <= budget:
        return ocsf
    shrunk: dict[str, Any] = json.loads(shrink_ocsf(ocsf, budget))
    return shrunk
