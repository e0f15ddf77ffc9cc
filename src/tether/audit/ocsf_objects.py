"""The OCSF objects :mod:`tether.audit.ocsf` assembles: actor, endpoints, and class specifics.

Each builder reads an :class:`~tether.audit.events.AuditEvent` and returns the attributes it
contributes, leaving out what the event does not know (OCSF's optional attributes are
absent rather than null). The ``action`` keys read per kind are listed in docs/siem.md;
several spellings are accepted where front-ends differ (``statement`` or ``query``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from tether.audit.events import AuditEvent

SEVERITY_NAMES: Final = {
    0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical", 6: "Fatal",
}  # fmt: skip
USER_SERVICE: Final = (99, "Service")  # OCSF has no "agent" user type; 99 is Other
USER_HUMAN: Final = (1, "User")
USER_SYSTEM: Final = (3, "System")
HTTP_ACTIVITY: Final = {
    "POST": 1, "GET": 2, "HEAD": 2, "OPTIONS": 2, "PUT": 3, "PATCH": 3, "DELETE": 4,
}  # fmt: skip
SQL_ACTIVITY: Final = {
    "SELECT": 4, "INSERT": 5, "COPY": 5, "UPDATE": 2, "MERGE": 2, "DELETE": 7, "TRUNCATE": 7,
    "DROP": 7, "CREATE": 6,
}  # fmt: skip
ACCOUNT_ACTIVITY: Final = {"create": 1, "enable": 2, "disable": 5, "offboard": 6, "delete": 6}
ENTITY_ACTIVITY: Final = {
    "create": 1, "join-token": 1, "issue": 1, "read": 2, "show": 2, "list": 2, "search": 2,
    "verify": 2, "update": 3, "rotate": 3, "reload": 3, "delete": 4, "remove": 4,
}  # fmt: skip
# file.transfer ``op`` (or ``direction``) -> File Hosting activity.
FILE_ACTIVITY: Final = {
    "write": 1, "upload": 1, "put": 1, "read": 2, "download": 2, "get": 2, "delete": 4,
    "remove": 4, "rename": 5,
}  # fmt: skip
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)
SHA256_ALGORITHM_ID: Final = 3
AUTH_PROTOCOL_OAUTH2: Final = 6
DATABASE_RELATIONAL: Final = 1


def text(mapping: Mapping[str, Any], *keys: str) -> str | None:
    """The first of ``keys`` in ``mapping`` that holds a non-empty scalar, as a string."""
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool) and value != "":
            return str(value)
    return None


def number(mapping: Mapping[str, Any], *keys: str) -> int | None:
    """The first of ``keys`` holding an integer (booleans are not numbers here)."""
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def epoch_ms(moment: datetime) -> int:
    """Whole milliseconds since the epoch, counted exactly (``timestamp() * 1000`` is a
    float product: 2038-06-04T19:05:25.213Z came out as ...212)."""
    return (moment - _EPOCH) // _MILLISECOND


def protocol(event: AuditEvent) -> str | None:
    found = text(event.action, "protocol") or text(event.detail, "protocol")
    return found.lower() if found else None


def request_body(event: AuditEvent) -> tuple[str | None, Mapping[str, Any]]:
    """The protocol and the body of the action: a decision's action is the policy request's
    ``{protocol: body}``; other kinds' actions are the body itself."""
    action = event.action
    if len(action) == 1:
        [(key, body)] = action.items()
        if isinstance(body, Mapping):
            return key, body
    return text(action, "protocol"), action


def describe(event: AuditEvent) -> str:
    """A short description of the action, for ``privileges``."""
    protocol, body = request_body(event)
    parts = [
        protocol,
        text(body, "method", "op", "operation", "name"),
        text(body, "path", "command", "tool", "resource", "query", "statement"),
    ]
    words = [part for part in parts if part]
    return " ".join(words) if words else event.kind


def user(name: str, kind: tuple[int, str]) -> dict[str, Any]:
    return {"name": name, "uid": name, "type_id": kind[0], "type": kind[1]}


def actor(event: AuditEvent) -> dict[str, Any]:
    """``actor``: the agent (a service account), else the human, else Tether itself."""
    if event.agent is not None:
        who = user(event.agent, USER_SERVICE)
    elif event.user is not None:
        who = user(event.user, USER_HUMAN)
    else:
        who = user("tether", USER_SYSTEM)
    result: dict[str, Any] = {"user": who}
    if event.session_id is not None:
        result["session"] = {"uid": event.session_id}
    if event.actor_chain:
        result["invoked_by"] = " > ".join(event.actor_chain)
    return result


def iam_subject(event: AuditEvent) -> dict[str, Any]:
    """``user`` of the IAM classes: the human for a delegated action, else the agent."""
    if event.user is not None:
        subject = user(event.user, USER_HUMAN)
    elif event.agent is not None:
        subject = user(event.agent, USER_SERVICE)
    else:
        subject = user("unknown", (0, "Unknown"))
    result: dict[str, Any] = {"user": subject}
    if event.session_id is not None:
        result["session"] = {"uid": event.session_id}
    return result


def privileges(event: AuditEvent) -> dict[str, Any]:
    return {"privileges": [describe(event)]}


def service(event: AuditEvent) -> dict[str, Any]:
    result: dict[str, Any] = {"service": {"name": event.target or "tether"}}
    if event.kind.startswith("token."):
        result["auth_protocol_id"] = AUTH_PROTOCOL_OAUTH2
        result["auth_protocol"] = "OAUTH 2.0"
    return result


def src_endpoint(event: AuditEvent) -> dict[str, Any]:
    """``src_endpoint``: the agent's address and its runtime (the workload it runs in)."""
    endpoint: dict[str, Any] = {}
    if event.source_ip is not None:
        endpoint["ip"] = event.source_ip
    if event.runtime is not None:
        endpoint["uid"] = event.runtime
    return endpoint or {"name": "unknown"}


def dst_endpoint(event: AuditEvent) -> dict[str, Any]:
    """``dst_endpoint``: the target, with its host and port when the action names them."""
    endpoint: dict[str, Any] = {"name": event.target or "unknown"}
    host = text(event.action, "host", "hostname")
    port = number(event.action, "port")
    if host is not None:
        endpoint["hostname"] = host
    if port is not None:
        endpoint["port"] = port
    return endpoint


def network(event: AuditEvent) -> dict[str, Any]:
    """SSH Activity's endpoints, connection and traffic counts."""
    result: dict[str, Any] = {"dst_endpoint": dst_endpoint(event)}
    connection: dict[str, Any] = {"protocol_name": "tcp"}
    if event.session_id is not None:
        connection["uid"] = event.session_id
    result["connection_info"] = connection
    traffic = {
        name: value
        for name, value in (("bytes_in", event.bytes_in), ("bytes_out", event.bytes_out))
        if value is not None
    }
    if traffic:
        result["traffic"] = traffic
    return result


def command(event: AuditEvent) -> dict[str, Any]:
    line = text(event.action, "command", "cmd_line")
    argv = event.action.get("argv")
    if line is None and isinstance(argv, list | tuple):
        line = " ".join(str(word) for word in argv)
    return {"message": line} if line is not None else {}


def http_method(event: AuditEvent) -> str:
    return (text(event.action, "method", "http_method") or "").upper()


def api_http(event: AuditEvent) -> dict[str, Any]:
    """API Activity for an HTTP exchange: ``api``, ``http_request``, ``http_response``."""
    method = http_method(event) or "UNKNOWN"
    url: dict[str, Any] = {"path": text(event.action, "path") or "/"}
    for key, name in (("hostname", "host"), ("scheme", "scheme"), ("query_string", "query")):
        value = text(event.action, name)
        if value is not None:
            url[key] = value
    status = number(event.detail, "status", "status_code") or number(event.action, "status")
    api: dict[str, Any] = {"operation": method, "service": {"name": event.target or "unknown"}}
    result: dict[str, Any] = {"api": api, "http_request": {"http_method": method, "url": url}}
    if status is not None:
        api["response"] = {"code": status}
        result["http_response"] = {"code": status}
    return result


def api_mcp(event: AuditEvent) -> dict[str, Any]:
    """API Activity for an MCP call: the tool called or the resource read, on the server."""
    tool = text(event.action, "tool")
    resource = text(event.action, "resource")
    method = text(event.action, "method") or ("tools/call" if tool or not resource else
                                              "resources/read")  # fmt: skip
    server = text(event.action, "server") or event.target or "unknown"
    result: dict[str, Any] = {"api": {"operation": method, "service": {"name": server}}}
    if tool is not None:
        result["resources"] = [{"name": tool, "type": "MCP tool"}]
    elif resource is not None:
        result["resources"] = [{"name": resource, "type": "MCP resource"}]
    return result


def file_activity(event: AuditEvent) -> int:
    operation = text(event.action, "op", "direction") or ""
    return FILE_ACTIVITY.get(operation.lower(), 99)


def file_transfer(event: AuditEvent) -> dict[str, Any]:
    """File Hosting Activity's ``file``: path, name, size and SHA-256."""
    path = text(event.action, "path", "filename") or "unknown"
    file: dict[str, Any] = {
        "name": posixpath.basename(path.rstrip("/")) or path,
        "path": path,
        "type_id": 1,
        "type": "Regular File",
    }
    size = number(event.action, "size") or number(event.detail, "size")
    if size is not None:
        file["size"] = size
    digest = text(event.action, "sha256") or text(event.detail, "sha256")
    if digest is not None:
        file["hashes"] = [{"algorithm_id": SHA256_ALGORITHM_ID, "algorithm": "SHA-256",
                           "value": digest}]  # fmt: skip
    return {"file": file}


def sql_activity(event: AuditEvent) -> int:
    operation = text(event.action, "operation", "command", "statement_type")
    if operation is None:
        statement = text(event.action, "statement", "query") or ""
        operation = statement.split(maxsplit=1)[0] if statement.strip() else ""
    return SQL_ACTIVITY.get(operation.upper(), 99)


def datastore(event: AuditEvent) -> dict[str, Any]:
    """Datastore Activity: the database and the (redacted) statement."""
    name = text(event.action, "database", "dbname") or event.target or "unknown"
    result: dict[str, Any] = {
        "database": {"name": name, "type_id": DATABASE_RELATIONAL, "type": "Relational"},
        "type_id": 1,
        "type": "Database",
    }
    statement = text(event.action, "statement", "query", "sql")
    if statement is not None:
        result["query_info"] = {"query_string": statement}
    return result


def admin_call(event: AuditEvent) -> tuple[str, str]:
    """``(entity, operation)`` of an admin call named ``entity.operation`` (``agent.create``,
    ``keys.rotate``); a name without a dot is an operation on ``setting``."""
    name = (text(event.action, "name") or "").lower()
    entity, dot, operation = name.partition(".")
    return (entity, operation) if dot else ("setting", name)


def entity_id(event: AuditEvent) -> str:
    return text(event.action, "id", "value") or event.target or "unknown"


def account(event: AuditEvent) -> dict[str, Any]:
    """Account Change's ``user``: the agent account changed."""
    return {"user": user(entity_id(event), USER_SERVICE)}


def entity(event: AuditEvent, kind: str) -> dict[str, Any]:
    """Entity Management's ``entity``: what was created, changed or revoked."""
    name = entity_id(event)
    return {"entity": {"name": name, "uid": name, "type": kind}}


def status_detail(event: AuditEvent) -> dict[str, Any]:
    parts = [part for part in (event.decision, event.reason) if part]
    return {"status_detail": ": ".join(parts)} if parts else {}


def duration(event: AuditEvent) -> dict[str, Any]:
    return {} if event.duration_ms is None else {"duration": int(event.duration_ms)}


def tether_fields(event: AuditEvent) -> dict[str, Any]:
    """The whole Tether event, for ``unmapped.tether``: nothing is lost in the mapping."""
    fields: dict[str, Any] = {
        "kind": event.kind,
        "seq": event.seq,
        "agent": event.agent,
        "runtime": event.runtime,
        "task": event.task,
        "user": event.user,
        "actor_chain": list(event.actor_chain),
        "target": event.target,
        "decision": event.decision,
        "rule": event.rule,
        "reason": event.reason,
        "policy_version": event.policy_version,
        "session_id": event.session_id,
        "bytes_in": event.bytes_in,
        "bytes_out": event.bytes_out,
        "rows": event.rows,
        "action": _plain(event.action),
        "detail": _plain(event.detail),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }
    return {key: value for key, value in fields.items() if value not in (None, [], {})}


def _plain(value: Any) -> Any:
    """A JSON value with the event's read-only containers turned into dicts and lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
