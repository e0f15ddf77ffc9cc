"""Validation and normalisation of a spec request (spec sections 2 and 4, step 1).

``normalize`` turns the JSON value that an enforcement point built into a
:class:`Request`: identities as plain fields, the action as a tuple of *parts*
(one per simple command, SQL statement, or HTTP method to authorise), and the
read-only ``request`` view that CEL ``when`` expressions see. Anything
malformed raises a :class:`~tether.policy.errors.RequestError` whose reason
becomes the deny reason; nothing here ever returns a half-checked request.

Choices where the spec is silent (all deny-side):

* Unknown top-level keys, or unknown keys inside ``action.<kind>``, are
  ``invalid-request``: an enforcement point that sends a field the engine does
  not understand is a bug that must surface, not be ignored.
* Label values must be strings; ids must be non-empty strings.
* ``scope`` without a ``targets`` list, or with an empty one, puts every target
  out of scope.
* ``time`` must be RFC 3339 with an explicit offset (``Z`` or ``+hh:mm``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tether.policy import filepath, httpmatch, shell, sql
from tether.policy.errors import InvalidRequest

_TOP_KEYS = frozenset(
    {
        "agent",
        "runtime",
        "delegation",
        "task",
        "scope",
        "target",
        "action",
        "source_ip",
        "time",
        "approvals",
    }
)
_FILE_OPS = frozenset({"read", "list", "write", "delete", "rename"})
_MAX_STRING = 1 << 20


@dataclass(frozen=True, slots=True)
class HttpPart:
    method: str
    path: httpmatch.HttpPath


@dataclass(frozen=True, slots=True)
class SshCommandPart:
    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SshShellPart:
    pass


@dataclass(frozen=True, slots=True)
class SshForwardPart:
    destination: str


@dataclass(frozen=True, slots=True)
class SqlPart:
    statement: sql.SqlStatement


@dataclass(frozen=True, slots=True)
class McpToolPart:
    tool: str


@dataclass(frozen=True, slots=True)
class McpResourcePart:
    uri: str


@dataclass(frozen=True, slots=True)
class FilesPart:
    op: str
    path: str


Part = (
    HttpPart
    | SshCommandPart
    | SshShellPart
    | SshForwardPart
    | SqlPart
    | McpToolPart
    | McpResourcePart
    | FilesPart
)


@dataclass(frozen=True, slots=True)
class Delegation:
    user: str
    groups: frozenset[str]


@dataclass(slots=True)
class Request:
    """A validated request. ``view`` is the JSON-like object CEL sees as ``request``."""

    agent_id: str
    agent_labels: dict[str, str]
    runtime_id: str | None
    runtime_labels: dict[str, str]
    delegation: Delegation | None
    task: dict[str, Any]
    scope_targets: tuple[str, ...] | None
    target_name: str
    target_labels: dict[str, str]
    kind: str
    parts: tuple[Part, ...]
    view: dict[str, Any]
    source_ip: str | None
    time: datetime | None
    approvals: frozenset[str]
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)
    shell_command: shell.ParsedCommand | None = None
    view_builder: Callable[[], dict[str, Any]] | None = field(repr=False, default=None)

    def cel_view(self) -> dict[str, Any]:
        """The ``request`` object of CEL, built on first use (most decisions never need it)."""
        if self.view_builder is not None:
            self.view = self.view_builder()
            self.view_builder = None
        return self.view


def normalize(value: object, *, default_schema: str = "public") -> Request:
    """Validate a request value and build its parts; raises ``RequestError`` subclasses.

    ``default_schema`` is the schema unqualified SQL names resolve to (the target's
    default schema, or the first schema of the session's tracked ``search_path``).
    """
    if not isinstance(value, dict):
        raise InvalidRequest("the request must be a JSON object")
    if not value.keys() <= _TOP_KEYS:
        unknown = value.keys() - _TOP_KEYS
        raise InvalidRequest(f"unknown request field(s): {', '.join(sorted(map(str, unknown)))}")
    agent_id, agent_labels = _identity(value, "agent", required=True)
    runtime_id, runtime_labels = _identity(value, "runtime", required=False)
    target_name, target_labels = _identity(value, "target", required=True, id_key="name")
    kind, body = _action(value.get("action"))
    # Positional: keyword arguments cost twice as much on this hot path (field order!).
    request = Request(
        agent_id or "",
        agent_labels,
        runtime_id,
        runtime_labels,
        _delegation(value.get("delegation")),
        _task(value.get("task")),
        _scope(value.get("scope")),
        target_name or "",
        target_labels,
        kind,
        (),
        {},
        _optional_str(value, "source_ip"),
        _time(value.get("time")),
        _approvals(value.get("approvals")),
        value,
    )
    if kind == "sql":
        _sql(request, body, default_schema)
    else:
        _NORMALIZERS[kind](request, body)
    return request


# --- identities and context ------------------------------------------------------------------


_ID_KEYS = {"id": frozenset({"id", "labels"}), "name": frozenset({"name", "labels"})}


def _identity(
    value: Mapping[str, Any], key: str, *, required: bool, id_key: str = "id"
) -> tuple[str | None, dict[str, str]]:
    obj = value.get(key)
    if obj is None:
        if required:
            raise InvalidRequest(f"{key!r} is required")
        return None, {}
    if type(obj) is not dict:
        raise InvalidRequest(f"{key!r} must be an object")
    if not obj.keys() <= _ID_KEYS[id_key]:
        extra = obj.keys() - _ID_KEYS[id_key]
        raise InvalidRequest(f"unknown field(s) in {key!r}: {', '.join(sorted(map(str, extra)))}")
    ident = obj.get(id_key)
    if type(ident) is not str or not ident or len(ident) > 1024:
        raise InvalidRequest(f"{key}.{id_key} must be a non-empty string")
    labels = obj.get("labels")
    if labels is None:
        return ident, {}
    if not _is_str_map(labels):
        raise InvalidRequest(f"{key}.labels must be an object of string values")
    return ident, labels


def _is_str_map(value: object) -> bool:
    if type(value) is not dict:
        return False
    for k, v in value.items():  # noqa: SIM110 - a plain loop is faster than all() here
        if type(k) is not str or type(v) is not str:
            return False
    return True


def _delegation(obj: object) -> Delegation | None:
    if obj is None:
        return None
    if not isinstance(obj, dict) or obj.keys() - {"user", "groups"}:
        raise InvalidRequest("'delegation' must be an object with 'user' and optional 'groups'")
    user = obj.get("user")
    if not isinstance(user, str) or not user:
        raise InvalidRequest("delegation.user must be a non-empty string")
    return Delegation(user, frozenset(_string_list(obj.get("groups", []), "delegation.groups")))


def _task(obj: object) -> dict[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise InvalidRequest("'task' must be an object")
    return obj


def _scope(obj: object) -> tuple[str, ...] | None:
    if obj is None:
        return None
    if not isinstance(obj, dict) or obj.keys() - {"targets"}:
        raise InvalidRequest("'scope' must be an object with 'targets'")
    return tuple(_string_list(obj.get("targets", []), "scope.targets"))


def _approvals(obj: object) -> frozenset[str]:
    if obj is None:
        return frozenset()
    return frozenset(_string_list(obj, "approvals"))


def _string_list(obj: object, where: str) -> list[str]:
    if not isinstance(obj, list) or not all(isinstance(v, str) for v in obj):
        raise InvalidRequest(f"{where} must be a list of strings")
    return obj


def _optional_str(value: Mapping[str, Any], key: str) -> str | None:
    obj = value.get(key)
    if obj is not None and not isinstance(obj, str):
        raise InvalidRequest(f"{key!r} must be a string")
    return obj


def _time(obj: object) -> datetime | None:
    if obj is None:
        return None
    if not isinstance(obj, str):
        raise InvalidRequest("'time' must be an RFC 3339 string")
    try:
        parsed = datetime.fromisoformat(obj)
    except ValueError:
        raise InvalidRequest(f"'time' is not an RFC 3339 timestamp: {obj[:64]!r}") from None
    if parsed.tzinfo is None or "T" not in obj.upper():
        raise InvalidRequest("'time' needs a date, a time and an offset (e.g. ...T10:00:00Z)")
    return parsed


# --- the action -------------------------------------------------------------------------------


def _action(obj: object) -> tuple[str, dict[str, Any]]:
    if not isinstance(obj, dict):
        raise InvalidRequest("'action' is required and must be an object")
    if len(obj) != 1:
        raise InvalidRequest("'action' must hold exactly one of: http, ssh, sql, mcp, files")
    ((kind, body),) = obj.items()
    if kind not in _KINDS:
        raise InvalidRequest(f"unknown action kind {kind!r}")
    if not isinstance(body, dict):
        raise InvalidRequest(f"action.{kind} must be an object")
    return kind, body


def _fields(body: Mapping[str, Any], kind: str, allowed: frozenset[str]) -> None:
    if not body.keys() <= allowed:
        extra = body.keys() - allowed
        raise InvalidRequest(f"unknown field(s) in action.{kind}: {', '.join(sorted(extra))}")


def _text(body: Mapping[str, Any], key: str, where: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}.{key} must be a string")
    if len(value) > _MAX_STRING:
        raise InvalidRequest(f"{where}.{key} is longer than {_MAX_STRING} characters")
    return value


_HTTP_FIELDS = frozenset({"method", "path", "headers"})


def _http(request: Request, body: dict[str, Any]) -> None:
    _fields(body, "http", _HTTP_FIELDS)
    method = _text(body, "method", "action.http")
    if not httpmatch.method_ok(method):
        raise InvalidRequest(f"action.http.method is not a valid method: {method[:64]!r}")
    headers = body.get("headers")
    if headers is None:
        headers = {}
    elif not _is_str_map(headers):
        raise InvalidRequest("action.http.headers must be an object of string values")
    path = httpmatch.canonicalize_path(_text(body, "path", "action.http"))
    if headers:
        overrides = [m for m in httpmatch.override_methods(headers) if m != method]
        request.parts = (HttpPart(method, path), *(HttpPart(m, path) for m in overrides))
    else:
        request.parts = (HttpPart(method, path),)
    request.view_builder = lambda: {
        "http": {
            "method": method,
            "path": path.path,
            "query": path.query,
            "params": {},
            "headers": {k.lower(): v for k, v in headers.items()},
        }
    }


_SSH_FIELDS = frozenset({"command", "shell", "forward"})


def _ssh(request: Request, body: dict[str, Any]) -> None:
    _fields(body, "ssh", _SSH_FIELDS)
    present = [k for k in ("command", "shell", "forward") if k in body]
    if len(present) != 1:
        raise InvalidRequest("action.ssh holds exactly one of: command, shell, forward")
    if "shell" in body:
        if body["shell"] is not True:
            raise InvalidRequest("action.ssh.shell must be true")
        request.parts = (SshShellPart(),)
        request.view = {"ssh": {"shell": True, "argv": []}}
        return
    if "forward" in body:
        destination = _text(body, "forward", "action.ssh")
        _check_forward(destination)
        request.parts = (SshForwardPart(destination),)
        request.view = {"ssh": {"forward": destination, "argv": []}}
        return
    parsed = shell.parse_command(_text(body, "command", "action.ssh"))
    request.shell_command = parsed
    request.parts = tuple(SshCommandPart(c.argv) for c in parsed.commands)
    request.view_builder = lambda: {
        "ssh": {"command": parsed.canonical(), "argv": [list(c.argv) for c in parsed.commands]}
    }


def _check_forward(destination: str) -> None:
    host, sep, port = destination.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequest(f"action.ssh.forward must be host:port, got {destination[:64]!r}")
    if any(c.isspace() or ord(c) < 32 for c in host):
        raise InvalidRequest("action.ssh.forward holds a space or control character")


_SQL_FIELDS = frozenset({"query", "database"})


def _sql(request: Request, body: dict[str, Any], default_schema: str) -> None:
    _fields(body, "sql", _SQL_FIELDS)
    database = body.get("database")
    if database is not None and not isinstance(database, str):
        raise InvalidRequest("action.sql.database must be a string")
    analysis = sql.analyze_sql(_text(body, "query", "action.sql"), default_schema)
    statements = analysis.statements
    if len(statements) == 1:  # the usual case, without a generator
        request.parts = (SqlPart(statements[0]),)
    else:
        request.parts = tuple(SqlPart(s) for s in statements)
    request.view_builder = lambda: {
        "sql": {
            "query": body["query"],
            "database": database,
            "statements": [_statement_view(s) for s in analysis.statements],
        }
    }


def _statement_view(statement: sql.SqlStatement) -> dict[str, Any]:
    return {
        "text": statement.text,
        "classes": sorted(statement.classes),
        "relations": sorted(statement.relations),
        "functions": sorted(statement.functions),
    }


_MCP_FIELDS = frozenset({"tool", "arguments", "resource"})


def _mcp(request: Request, body: dict[str, Any]) -> None:
    _fields(body, "mcp", _MCP_FIELDS)
    if ("tool" in body) == ("resource" in body):
        raise InvalidRequest("action.mcp holds exactly one of: tool (with arguments), resource")
    if "resource" in body:
        if "arguments" in body:
            raise InvalidRequest("action.mcp.arguments goes with a tool, not a resource")
        uri = _text(body, "resource", "action.mcp")
        if not uri or any(ord(c) < 32 or ord(c) == 127 for c in uri):
            raise InvalidRequest("action.mcp.resource must be a URI without control characters")
        request.parts = (McpResourcePart(uri),)
        request.view = {"mcp": {"resource": uri}}
        return
    tool = _text(body, "tool", "action.mcp")
    if not tool:
        raise InvalidRequest("action.mcp.tool must not be empty")
    arguments = body.get("arguments", {})
    if not isinstance(arguments, dict):
        raise InvalidRequest("action.mcp.arguments must be an object")
    request.parts = (McpToolPart(tool),)
    request.view = {"mcp": {"tool": tool, "arguments": arguments}}


_FILES_FIELDS = frozenset({"op", "path", "to"})


def _files(request: Request, body: dict[str, Any]) -> None:
    _fields(body, "files", _FILES_FIELDS)
    op = _text(body, "op", "action.files")
    if op not in _FILE_OPS:
        raise InvalidRequest(f"action.files.op must be one of {sorted(_FILE_OPS)}, got {op!r}")
    path = filepath.canonical_file_path(_text(body, "path", "action.files"))
    view: dict[str, Any] = {"op": op, "path": path}
    if op == "rename":
        to = filepath.canonical_file_path(_text(body, "to", "action.files"))
        request.parts = (FilesPart("delete", path), FilesPart("write", to))
        view["to"] = to
    else:
        if "to" in body:
            raise InvalidRequest("action.files.to goes with op 'rename' only")
        request.parts = (FilesPart(op, path),)
    request.view = {"files": view}


_NORMALIZERS = {"http": _http, "ssh": _ssh, "mcp": _mcp, "files": _files}
_KINDS = frozenset({*_NORMALIZERS, "sql"})
