"""What one parsed PostgreSQL statement does: its classes, relations and functions (spec 5.3).

The input is one statement of ``pglast.parser.parse_sql_json`` (PostgreSQL's own grammar, emitted
as JSON by libpg_query) after ``json.loads``. The tree is walked *generically*: every dict and list
is visited, so a node kind this module has never heard of still has its children searched for
statements, relations and function calls. Only a few node kinds get a handler of their own.

JSON shape. A field typed ``Node *`` or ``List *`` holds wrapped nodes (``{"RangeVar": {...}}``);
a field typed with a specific struct (``DeleteStmt.relation`` is a ``RangeVar *``) holds the bare
struct. The table of those fields is derived at import from pglast's own node metadata, which is
generated from the same PostgreSQL headers as the JSON. libpg_query omits zero, false and empty
values, so every read uses a default.

Classes. A statement needs the class of every statement node anywhere in it (a ``DELETE`` in a
CTE of a ``SELECT`` gives ``{select, delete}``; a sub-select inside an ``UPDATE`` adds
``select``). Decisions where the spec is silent, all on the restrictive side:

* the ``VALUES`` list that is the row source of an ``INSERT`` is part of the ``INSERT`` and adds no
  ``select`` (sub-queries inside it still do);
* ``INSERT ... ON CONFLICT DO UPDATE`` also needs ``update``; ``SELECT ... INTO`` and
  ``CREATE TABLE AS`` need ``ddl`` and ``select``; views and rules add the classes of the queries
  they hold;
* ``PREPARE`` has no class of its own, only its inner statement's; ``EXPLAIN`` without ``ANALYZE``
  needs only ``explain`` (an ``ANALYZE`` option counts as on unless its value is certainly false);
* ``PREPARE TRANSACTION``, ``COMMIT PREPARED``, ``ROLLBACK PREPARED`` are ``other`` (a prepared
  transaction outlives the session), plain transaction control is ``transaction``;
* ``SET TRANSACTION`` is ``transaction``; ``SET ROLE``/``SESSION AUTHORIZATION`` (and their
  ``RESET``) are ``role``; every other ``SET``/``RESET``, ``SET CONSTRAINTS`` is ``set``;
* ``CREATE``/``ALTER``/``DROP`` of anything (roles, databases, extensions...) is ``ddl``; any other
  unknown statement kind is ``other``, never nothing.

Relations. Every ``RangeVar`` is a relation, except an unqualified name that is a CTE in scope
(a ``WITH``'s names are visible in its body and later CTEs, in all of its CTEs when
``RECURSIVE``) and the ``FOR UPDATE OF`` list (it names FROM items, not relations). Targets of
``INSERT``/``UPDATE``/``DELETE``/``MERGE``/``SELECT INTO`` are always real relations. Unqualified
names resolve to ``pg_catalog`` when they start with ``pg_`` and to the default schema otherwise
(inside ``CREATE SCHEMA s ...`` to ``s``). Name lists of ``DROP``/``COMMENT``/``SECURITY LABEL``
count when they name relations (and the table of a column, trigger, rule, policy or constraint).
Renames and ``SET SCHEMA`` also report the new name. A statement acting on a whole schema
(``DROP SCHEMA``, ``GRANT ... ALL TABLES IN SCHEMA``, schema renames and owners,
``ALTER DEFAULT PRIVILEGES IN SCHEMA``, ``REINDEX SCHEMA``) reports ``schema.*``; one acting on
every schema (``DROP OWNED``, ``REASSIGN OWNED``, bare ``VACUUM``/``ANALYZE``/``CLUSTER``,
``REINDEX DATABASE``) reports ``*.*``, so only a rule whose tables cover all of it allows it. A
name part holding ``.``, ``"``, ``*``, ``?`` or ``[`` is double-quoted so it cannot pose as
another name. Relations and functions inside ``EXPLAIN`` are reported even without ``ANALYZE``
(planning reads statistics and may fold immutable functions).

Functions. Every ``FuncCall`` (also in ``CALL``, ``FROM``, defaults, index expressions) is reported
lower-case, with a ``pg_catalog.`` qualifier dropped (it is searched first, so ``pg_catalog.f`` and
``f`` are one function) and other qualifiers kept. A function is forbidden when its last name
part is on :data:`FORBIDDEN_FUNCTIONS` or starts with one of :data:`FORBIDDEN_FUNCTION_PREFIXES`,
whatever its schema (extensions such as dblink live in any schema). DDL that only *names* a
function (``GRANT EXECUTE ON FUNCTION``, ``CREATE TRIGGER ... EXECUTE FUNCTION``, ``CREATE CAST``,
``CREATE OPERATOR``/``AGGREGATE``/``TYPE`` support functions...) reports a forbidden name too.

Always forbidden (``forbidden`` is set, whatever the rules): ``COPY`` to or from a server file or
``PROGRAM``, ``DO``, ``EXECUTE``, ``LOAD`` (spec); and, where the spec is silent: ``ALTER SYSTEM``
(server configuration, e.g. ``archive_command`` runs shell commands), ``CREATE``/``ALTER
EXTENSION`` (runs an install script as a privileged role), ``CREATE LANGUAGE``, ``CREATE
SUBSCRIPTION`` and ``ALTER SUBSCRIPTION ... CONNECTION`` (the server connects elsewhere), and
``CREATE FUNCTION``/``PROCEDURE`` whose body is not SQL: a body in PL/pgSQL, C, ``internal`` or
any other language cannot be checked (``internal`` even re-exports built-ins under new names). A
``LANGUAGE sql`` string body is parsed and checked like the statement itself: its classes,
relations and functions are added to the ``CREATE``.

Limits, not seen by any parse-tree analysis: relations and functions named inside strings
(``'users'::regclass``, ``nextval('s')``), code run by operators, casts, triggers, views, rules
and functions defined earlier (their definitions were checked when created through Tether), the
attribute notation ``x.f`` for functions of composite arguments, and ``COPY t TO ''`` (the parse
tree drops the empty name; PostgreSQL refuses an empty file name, so nothing is read or written).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from pglast import ast as pg_ast
from pglast import parser as pg_parser

JsonNode = dict[str, Any]
Scope = frozenset[str]

STATEMENT_CLASSES: Final = frozenset(
    {
        "select", "insert", "update", "delete", "merge", "truncate", "ddl", "grant",
        "transaction", "set", "role", "explain", "other",
    }
)  # fmt: skip

# Functions that read or write server files, run processes, touch large objects, connect to other
# servers, control the server or other sessions, change settings behind the SET statement's back,
# or run a query (or read a table) named in a string and so escape the table check.
FORBIDDEN_FUNCTIONS: Final = frozenset(
    {
        # server files and large objects
        "pg_stat_file", "loread", "lowrite",
        # server and session control
        "pg_terminate_backend", "pg_cancel_backend", "pg_signal_backend", "pg_reload_conf",
        "pg_rotate_logfile", "pg_rotate_logfile_old", "pg_promote", "pg_switch_wal",
        "pg_create_restore_point", "pg_backup_start", "pg_backup_stop", "pg_start_backup",
        "pg_stop_backup", "pg_wal_replay_pause", "pg_wal_replay_resume",
        "pg_log_backend_memory_contexts", "set_config",
        # replication slots stream every change of the database
        "pg_create_logical_replication_slot", "pg_create_physical_replication_slot",
        "pg_drop_replication_slot", "pg_copy_logical_replication_slot",
        "pg_copy_physical_replication_slot", "pg_replication_slot_advance",
        "pg_logical_emit_message",
        # a query or a table given as text
        "ts_stat", "ts_rewrite", "connectby",
    }
)  # fmt: skip

# Families matched by prefix: pg_read_file/pg_read_binary_file, every pg_ls_* directory listing,
# adminpack's pg_file_* and pg_logdir_ls, every lo_* large-object function, every dblink*
# function, the *_to_xml* functions that run a query or dump tables, logical decoding, and
# tablefunc's crosstab*.
FORBIDDEN_FUNCTION_PREFIXES: Final = (
    "pg_read_", "pg_ls_", "pg_file_", "pg_logdir_", "lo_", "dblink", "query_to_xml",
    "table_to_xml", "schema_to_xml", "database_to_xml", "pg_logical_slot_", "crosstab",
)  # fmt: skip


def is_forbidden_function(name: str) -> bool:
    """Whether a function's last name part (any case) is on the forbidden list."""
    bare = name.lower()
    return bare in FORBIDDEN_FUNCTIONS or bare.startswith(FORBIDDEN_FUNCTION_PREFIXES)


@dataclass(frozen=True, slots=True)
class StatementFacts:
    """What the walk found in one statement; ``literal_sensitive`` is for the caches."""

    classes: frozenset[str]
    relations: frozenset[str]
    functions: frozenset[str]
    forbidden_functions: frozenset[str]
    forbidden: str | None
    search_path: tuple[str, ...] | None
    literal_sensitive: bool


def analyze_statement(stmt: JsonNode, default_schema: str) -> StatementFacts:
    """Walk one top-level statement node (``{"SelectStmt": {...}}``)."""
    walker = _Walker(default_schema)
    walker.top = next(iter(stmt.values()), None)
    walker.node(stmt, _NO_SCOPE)
    return walker.facts()


# --- tables --------------------------------------------------------------------------------------


def _struct_fields() -> dict[tuple[str, str], str]:
    """(node kind, field) -> struct kind, for the fields the JSON holds as a bare struct.

    Those are the fields typed with a specific node struct, by pointer (``RangeVar *``) or
    embedded (``CreateForeignTableStmt.base`` is a ``CreateStmt``).
    """
    generic = {"Node", "List", "Expr", "char", "Bitmapset"}
    fields: dict[tuple[str, str], str] = {}
    for kind in dir(pg_ast):
        cls = getattr(pg_ast, kind)
        slots = getattr(cls, "__slots__", None)
        if not isinstance(cls, type) or not isinstance(slots, dict):
            continue
        for field, info in slots.items():
            target = str(getattr(info, "c_type", "")).removesuffix("*")
            if target not in generic and isinstance(getattr(pg_ast, target, None), type):
                fields[kind, field] = target
    return fields


_STRUCT_FIELDS: Final = _struct_fields()
_STRUCTS_OF: Final[dict[str, dict[str, str]]] = {}
for (_kind, _field), _struct in _STRUCT_FIELDS.items():
    _STRUCTS_OF.setdefault(_kind, {})[_field] = _struct
_NO_STRUCTS: Final[dict[str, str]] = {}
_KINDS: Final = frozenset(
    name for name in dir(pg_ast) if isinstance(getattr(pg_ast, name), type) and name[:1].isupper()
) | {"List", "IntList", "OidList", "XidList"}
# Nodes that hold no statement, relation or call: constants and column references; plain names
# too, except inside statements whose names may refer to functions.
_LEAVES: Final = frozenset(
    {"A_Const", "ColumnRef", "ParamRef", "A_Star", "Integer", "Float", "Boolean", "BitString"}
)
_LEAVES_AND_NAMES: Final = _LEAVES | {"String"}
_NO_SCOPE: Final[Scope] = frozenset()

_EXPLICIT_CLASSES: Final = {
    "SelectStmt": "select", "VariableShowStmt": "select", "ReturnStmt": "select",
    "SetOperationStmt": "select", "InsertStmt": "insert", "UpdateStmt": "update",
    "DeleteStmt": "delete", "MergeStmt": "merge", "TruncateStmt": "truncate",
    "GrantStmt": "grant", "GrantRoleStmt": "grant", "ExplainStmt": "explain",
    "ConstraintsSetStmt": "set", "PrepareStmt": "",
    "CommentStmt": "ddl", "SecLabelStmt": "ddl", "RefreshMatViewStmt": "ddl", "ViewStmt": "ddl",
    "IndexStmt": "ddl", "RuleStmt": "ddl", "RenameStmt": "ddl", "DefineStmt": "ddl",
    "CompositeTypeStmt": "ddl", "ImportForeignSchemaStmt": "ddl", "ReassignOwnedStmt": "ddl",
    "ReplicaIdentityStmt": "ddl",
}  # fmt: skip


def _default_class(kind: str) -> str:
    return "ddl" if kind.startswith(("Create", "Alter", "Drop")) else "other"


_STMT_CLASS: Final = {
    kind: _EXPLICIT_CLASSES.get(kind, _default_class(kind))
    for kind in dir(pg_ast)
    if kind.endswith("Stmt") and kind != "RawStmt"
}

# Statement kinds whose analysis reads no literal value (nor a field whose presence depends on
# one): only these may be served from the literal-normalised cache. Everything else (DDL, SET,
# COPY, GRANT, ...) is literal-sensitive.
_LITERAL_FREE: Final = frozenset(
    {
        "SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "TruncateStmt",
        "TransactionStmt", "VariableShowStmt", "LockStmt", "ExplainStmt", "PrepareStmt",
        "DeallocateStmt", "DeclareCursorStmt", "FetchStmt", "ClosePortalStmt", "CallStmt",
        "VacuumStmt", "ClusterStmt", "ReindexStmt", "ListenStmt", "UnlistenStmt", "NotifyStmt",
        "CheckPointStmt", "DiscardStmt", "ExecuteStmt", "ReturnStmt",
    }
)  # fmt: skip

_ALWAYS_FORBIDDEN: Final = {
    "DoStmt": "DO runs procedural code that cannot be checked",
    "ExecuteStmt": "EXECUTE runs a prepared statement whose text is not part of this query",
    "LoadStmt": "LOAD loads a shared library into the server",
    "AlterSystemStmt": "ALTER SYSTEM changes the server configuration",
    "CreateExtensionStmt": "CREATE EXTENSION runs an install script with elevated privileges",
    "AlterExtensionStmt": "ALTER EXTENSION UPDATE runs an update script with elevated privileges",
    "CreatePLangStmt": "CREATE LANGUAGE installs a procedural language handler",
    "CreateSubscriptionStmt": "CREATE SUBSCRIPTION makes the server connect to another server",
}

# Statements whose plain names may refer to functions (support functions, trigger functions).
_NAMES_FUNCTIONS: Final = frozenset(
    {
        "DefineStmt", "AlterTypeStmt", "AlterOperatorStmt", "CreateFdwStmt", "AlterFdwStmt",
        "CreateConversionStmt", "CreateAmStmt", "CreateTrigStmt", "CreateEventTrigStmt",
    }
)  # fmt: skip

_TWO_PHASE: Final = frozenset(
    {"TRANS_STMT_PREPARE", "TRANS_STMT_COMMIT_PREPARED", "TRANS_STMT_ROLLBACK_PREPARED"}
)
_RELATION_OBJECTS: Final = frozenset(
    {
        "OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_SEQUENCE", "OBJECT_INDEX",
        "OBJECT_FOREIGN_TABLE",
    }
)  # fmt: skip
_RELATION_MEMBERS: Final = frozenset(
    {"OBJECT_COLUMN", "OBJECT_TRIGGER", "OBJECT_RULE", "OBJECT_POLICY", "OBJECT_TABCONSTRAINT"}
)
_FALSE_WORDS: Final = frozenset({"false", "off"})
_MAX_BODY_DEPTH: Final = 3
_NEEDS_QUOTES: Final = re.compile(r'[."*?\[]').search
_NOTHING: Final[frozenset[str]] = frozenset()
_FUNCNAME: Final = frozenset({"funcname"})
_RELATION: Final = frozenset({"relation"})
_SELECT_OWN: Final = frozenset({"withClause", "lockingClause", "intoClause"})
_DML_OWN: Final = frozenset({"withClause", "relation"})
_INSERT_OWN: Final = frozenset({"withClause", "relation", "selectStmt"})


def _part(name: str) -> str:
    if name and _NEEDS_QUOTES(name) is None:
        return name
    return '"' + name.replace('"', '""') + '"'


def _qualified(schema: str, name: str) -> str:
    return f"{_part(schema)}.{_part(name)}"


def _strings(node: Any) -> list[str]:
    """The values of a list of ``String`` nodes, or of one ``List``/``String`` node."""
    if isinstance(node, dict):
        if "List" in node:
            node = node["List"].get("items", [])
        elif "String" in node:
            return [node["String"].get("sval", "")]
        else:
            return []
    return [item["String"].get("sval", "") for item in node if "String" in item]


def _defelems(options: Iterable[JsonNode]) -> Iterable[JsonNode]:
    return (opt["DefElem"] for opt in options if "DefElem" in opt)


def _const_text(node: JsonNode) -> str:
    """The text of an ``A_Const`` (as ``SET`` sees it); other nodes give ``""``."""
    const = node.get("A_Const", {})
    for key in ("sval", "fval", "bsval"):
        if key in const:
            return str(const[key].get(key, ""))
    if "ival" in const:
        return str(const["ival"].get("ival", 0))
    if "boolval" in const:
        return "true" if const["boolval"].get("boolval", False) else "false"
    return ""


def _option_is_on(elem: JsonNode) -> bool:
    """A boolean option as ``defGetBoolean`` reads it; anything not certainly false is on."""
    arg = elem.get("arg")
    if arg is None:
        return True
    if "Integer" in arg:
        return bool(arg["Integer"].get("ival", 0) != 0)
    if "Boolean" in arg:
        return bool(arg["Boolean"].get("boolval", False))
    if "String" in arg:
        return str(arg["String"].get("sval", "")).lower() not in _FALSE_WORDS
    return True


# --- the walk ------------------------------------------------------------------------------------


class _Walker:
    """Collects the facts of one statement; mutable, lives for one call."""

    def __init__(self, default_schema: str, depth: int = 0) -> None:
        self.schema = default_schema
        self.depth = depth
        self.top: Any = None
        self.count_classes = True
        self.leaves = _LEAVES_AND_NAMES
        self.sensitive = False
        self.classes: set[str] = set()
        self.relations: set[str] = set()
        self.functions: set[str] = set()
        self.forbidden_functions: set[str] = set()
        self.forbidden: str | None = None
        self.search_path: tuple[str, ...] | None = None

    def facts(self) -> StatementFacts:
        return StatementFacts(
            classes=frozenset(self.classes or ("other",)),
            relations=frozenset(self.relations),
            functions=frozenset(self.functions),
            forbidden_functions=frozenset(self.forbidden_functions),
            forbidden=self.forbidden,
            search_path=self.search_path,
            literal_sensitive=self.sensitive,
        )

    # generic traversal

    def node(self, node: JsonNode, scope: Scope) -> None:
        """A wrapped node ``{"Kind": {...}}`` (a bare struct of unknown kind is walked too)."""
        for kind, body in node.items():
            if kind in self.leaves:
                return
            handler = _DISPATCH.get(kind)
            if handler is not None and type(body) is dict:
                handler(self, body, scope)
            else:
                self.unknown_struct(node, scope)
            return

    def children(
        self, kind: str, body: JsonNode, scope: Scope, skip: frozenset[str] = _NOTHING
    ) -> None:
        structs = _STRUCTS_OF.get(kind, _NO_STRUCTS)
        for field, value in body.items():
            if type(value) is list:
                if field not in skip:
                    for item in value:
                        if type(item) is dict:
                            self.node(item, scope)
            elif type(value) is dict and field not in skip:
                struct = structs.get(field)
                if struct is None:
                    self.node(value, scope)
                elif struct not in self.leaves:
                    _DISPATCH[struct](self, value, scope)

    def unknown_struct(self, body: JsonNode, scope: Scope) -> None:
        """Safety net for a struct the field table does not know (never seen in tests)."""
        for kind in body:
            if kind.endswith("Stmt"):
                self.statement(kind, _default_class(kind))
        if type(body.get("relname")) is str:
            self.relation(body, scope)
        self.children("", body, scope)

    # facts

    def statement(self, kind: str, cls: str) -> None:
        if cls and self.count_classes:
            self.classes.add(cls)
        if kind not in _LITERAL_FREE:
            self.sensitive = True
        detail = _ALWAYS_FORBIDDEN.get(kind)
        if detail is not None:
            self.forbid(detail)

    def add_class(self, cls: str) -> None:
        if self.count_classes:
            self.classes.add(cls)

    def forbid(self, detail: str) -> None:
        if self.forbidden is None:
            self.forbidden = detail

    def relation(self, rangevar: JsonNode, scope: Scope, *, target: bool = False) -> None:
        name = rangevar.get("relname", "")
        schema = rangevar.get("schemaname")
        if schema is None:
            if not target and name in scope:
                return
            schema = self.resolve(name)
        self.relations.add(_qualified(schema, name))

    def resolve(self, name: str) -> str:
        return "pg_catalog" if name.startswith("pg_") else self.schema

    def named_relation(self, names: list[str]) -> None:
        """A relation given as a name list (``[schema,] name``, a catalog part is ignored)."""
        if not names:
            return
        schema = names[-2] if len(names) > 1 else self.resolve(names[-1])
        self.relations.add(_qualified(schema, names[-1]))

    def whole_schema(self, schema: str) -> None:
        self.relations.add(f"{_part(schema)}.*")

    def object_relations(self, objtype: str, obj: Any) -> None:
        """The relation(s) behind a DROP/COMMENT/SECURITY LABEL object name."""
        names = _strings(obj)
        if objtype == "OBJECT_SCHEMA":
            for schema in names:
                self.whole_schema(schema)
        elif objtype in _RELATION_OBJECTS:
            self.named_relation(names)
        elif objtype in _RELATION_MEMBERS:
            self.named_relation(names[:-1])

    def function(self, names: list[str]) -> None:
        if not names:
            return
        if len(names) > 1 and names[-2] == "pg_catalog":
            names = names[-1:]
        name = ".".join(_part(n) for n in names[-2:]).lower()
        self.functions.add(name)
        if is_forbidden_function(names[-1]):
            self.forbidden_functions.add(name)

    def with_scope(self, with_clause: JsonNode | None, scope: Scope) -> Scope:
        """Walk a WITH clause's queries; return the scope of the statement body."""
        if with_clause is None:
            return scope
        ctes = [c["CommonTableExpr"] for c in with_clause.get("ctes", []) if "CommonTableExpr" in c]
        names = [cte.get("ctename", "") for cte in ctes]
        body_scope = scope | frozenset(names)
        recursive = with_clause.get("recursive", False)
        for index, cte in enumerate(ctes):
            query = cte.get("ctequery")
            if query is not None:
                visible = body_scope if recursive else scope | frozenset(names[:index])
                self.node(query, visible)
        return body_scope

    def sql_body(self, body: str) -> None:
        """A ``LANGUAGE sql`` function body given as a string: checked like a query."""
        if self.depth >= _MAX_BODY_DEPTH:
            self.forbid("function bodies nested too deeply")
            return
        try:
            stmts = json.loads(pg_parser.parse_sql_json(body)).get("stmts", [])
        except pg_parser.ParseError:
            self.forbid("the function body does not parse as SQL")
            return
        for stmt in stmts:
            inner = _Walker(self.schema, self.depth + 1)
            inner.node(stmt.get("stmt", {}), _NO_SCOPE)
            self.absorb(inner)

    def absorb(self, inner: _Walker) -> None:
        if self.count_classes:
            self.classes |= inner.classes
        self.relations |= inner.relations
        self.functions |= inner.functions
        self.forbidden_functions |= inner.forbidden_functions
        if inner.forbidden is not None:
            self.forbid(f"function body: {inner.forbidden}")


# --- handlers ------------------------------------------------------------------------------------

Handler = Callable[[_Walker, JsonNode, Scope], None]


def _string(w: _Walker, body: JsonNode, scope: Scope) -> None:
    """Only reached where a name may be a function's (see ``_names_functions``)."""
    if is_forbidden_function(body.get("sval", "")):
        w.function([body.get("sval", "")])


def _range_var(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.relation(body, scope)
    w.children("RangeVar", body, scope)


def _func_call(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.function(_strings(body.get("funcname", [])))
    w.children("FuncCall", body, scope, skip=_FUNCNAME)


def _object_with_args(w: _Walker, body: JsonNode, scope: Scope) -> None:
    names = _strings(body.get("objname", []))
    if names and is_forbidden_function(names[-1]):
        w.function(names)
    w.children("ObjectWithArgs", body, scope)


def _names_functions(kind: str) -> Handler:
    def handler(w: _Walker, body: JsonNode, scope: Scope) -> None:
        w.statement(kind, _STMT_CLASS[kind])
        saved, w.leaves = w.leaves, _LEAVES
        w.children(kind, body, scope)
        w.leaves = saved

    return handler


def _select(w: _Walker, body: JsonNode, scope: Scope, *, count: bool = True) -> None:
    if count:
        w.statement("SelectStmt", "select")
    into = body.get("intoClause")
    if into is not None:
        w.add_class("ddl")
        if "rel" in into:
            w.relation(into["rel"], scope, target=True)
    if "lockingClause" in body:
        w.add_class("update")
    inner = w.with_scope(body.get("withClause"), scope)
    w.children("SelectStmt", body, inner, skip=_SELECT_OWN)


def _dml(kind: str) -> Handler:
    def handler(w: _Walker, body: JsonNode, scope: Scope) -> None:
        w.statement(kind, _STMT_CLASS[kind])
        inner = w.with_scope(body.get("withClause"), scope)
        if "relation" in body:
            w.relation(body["relation"], inner, target=True)
        w.children(kind, body, inner, skip=_DML_OWN)

    return handler


def _insert(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.statement("InsertStmt", "insert")
    inner = w.with_scope(body.get("withClause"), scope)
    if "relation" in body:
        w.relation(body["relation"], inner, target=True)
    source = body.get("selectStmt")
    if source is not None:
        values = source.get("SelectStmt")
        if values is not None and "valuesLists" in values:
            _select(w, values, inner, count=False)
        else:
            w.node(source, inner)
    if body.get("onConflictClause", {}).get("action") == "ONCONFLICT_UPDATE":
        w.add_class("update")
    w.children("InsertStmt", body, inner, skip=_INSERT_OWN)


def _copy(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.statement("CopyStmt", "insert" if body.get("is_from") else "select")
    w.sensitive = True  # the file name's presence depends on a literal ('' is dropped)
    if body.get("is_program"):
        w.forbid("COPY ... PROGRAM runs a command on the database server")
    elif "filename" in body:
        w.forbid("COPY to or from a file on the database server")
    if "relation" in body:
        w.relation(body["relation"], scope, target=True)
    w.children("CopyStmt", body, scope, skip=_RELATION)


def _explain(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.statement("ExplainStmt", "explain")
    analyze = False
    for elem in _defelems(body.get("options", [])):
        if "arg" in elem:
            w.sensitive = True
        if elem.get("defname") == "analyze":
            analyze = _option_is_on(elem)
    saved, w.count_classes = w.count_classes, w.count_classes and analyze
    w.children("ExplainStmt", body, scope)
    w.count_classes = saved


def _variable_set(w: _Walker, body: JsonNode, scope: Scope) -> None:
    name = body.get("name", "")
    kind = body.get("kind", "")
    if name in ("role", "session_authorization"):
        cls = "role"
    elif kind == "VAR_SET_MULTI" and name.startswith("TRANSACTION"):
        cls = "transaction"
    else:
        cls = "set"
    w.statement("VariableSetStmt", cls)
    changes_path = name == "search_path" and kind != "VAR_SET_CURRENT"  # FROM CURRENT: as is
    if body is w.top and (changes_path or kind == "VAR_RESET_ALL"):
        values = body.get("args", []) if kind == "VAR_SET_VALUE" else []
        w.search_path = tuple(_const_text(v) for v in values)
    w.children("VariableSetStmt", body, scope)


def _discard(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.statement("DiscardStmt", "other")
    if body is w.top and body.get("target") == "DISCARD_ALL":
        w.search_path = ()


def _transaction(w: _Walker, body: JsonNode, scope: Scope) -> None:
    two_phase = body.get("kind") in _TWO_PHASE
    w.statement("TransactionStmt", "other" if two_phase else "transaction")


def _create_function(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.statement("CreateFunctionStmt", "ddl")
    language: str | None = "sql" if "sql_body" in body else None
    source: list[str] = []
    for elem in _defelems(body.get("options", [])):
        if elem.get("defname") == "language":
            language = "".join(_strings(elem.get("arg", {})))
        elif elem.get("defname") == "as":
            source = _strings(elem.get("arg", {}))
    if language != "sql":
        w.forbid(f"CREATE FUNCTION in language {language!r}: its body cannot be checked")
    elif source:
        if len(source) == 1:
            w.sql_body(source[0])
        else:
            w.forbid("CREATE FUNCTION with an object file")
    w.children("CreateFunctionStmt", body, scope)


def _alter_subscription(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.statement("AlterSubscriptionStmt", "ddl")
    if body.get("kind") == "ALTER_SUBSCRIPTION_CONNECTION":
        w.forbid("ALTER SUBSCRIPTION ... CONNECTION makes the server connect to another server")
    w.children("AlterSubscriptionStmt", body, scope)


def _objects(kind: str, type_field: str, objects_field: str) -> Handler:
    """DROP, COMMENT, SECURITY LABEL, ALTER ... OWNER: relations behind object names."""

    def handler(w: _Walker, body: JsonNode, scope: Scope) -> None:
        w.statement(kind, _STMT_CLASS[kind])
        objtype = body.get(type_field, "")
        objects = body.get(objects_field)
        if objects is not None:
            for obj in objects if isinstance(objects, list) else [objects]:
                w.object_relations(objtype, obj)
        w.children(kind, body, scope)

    return handler


def _rename(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.statement("RenameStmt", "ddl")
    rename_type = body.get("renameType", "")
    if rename_type == "OBJECT_SCHEMA":
        w.whole_schema(body.get("subname", ""))
        w.whole_schema(body.get("newname", ""))
    elif rename_type in _RELATION_OBJECTS and "relation" in body:
        rel = body["relation"]
        schema = rel.get("schemaname") or w.resolve(rel.get("relname", ""))
        w.relations.add(_qualified(schema, body.get("newname", "")))
    elif "object" in body:
        w.object_relations(rename_type, body["object"])
    w.children("RenameStmt", body, scope)


def _set_schema(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.statement("AlterObjectSchemaStmt", "ddl")
    if body.get("objectType") in _RELATION_OBJECTS and "relation" in body:
        w.relations.add(_qualified(body.get("newschema", ""), body["relation"].get("relname", "")))
    w.children("AlterObjectSchemaStmt", body, scope)


def _grant(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.statement("GrantStmt", "grant")
    if body.get("targtype") == "ACL_TARGET_ALL_IN_SCHEMA" or body.get("objtype") == "OBJECT_SCHEMA":
        for schema in _strings(body.get("objects", [])):
            w.whole_schema(schema)
    w.children("GrantStmt", body, scope)


def _default_privileges(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.statement("AlterDefaultPrivilegesStmt", "ddl")
    schemas = [
        schema
        for elem in _defelems(body.get("options", []))
        if elem.get("defname") == "schemas"
        for schema in _strings(elem.get("arg", {}))
    ]
    for schema in schemas:
        w.whole_schema(schema)
    if not schemas:
        w.relations.add("*.*")
    w.children("AlterDefaultPrivilegesStmt", body, scope)


def _create_schema(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.statement("CreateSchemaStmt", "ddl")
    schema = body.get("schemaname") or body.get("authrole", {}).get("rolename") or "*"
    saved, w.schema = w.schema, schema
    w.children("CreateSchemaStmt", body, scope)
    w.schema = saved


def _everywhere(kind: str, cls: str, present: Callable[[JsonNode], bool]) -> Handler:
    """Statements that act on every schema unless they name their relations."""

    def handler(w: _Walker, body: JsonNode, scope: Scope) -> None:
        w.statement(kind, cls)
        if not present(body):
            w.relations.add("*.*")
        w.children(kind, body, scope)

    return handler


def _reindex(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.statement("ReindexStmt", "other")
    kind = body.get("kind", "")
    if kind == "REINDEX_OBJECT_SCHEMA":
        w.whole_schema(body.get("name", ""))
    elif kind in ("REINDEX_OBJECT_SYSTEM", "REINDEX_OBJECT_DATABASE"):
        w.relations.add("*.*")
    w.children("ReindexStmt", body, scope)


_HANDLERS: Final[dict[str, Handler]] = {
    "String": _string,
    "RangeVar": _range_var,
    "FuncCall": _func_call,
    "ObjectWithArgs": _object_with_args,
    "SelectStmt": _select,
    "InsertStmt": _insert,
    "UpdateStmt": _dml("UpdateStmt"),
    "DeleteStmt": _dml("DeleteStmt"),
    "MergeStmt": _dml("MergeStmt"),
    "CopyStmt": _copy,
    "ExplainStmt": _explain,
    "VariableSetStmt": _variable_set,
    "DiscardStmt": _discard,
    "TransactionStmt": _transaction,
    "CreateFunctionStmt": _create_function,
    "AlterSubscriptionStmt": _alter_subscription,
    "DropStmt": _objects("DropStmt", "removeType", "objects"),
    "CommentStmt": _objects("CommentStmt", "objtype", "object"),
    "SecLabelStmt": _objects("SecLabelStmt", "objtype", "object"),
    "AlterOwnerStmt": _objects("AlterOwnerStmt", "objectType", "object"),
    "RenameStmt": _rename,
    "AlterObjectSchemaStmt": _set_schema,
    "GrantStmt": _grant,
    "AlterDefaultPrivilegesStmt": _default_privileges,
    "CreateSchemaStmt": _create_schema,
    "DropOwnedStmt": _everywhere("DropOwnedStmt", "ddl", lambda body: False),
    "ReassignOwnedStmt": _everywhere("ReassignOwnedStmt", "ddl", lambda body: False),
    "AlterTableMoveAllStmt": _everywhere("AlterTableMoveAllStmt", "ddl", lambda body: False),
    "VacuumStmt": _everywhere("VacuumStmt", "other", lambda body: "rels" in body),
    "ClusterStmt": _everywhere("ClusterStmt", "other", lambda body: "relation" in body),
    "ReindexStmt": _reindex,
    **{kind: _names_functions(kind) for kind in _NAMES_FUNCTIONS},
}


def _plain(kind: str) -> Handler:
    def handler(w: _Walker, body: JsonNode, scope: Scope) -> None:
        w.children(kind, body, scope)

    return handler


def _statement(kind: str, cls: str) -> Handler:
    def handler(w: _Walker, body: JsonNode, scope: Scope) -> None:
        w.statement(kind, cls)
        w.children(kind, body, scope)

    return handler


# One handler for every node kind PostgreSQL's JSON can hold; a kind missing here is walked by
# ``unknown_struct``.
_DISPATCH: Final[dict[str, Handler]] = {
    **{kind: _plain(kind) for kind in _KINDS},
    **{kind: _statement(kind, cls) for kind, cls in _STMT_CLASS.items()},
    **_HANDLERS,
}
