"""Validation of a request's action (spec section 4, step 1), for
:func:`tether.policy.request.normalize` and its fast path.

``split_action`` checks that the action holds exactly one known kind; the normaliser of that
kind checks its body, sets the request's *parts* (one per simple command, SQL statement, or
HTTP method to authorise, including the methods named by override headers) and its CEL view.
Anything malformed raises :class:`~tether.policy.errors.InvalidRequest` (or the parsers'
own ``RequestError`` subclasses).

Choices where the spec is silent (all deny-side):

* Unknown keys inside ``action.<kind>`` are ``invalid-request``: an enforcement point that
  sends a field the engine does not understand is a bug that must surface, not be ignored.
* Strings are at most 1 MiB (``_MAX_STRING`` characters).
* A file ``rename`` is authorised as a ``delete`` of its source and a ``write`` of its
  destination.
* An MCP ``resource`` URI must be in canonical form (:func:`check_resource_uri`, reason
  ``ambiguous-path``): resource globs compare text, while the MCP server decodes the URI, so
  ``file:///srv/%70rivate/x`` or ``file:///srv//private/x`` would reach ``/srv/private/x``
  past a deny rule written for it.
* An ``ssh.forward`` destination must name its host in canonical form
  (:func:`canonical_host`) and its port in decimal without leading zeros: other spellings
  of one address (``127.1``, ``0x7f000001``, ``LOCALHOST``, ``::ffff:127.0.0.1``) reach the
  same place but would not match the rule written for it; nor would ``0.0.0.0`` or ``::``,
  which reach the local host, so they are refused too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Final

from tether.policy import filepath, httpmatch, shell, sql
from tether.policy.errors import AmbiguousPath, InvalidRequest
from tether.policy.request_fields import is_str_map
from tether.policy.request_model import (
    FilesPart,
    HttpPart,
    McpResourcePart,
    McpToolPart,
    Request,
    SqlPart,
    SshCommandPart,
    SshForwardPart,
    SshShellPart,
)

_FILE_OPS = frozenset({"read", "list", "write", "delete", "rename"})
_MAX_STRING = 1 << 20


def split_action(obj: object) -> tuple[str, dict[str, Any]]:
    if not isinstance(obj, dict):
        raise InvalidRequest("'action' is required and must be an object")
    if len(obj) != 1:
        raise InvalidRequest("'action' must hold exactly one of: http, ssh, sql, mcp, files")
    ((kind, body),) = obj.items()
    if kind not in KINDS:
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


def normalize_http(request: Request, body: dict[str, Any]) -> None:
    _fields(body, "http", _HTTP_FIELDS)
    method = _text(body, "method", "action.http")
    if not httpmatch.method_ok(method):
        raise InvalidRequest(f"action.http.method is not a valid method: {method[:64]!r}")
    headers = body.get("headers")
    if headers is None:
        headers = {}
    elif not is_str_map(headers):
        raise InvalidRequest("action.http.headers must be an object of string values")
    path = httpmatch.canonicalize_path(_text(body, "path", "action.http"))
    query = path.query
    named = httpmatch.query_override_methods(query) if httpmatch.may_override_method(query) else ()
    if headers or named:
        by_header, by_path = httpmatch.overrides(headers)
        overrides = [m for m in dict.fromkeys((*by_header, *named)) if m != method]
        # A path override with the same path but another query is a part too: the target
        # reads that query (a deny rule on request.http.query must see it).
        paths = [p for p in by_path if (p.path, p.query) != (path.path, path.query)]
        request.parts = tuple(HttpPart(m, p) for p in (path, *paths) for m in (method, *overrides))
    else:
        request.parts = (HttpPart(method, path),)
    request.view_builder = lambda: http_view(method, path, headers)


def http_view(method: str, path: httpmatch.HttpPath, headers: Mapping[str, str]) -> dict[str, Any]:
    """The CEL ``request`` view of an HTTP action; header names are lower-cased."""
    return {
        "http": {
            "method": method,
            "path": path.path,
            "query": path.query,
            "params": {},
            "headers": {k.lower(): v for k, v in headers.items()},
        }
    }


_SSH_FIELDS = frozenset({"command", "shell", "forward"})


def normalize_ssh(request: Request, body: dict[str, Any]) -> None:
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
    if port != str(int(port)) or not canonical_host(host):
        raise InvalidRequest(
            "action.ssh.forward must name its host in canonical form (lower-case name, "
            f"dotted-quad IPv4 or compressed IPv6), got {destination[:64]!r}"
        )


_THIS_NETWORK: Final = ipaddress.IPv4Network("0.0.0.0/8")  # RFC 1122 3.2.1.3: "this host"
_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def canonical_host(host: str) -> bool:
    """Whether ``host`` is written in the one form rules can name it by: an IPv4 address as
    four decimal octets without leading zeros, an IPv6 address compressed and in lower case
    (not IPv4-mapped, no zone), or a lower-case DNS name without a trailing dot whose last
    label starts with a letter. Resolvers also read ``127.1``, ``2130706433``,
    ``0x7f000001``, ``LOCALHOST`` or ``::ffff:127.0.0.1`` as the loopback, so a deny rule
    on ``127.0.0.1:*`` would not see them: such spellings are invalid requests (denied).
    So is an address of "this host" (``0.0.0.0/8``, ``::``): a connection to it reaches
    the local host, past a rule written for the loopback."""
    if ":" in host:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return (
            address.ipv4_mapped is None
            and address.scope_id is None
            and not address.is_unspecified
            and str(address) == host
        )
    try:
        v4 = ipaddress.IPv4Address(host)
    except ValueError:
        pass
    else:
        return v4 not in _THIS_NETWORK and str(v4) == host
    labels = host.split(".")
    return (
        len(host) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and labels[-1][0].isalpha()
    )


_SQL_FIELDS = frozenset({"query", "database"})


def normalize_sql(request: Request, body: dict[str, Any], default_schema: str) -> None:
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


def normalize_mcp(request: Request, body: dict[str, Any]) -> None:
    _fields(body, "mcp", _MCP_FIELDS)
    if ("tool" in body) == ("resource" in body):
        raise InvalidRequest("action.mcp holds exactly one of: tool (with arguments), resource")
    if "resource" in body:
        if "arguments" in body:
            raise InvalidRequest("action.mcp.arguments goes with a tool, not a resource")
        uri = _text(body, "resource", "action.mcp")
        if not uri or any(ord(c) < 32 or ord(c) == 127 for c in uri):
            raise InvalidRequest("action.mcp.resource must be a URI without control characters")
        check_resource_uri(uri)
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


# An escape of an unreserved character (the same URI as the character itself, RFC 3986 6.2.2.2),
# of '/', '\\', '%', '?', '#', or of a control character; and a '%' without two hex digits.
_RESOURCE_ESCAPE: Final = re.compile(
    r"%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DdEeFf]|5[CcFf]|7[Ee]|[01][0-9A-Fa-f]|7[Ff]"
    r"|2[35]|3[Ff])|%(?![0-9A-Fa-f]{2})"
)


_URI_END: Final = re.compile(r"[?#]")


def check_resource_uri(uri: str) -> None:
    """Deny (``ambiguous-path``) a resource URI that has another spelling of the same resource:
    an escape of an unreserved character, an escaped ``/ \\ % ? #`` or control character, an
    invalid escape, a raw backslash, an empty path segment (``//`` after the authority), and
    (as for HTTP paths) Unicode that is not NFKC-normalised or holds format characters and
    slash or dot look-alikes. A ``.``/``..`` segment needs no check here: no wildcard of a
    resource glob ever matches one (spec 5.2), so such a URI meets only literal patterns."""
    bad = _RESOURCE_ESCAPE.search(uri)
    if bad is not None:
        raise AmbiguousPath(f"resource URI holds the escape {bad.group()[:3]!r}")
    if "\\" in uri:
        raise AmbiguousPath("resource URI holds a backslash")
    scheme, colon, rest = uri.partition(":")
    path = _URI_END.split(rest, maxsplit=1)[0]
    if colon and "/" not in scheme and path.startswith("//"):
        _authority, slash, after = path[2:].partition("/")
        path = slash + after
    if "//" in path:
        raise AmbiguousPath("resource URI holds an empty path segment ('//')")
    if not uri.isascii():
        problem = filepath.unicode_problem(uri)
        if problem is not None:
            raise AmbiguousPath(f"resource URI holds {problem}")


_FILES_FIELDS = frozenset({"op", "path", "to"})


def normalize_files(request: Request, body: dict[str, Any]) -> None:
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


NORMALIZERS = {
    "http": normalize_http,
    "ssh": normalize_ssh,
    "mcp": normalize_mcp,
    "files": normalize_files,
}
KINDS = frozenset({*NORMALIZERS, "sql"})
