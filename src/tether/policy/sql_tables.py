"""Tables of PostgreSQL's parse-tree node kinds, and helpers reading its JSON.

For :mod:`tether.policy.sql_analyze`, which documents what they mean: the classes of statement
kinds, the statements and functions that are always forbidden, the fields held as bare structs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from pglast import ast as pg_ast

JsonNode = dict[str, Any]
Scope = frozenset[str]

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
        "ts_stat", "ts_rewrite", "connectby", "xpath_table",
        # server configuration files read back as rows
        "pg_hba_file_rules", "pg_ident_file_mappings", "pg_show_all_file_settings",
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


# Functions whose first argument (or any named argument) names a relation as text or
# ``regclass``: the sequence functions and extension functions that read, change or expose a
# relation's contents (pageinspect, pgstattuple, pgrowlocks, pg_prewarm, pg_visibility,
# pg_surgery, amcheck, pg_freespacemap) and the index maintenance functions. The relation is
# reported like a ``FROM`` item; one given by an expression or an OID is unknown (``*.*``).
# Every one is also in the catalog-derived tables of :mod:`tether.policy.sql_builtins`, which
# the analysis uses first (they know each overload's positions and parameter names); this list
# stays as the floor for a function those tables would lose.
RELATION_NAME_FUNCTIONS: Final = frozenset(
    {
        "nextval", "currval", "setval", "pg_sequence_last_value", "to_regclass",
        "get_raw_page", "pgstattuple", "pgstattuple_approx", "pgstatindex", "pgstatginindex",
        "pgstathashindex", "pg_relpages", "pgrowlocks", "pg_prewarm", "pg_visibility",
        "pg_visibility_map", "pg_visibility_map_summary", "pg_check_frozen", "pg_check_visible",
        "pg_truncate_visibility_map", "heap_force_kill", "heap_force_freeze", "verify_heapam",
        "bt_index_check", "bt_index_parent_check", "pg_freespace", "brin_summarize_new_values",
        "brin_summarize_range", "brin_desummarize_range", "gin_clean_pending_list",
    }
)  # fmt: skip
# Functions that change a sequence: they also need the ``update`` class.
SEQUENCE_WRITERS: Final = frozenset({"nextval", "setval"})


def is_forbidden_function(name: str) -> bool:
    """Whether a function's last name part (any case) is on the forbidden list."""
    bare = name.lower()
    return bare in FORBIDDEN_FUNCTIONS or bare.startswith(FORBIDDEN_FUNCTION_PREFIXES)


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


_NAMEDATALEN: Final = 64
_IDENT_BLANKS: Final = " \t\n\r\f"


def relation_name_parts(text: str) -> list[str] | None:
    """The name parts of a relation name given as text, as PostgreSQL's ``regclass`` input reads
    it (``SplitIdentifierString``): parts split on ``.`` with blanks around them, double-quoted
    parts kept (``""`` is a quote), others folded to lower case (ASCII only), each cut to 63
    bytes. None for what ``regclass`` reads otherwise (an OID in digits) or refuses."""
    if text.isdigit() and text.isascii():
        return None
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _IDENT_BLANKS:
            i += 1
        if i < n and text[i] == '"':
            name, i = _quoted_part(text, i + 1)
            if not name:
                return None
        else:
            start = i
            while i < n and text[i] != "." and text[i] not in _IDENT_BLANKS:
                i += 1
            if i == start:
                return None
            name = text[start:i].translate(_ASCII_LOWER)
        parts.append(stored_name(name))
        while i < n and text[i] in _IDENT_BLANKS:
            i += 1
        if i == n:
            return parts
        if text[i] != ".":
            return None
        i += 1


def _quoted_part(text: str, i: int) -> tuple[str, int]:
    """A double-quoted part starting after its quote: its text ("" if unterminated), the end."""
    chunks: list[str] = []
    while True:
        end = text.find('"', i)
        if end < 0:
            return "", len(text)
        if text.startswith('"', end + 1):
            chunks.append(text[i : end + 1])
            i = end + 2
            continue
        chunks.append(text[i:end])
        return "".join(chunks), end + 1


_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def setting_name(name: str) -> str:
    """A run-time setting's name as PostgreSQL looks it up: in any ASCII case (``guc.c``
    compares names case-insensitively), so ``SET "ROLE"`` is ``SET ROLE``."""
    return name.translate(_ASCII_LOWER)


def stored_name(name: str) -> str:
    """``name`` cut to NAMEDATALEN - 1 bytes of UTF-8, at a character boundary."""
    encoded = name.encode("utf-8")
    if len(encoded) < _NAMEDATALEN:
        return name
    return encoded[: _NAMEDATALEN - 1].decode("utf-8", "ignore")


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
