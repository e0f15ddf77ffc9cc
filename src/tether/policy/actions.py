"""Action blocks of a rule (spec section 5), compiled once per load.

Each block becomes a matcher: ``match(part)`` returns the ``{name}`` captures of
an HTTP path (an empty mapping for other kinds) when the part falls inside the
block, and None when it does not.

How a *deny* rule matches differs from an *allow* rule where a part carries a
set (SQL statements have several classes and relations): an allow rule must
cover **all** of them, a deny rule matches when it touches **any** of them. That
is the reading under which "deny wins" cannot be sidestepped by adding an extra
table or class to a statement. A deny rule's absent ``tables`` means any table;
an allow rule's absent ``tables`` means no relation at all (only relation-free
statements such as ``SELECT 1`` or ``BEGIN``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from tether.policy import globs, httpmatch, sql
from tether.policy.errors import PatternError
from tether.policy.linearmatch import compile_fullmatch, compile_star_glob
from tether.policy.names import NameSet, compile_name_glob
from tether.policy.request import (
    FilesPart,
    HttpPart,
    McpResourcePart,
    McpToolPart,
    Part,
    SqlPart,
    SshCommandPart,
    SshForwardPart,
    SshShellPart,
)

NO_CAPTURES: Mapping[str, str] = MappingProxyType({})
Captures = Mapping[str, str]

# Index keys of parts that are not named by a string of their own. They hold a NUL, which
# no command name, tool name or path segment can.
SHELL_KEY = "\0shell"
FORWARD_KEY = "\0forward"
RESOURCE_KEY = "\0resource"


def part_keys(part: Part) -> tuple[str, ...]:
    """The keys under which the rules that can match ``part`` are indexed.

    A block's ``keys()`` must hold one of ``part_keys(part)`` for every part it can match:
    the index only ever skips rules that could not have matched. An HTTP path probes two
    keys: its first segment, and its first two segments joined by ``/`` (no decoded segment
    holds a ``/``, so the two never collide); a pattern is filed under the longer one when its
    literal prefix has two segments, so ``/v1/orders/*`` is never looked at for ``/v1/users/7``.
    A SQL statement probes every class it has (never none: a statement has at least one).
    """
    if isinstance(part, HttpPart):
        segments = part.path.segments
        if len(segments) > 1:
            return (segments[0], f"{segments[0]}/{segments[1]}")
        return (segments[0] if segments else "",)
    if isinstance(part, SqlPart):
        classes = part.statement.classes
        return tuple(classes) if len(classes) == 1 else tuple(sorted(classes))
    if isinstance(part, SshCommandPart):
        return (part.argv[0],)
    if isinstance(part, SshShellPart):
        return (SHELL_KEY,)
    if isinstance(part, SshForwardPart):
        return (FORWARD_KEY,)
    if isinstance(part, McpToolPart):
        return (part.tool,)
    if isinstance(part, McpResourcePart):
        return (RESOURCE_KEY,)
    return (part.op,)  # FilesPart, the only kind left


class BlockError(PatternError):
    """A malformed action block; ``key`` names the offending key inside the block."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


def _str_list(body: Mapping[str, Any], key: str, *, required: bool = False) -> list[str] | None:
    if key not in body:
        if required:
            raise BlockError(key, f"{key!r} is required")
        return None
    value = body[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BlockError(key, f"{key!r} must be a list of non-empty strings")
    if not value:
        raise BlockError(key, f"{key!r} must not be empty")
    return value


def _check_keys(body: Mapping[str, Any], kind: str, allowed: tuple[str, ...]) -> None:
    for key in body:
        if key not in allowed:
            raise BlockError(key, f"unknown key {key!r} in {kind} (expected: {', '.join(allowed)})")
    if not body:
        raise BlockError(kind, f"an empty {kind} block matches nothing")


def _compiled(key: str, compile_one: Callable[[str], Any], items: list[str]) -> list[Any]:
    out = []
    for item in items:
        try:
            out.append(compile_one(item))
        except PatternError as error:
            raise BlockError(key, f"{key}: {item!r}: {error}") from None
    return out


# --- HTTP (5.1) -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpBlock:
    methods: frozenset[str]
    patterns: tuple[httpmatch.PathPattern, ...]

    def keys(self) -> frozenset[str] | None:
        """The path keys (see :func:`part_keys`) this block can match, or None when any."""
        if all(p.literal_prefix for p in self.patterns):
            return frozenset("/".join(p.literal_prefix[:2]) for p in self.patterns)
        return None

    def match(self, part: Part) -> Captures | None:
        if not isinstance(part, HttpPart):
            return None
        methods = self.methods  # httpmatch.methods_match, inlined: this is the hot path
        if part.method not in methods and "*" not in methods:
            return None
        for pattern in self.patterns:
            captures = pattern.match(part.path)
            if captures is not None:
                return captures
        return None


# Compiled patterns and method sets are immutable values, shared by every rule (of every
# loaded set) that writes the same text: a large policy set repeats a few hundred patterns,
# and sharing them keeps what a decision reads small enough to stay in the CPU caches.
_shared_pattern = functools.lru_cache(maxsize=8192)(httpmatch.PathPattern.compile)
_shared_methods = functools.lru_cache(maxsize=1024)(frozenset[str])


def compile_http(body: Mapping[str, Any], deny: bool) -> HttpBlock:
    _check_keys(body, "http", ("methods", "paths"))
    methods = _str_list(body, "methods", required=True) or []
    for method in methods:
        if method != "*" and not httpmatch.method_ok(method):
            raise BlockError("methods", f"methods: {method!r} is not an HTTP method token")
    paths = _str_list(body, "paths", required=True) or []
    patterns = _compiled("paths", _shared_pattern, paths)
    return HttpBlock(_shared_methods(tuple(sorted(set(methods)))), tuple(patterns))


# --- SSH (5.2) --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForwardSet:
    """``host:port`` patterns of ``ssh.forwards``.

    In a deny rule ``*`` matches any run of characters, as in names. In an allow rule it stays
    within one DNS label, IP address part or the port (it crosses no ``.`` and no ``:``), and a
    host part that is exactly ``*`` means any host: ``10.0.0.*:22`` must not allow
    ``10.0.0.1.evil.example:22``, a name whose owner makes it resolve anywhere, nor ``db-*:22``
    allow ``db-1.evil.example:22``.
    """

    names: NameSet
    allow_globs: tuple[Callable[[str], bool], ...] | None  # None: a deny rule, names as is

    @classmethod
    def compile(cls, patterns: list[str], deny: bool) -> ForwardSet:
        for pattern in patterns:
            host, colon, port = pattern.rpartition(":")
            if not colon or not host or not port:
                raise BlockError("forwards", f"forwards: {pattern!r} is not host:port")
        names = NameSet.compile(patterns)
        if deny:
            return cls(names, None)
        return cls(names, tuple(_forward_regex(p) for p in names.globs))

    def __call__(self, destination: str) -> bool:
        if self.allow_globs is None:
            return self.names(destination)
        if destination in self.names.exact:
            return True
        return any(matches(destination) for matches in self.allow_globs)


def _forward_regex(pattern: str) -> Callable[[str], bool]:
    host, _, port = pattern.rpartition(":")
    if host != "*":  # every wildcard stays within a label: one class
        return compile_star_glob(pattern.split("*"), "[^.:]")
    port_regex = "[^.:]*".join(re.escape(p) for p in port.split("*"))
    return compile_fullmatch(f".*:{port_regex}")


@dataclass(frozen=True, slots=True)
class SshBlock:
    commands: tuple[globs.ArgvPattern, ...]
    shell: bool
    forwards: ForwardSet | None
    deny: bool = False

    def keys(self) -> frozenset[str] | None:
        keys = {p.command_name for p in self.commands}
        if self.shell:
            keys.add(SHELL_KEY)
        if self.forwards is not None:
            keys.add(FORWARD_KEY)
        return frozenset(keys)

    def match(self, part: Part) -> Captures | None:
        if isinstance(part, SshCommandPart):
            hit = any(p.matches(part.argv) for p in self.commands)
            if not hit and self.deny:
                hit = any(
                    any(p.matches(lexical) for p in self.commands)
                    for lexical in _lexical_argvs(part.argv)
                )
        elif isinstance(part, SshShellPart):
            hit = self.shell
        elif isinstance(part, SshForwardPart):
            hit = self.forwards is not None and self.forwards(part.destination)
        else:
            hit = False
        return NO_CAPTURES if hit else None


def _lexical_path(path: str) -> str:
    """``path`` with ``.``, ``..`` and empty segments folded away (no file system access)."""
    absolute = path.startswith("/")
    out: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not absolute:
                out.append(segment)
            continue
        out.append(segment)
    folded = "/".join(out)
    return ("/" + folded) if absolute else (folded or ".")


def _lexical_arg(arg: str, *, whole: bool) -> str:
    """``arg`` with its path folded; ``whole``: the whole argument read as one path.

    Otherwise the text before the path's first ``/`` stays as it is when it is an option or a
    ``name=``: the path of ``--in=/x``, ``if=/x`` (``dd``) or ``-f/x`` (a short option glued
    to its value) starts after it. Folded as one path, ``if=/../etc/shadow`` lost its
    ``if=`` to the ``..`` and read ``etc/shadow``.
    """
    slash = arg.find("/")
    if slash <= 0 or whole:
        return arg if slash < 0 else _lexical_path(arg)
    head = arg[:slash]
    equals = head.find("=")
    if equals >= 0:  # `name=value`: the value is the path
        return arg[: equals + 1] + _lexical_path(arg[equals + 1 :])
    if head.startswith("-"):  # an option glued to an absolute path
        return head + _lexical_path(arg[slash:])
    return _lexical_path(arg)


def _lexical_argvs(argv: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The spellings of ``argv`` with every path-like argument folded lexically (the command
    name kept) that differ from ``argv``: options and ``name=`` kept before the path, and
    each argument folded as one path.

    A deny rule is also tried against these forms, so that ``cat /etc/../etc/shadow``,
    ``cat /etc//shadow``, ``cat /./etc/shadow`` or ``dd if=/../etc/shadow`` cannot step
    around a deny rule on ``cat /etc/shadow`` (``dd if=/etc/shadow``) when a broad allow rule
    (``cat **``) would let them through. Where an argument's path starts is a guess (a file
    may be named ``-f``), so both readings are tried: a deny only ever gets wider. Allow
    rules never see the folded forms: what they allow is what was written.
    """
    if len(argv) < 2:
        return ()
    forms: list[tuple[str, ...]] = []
    for whole in (False, True):
        folded = (argv[0], *(_lexical_arg(a, whole=whole) for a in argv[1:]))
        if folded != argv and folded not in forms:
            forms.append(folded)
    return tuple(forms)


def compile_ssh(body: Mapping[str, Any], deny: bool) -> SshBlock:
    _check_keys(body, "ssh", ("commands", "shell", "forwards"))
    commands = _str_list(body, "commands") or []
    shell = body.get("shell", False)
    if not isinstance(shell, bool):
        raise BlockError("shell", "'shell' must be true or false")
    forwards = _str_list(body, "forwards")
    if not commands and not shell and forwards is None:
        raise BlockError("commands", "an ssh block needs commands, shell: true or forwards")
    return SshBlock(
        tuple(_compiled("commands", globs.ArgvPattern.compile, commands)),
        shell,
        ForwardSet.compile(forwards, deny) if forwards is not None else None,
        deny,
    )


# --- SQL (5.3) --------------------------------------------------------------------------------


def _compile_table_glob(pattern: str, deny: bool) -> Callable[[str], bool]:
    """``schema.table`` with ``*`` inside a part.

    For an allow rule ``*`` never crosses the dot; for a deny rule it may, so a
    quoted name holding a dot (``"a.b"``) cannot slip past a deny rule. A deny rule also
    matches the wildcard relations of statements on a whole schema (``s.*`` when its schema
    glob matches ``s``) or on every schema (``*.*``); an allow rule covers them only with a
    table glob that is all ``*`` (and, for ``*.*``, a schema glob too).
    """
    schema, dot, table = pattern.partition(".")
    if not dot or not schema or not table or "." in table:
        raise PatternError("a table pattern is schema.table (use * within a part: public.*)")
    # PostgreSQL keeps 63 bytes of a longer name (the statement's names are cut the same):
    # a rule naming a table as a DDL script wrote it must match the table it names.
    schema, table = _stored_name(schema), _stored_name(table)
    pattern = f"{schema}.{table}"
    star = "." if deny else "[^.]"
    whole = compile_star_glob(pattern.split("*"), star)
    if not deny:
        return whole
    schema_only = compile_star_glob(schema.split("*"), star)

    def deny_hit(name: str) -> bool:
        # A statement on a whole schema reports ``schema.*`` and one on every schema ``*.*``
        # (a real name holding ``*`` is always quoted): they touch whatever this rule names there.
        if name == "*.*":
            return True
        if name.endswith(".*"):
            return schema_only(name[:-2])
        return whole(name)

    return deny_hit


def _stored_name(part: str) -> str:
    """A table pattern's part without ``*`` as PostgreSQL stores the name: at most 63 bytes."""
    return part if "*" in part else sql.stored_name(part)


def _function_matchers(names: list[str]) -> tuple[Callable[[str], bool], ...]:
    return tuple(compile_name_glob(n.lower()) for n in names)


def _function_hit(matchers: tuple[Callable[[str], bool], ...], function: str) -> bool:
    bare = function.rpartition(".")[2]
    return any(m(function) or m(bare) for m in matchers)


@dataclass(frozen=True, slots=True)
class SqlBlock:
    deny: bool
    statements: frozenset[str] | None  # None: every class ("*")
    tables: tuple[Callable[[str], bool], ...] | None
    functions: tuple[Callable[[str], bool], ...]

    def keys(self) -> frozenset[str] | None:
        """The statement classes: an allow rule covers all of a statement's classes and a deny
        rule touches one, so either is filed under a class the statement probes."""
        return self.statements

    def match(self, part: Part) -> Captures | None:
        if not isinstance(part, SqlPart):
            return None
        hit = self._deny_hit(part.statement) if self.deny else self._allow_hit(part.statement)
        return NO_CAPTURES if hit else None

    def _allow_hit(self, stmt: sql.SqlStatement) -> bool:
        if stmt.forbidden is not None:
            return False
        if self.statements is not None and not stmt.classes <= self.statements:
            return False
        tables = self.tables or ()
        for relation in stmt.relations:  # every relation covered; plain loops: the hot path
            for table in tables:
                if table(relation):
                    break
            else:
                return False
        return all(_function_hit(self.functions, f) for f in stmt.forbidden_functions)

    def _deny_hit(self, stmt: sql.SqlStatement) -> bool:
        if self.statements is not None and not stmt.classes & self.statements:
            return False
        if self.tables is not None and not any(t(r) for r in stmt.relations for t in self.tables):
            return False
        if self.functions:
            return any(_function_hit(self.functions, f) for f in stmt.functions)
        return True


def compile_sql(body: Mapping[str, Any], deny: bool) -> SqlBlock:
    _check_keys(body, "sql", ("statements", "tables", "functions"))
    statements = _str_list(body, "statements", required=True) or []
    for name in statements:
        if name != "*" and name not in sql.STATEMENT_CLASSES:
            classes = ", ".join(sorted(sql.STATEMENT_CLASSES))
            raise BlockError("statements", f"statements: unknown class {name!r} ({classes})")
    tables = _str_list(body, "tables")
    functions = _str_list(body, "functions") or []
    return SqlBlock(
        deny=deny,
        statements=None if "*" in statements else frozenset(statements),
        tables=None
        if tables is None
        else tuple(_compiled("tables", lambda p: _compile_table_glob(p, deny), tables)),
        functions=_function_matchers(functions),
    )


# --- MCP (5.4) --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class McpBlock:
    tools: NameSet | None
    resources: tuple[Callable[[str], bool], ...]
    deny: bool = False

    def keys(self) -> frozenset[str] | None:
        if self.tools is None:
            return frozenset((RESOURCE_KEY,))
        if self.tools.globs:
            return None
        return self.tools.exact | ({RESOURCE_KEY} if self.resources else set())

    def match(self, part: Part) -> Captures | None:
        if isinstance(part, McpToolPart):
            hit = self.tools is not None and self.tools(part.tool)
        elif isinstance(part, McpResourcePart):
            hit = any(m(part.uri) for m in self.resources)
            if not hit and self.deny:
                # A server reads ``file:///secret?x`` or ``...#x`` as ``file:///secret``: a deny
                # rule also sees the URI without its query and fragment.
                bare = _URI_END.split(part.uri, maxsplit=1)[0]
                hit = bare != part.uri and any(m(bare) for m in self.resources)
        else:
            hit = False
        return NO_CAPTURES if hit else None


def compile_mcp(body: Mapping[str, Any], deny: bool) -> McpBlock:
    _check_keys(body, "mcp", ("tools", "resources"))
    tools = _str_list(body, "tools")
    resources = _str_list(body, "resources") or []
    return McpBlock(
        NameSet.compile(tools) if tools is not None else None,
        tuple(_compiled("resources", globs.compile_token_glob, resources)),
        deny,
    )


_URI_END = re.compile(r"[?#]")


# --- files (5.5) ------------------------------------------------------------------------------

FILE_OPS = ("read", "list", "write", "delete")


@dataclass(frozen=True, slots=True)
class FilesBlock:
    ops: Mapping[str, tuple[Callable[[str], bool], ...]]

    def keys(self) -> frozenset[str] | None:
        return frozenset(self.ops)

    def match(self, part: Part) -> Captures | None:
        if not isinstance(part, FilesPart):
            return None
        matchers = self.ops.get(part.op, ())
        return NO_CAPTURES if any(m(part.path) for m in matchers) else None


def compile_files(body: Mapping[str, Any], deny: bool) -> FilesBlock:
    _check_keys(body, "files", FILE_OPS)
    ops = {
        op: tuple(_compiled(op, globs.compile_path_glob, _str_list(body, op) or []))
        for op in FILE_OPS
        if op in body
    }
    return FilesBlock(MappingProxyType(ops))


ActionBlock = HttpBlock | SshBlock | SqlBlock | McpBlock | FilesBlock
COMPILERS: Mapping[str, Callable[[Mapping[str, Any], bool], ActionBlock]] = {
    "http": compile_http,
    "ssh": compile_ssh,
    "sql": compile_sql,
    "mcp": compile_mcp,
    "files": compile_files,
}
