"""Handlers of the node kinds that :mod:`tether.policy.sql_walk` does not walk generically.

One handler per statement kind with classes, relations or forbidden parts of its own (see
:mod:`tether.policy.sql_analyze`); ``_DISPATCH`` maps every node kind to its handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from tether.policy.sql_builtins import (
    RELATION_PARAMETERS,
    UNREADABLE_RELATION_FUNCTIONS,
    relation_parameters,
)
from tether.policy.sql_tables import (
    _DML_OWN,
    _FUNCNAME,
    _INSERT_OWN,
    _KINDS,
    _LEAVES,
    _NAMES_FUNCTIONS,
    _RELATION,
    _RELATION_OBJECTS,
    _SELECT_OWN,
    _STMT_CLASS,
    _TWO_PHASE,
    RELATION_NAME_FUNCTIONS,
    SEQUENCE_WRITERS,
    JsonNode,
    Scope,
    _const_text,
    _defelems,
    _option_is_on,
    _qualified,
    _strings,
    is_forbidden_function,
    setting_name,
)

_TABLE_LIST: Final = frozenset({"table_list"})

if TYPE_CHECKING:
    from tether.policy.sql_walk import _Walker

    Handler = Callable[[_Walker, JsonNode, Scope], None]


def _string(w: _Walker, body: JsonNode, scope: Scope) -> None:
    """Only reached where a name may be a function's (see ``_names_functions``)."""
    if is_forbidden_function(body.get("sval", "")):
        w.function([body.get("sval", "")])


def _range_var(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.relation(body, scope)
    w.children("RangeVar", body, scope)


def _func_call(w: _Walker, body: JsonNode, scope: Scope) -> None:
    names = _strings(body.get("funcname", []))
    w.function(names)
    bare = names[-1].lower() if names else ""
    if bare in RELATION_PARAMETERS:  # the catalog's overloads: more precise than the list
        _builtin_relation_arguments(w, bare, body.get("args", []))
    elif bare in RELATION_NAME_FUNCTIONS:
        _relation_arguments(w, body.get("args", []))
    elif bare in UNREADABLE_RELATION_FUNCTIONS:
        w.relations.add("*.*")
    if bare in SEQUENCE_WRITERS:
        w.add_class("update")
    w.children("FuncCall", body, scope, skip=_FUNCNAME)


def _builtin_relation_arguments(w: _Walker, bare: str, args: list[JsonNode]) -> None:
    """The relations named by the arguments of a function that takes a relation (built-ins and
    contrib, see :mod:`tether.policy.sql_builtins`): a ``regclass`` parameter reads an untyped
    string literal as ``regclass`` input, a relation-name ``text`` parameter reads it the same way.
    A named argument counts unless its name is one of the function's other parameters; a value
    that is not a string constant is an unknown relation (``*.*``)."""
    found = relation_parameters(bare, len(args))
    if found is None:
        return
    positions, names, others = found
    for index, arg in enumerate(args):
        named = arg.get("NamedArgExpr")
        if named is None:
            if index in positions:
                w.relation_text(arg, unknown=True)
        elif named.get("name", "") in names or named.get("name", "") not in others:
            w.relation_text(named.get("arg", {}), unknown=True)


def _relation_arguments(w: _Walker, args: list[JsonNode]) -> None:
    """The relations named by the arguments of a relation-naming function: the first
    positional one and every named one (its name is not checked: the safe side)."""
    for index, arg in enumerate(args):
        if "NamedArgExpr" in arg:
            w.relation_text(arg["NamedArgExpr"].get("arg", {}), unknown=True)
        elif index == 0:
            w.relation_text(arg, unknown=True)


def _type_cast(w: _Walker, body: JsonNode, scope: Scope) -> None:
    """``'t'::regclass`` names the relation ``t`` (a cast of anything else names nothing)."""
    names = _strings(body.get("typeName", {}).get("names", []))
    if names and names[-1] == "regclass" and names[:-1] in ([], ["pg_catalog"]):
        w.relation_text(body.get("arg", {}), unknown=False)
    w.children("TypeCast", body, scope)


def _publication(kind: str) -> Handler:
    """CREATE/ALTER PUBLICATION: ``FOR ALL TABLES`` publishes every relation (``*.*``)."""

    def handler(w: _Walker, body: JsonNode, scope: Scope) -> None:
        w.statement(kind, _STMT_CLASS[kind])
        if body.get("for_all_tables"):
            w.relations.add("*.*")
        w.children(kind, body, scope)

    return handler


def _publication_object(w: _Walker, body: JsonNode, scope: Scope) -> None:
    """``TABLES IN SCHEMA s`` publishes every relation of ``s``."""
    if body.get("pubobjtype") == "PUBLICATIONOBJ_TABLES_IN_CUR_SCHEMA":
        w.whole_schema(w.schema)
    elif "name" in body and "pubtable" not in body:
        w.whole_schema(body["name"])
    w.children("PublicationObjSpec", body, scope)


def _import_foreign_schema(w: _Walker, body: JsonNode, scope: Scope) -> None:
    """IMPORT FOREIGN SCHEMA creates foreign tables in the local schema: the listed ones with
    ``LIMIT TO``, otherwise any (``local.*``)."""
    w.statement("ImportForeignSchemaStmt", "ddl")
    local = body.get("local_schema", "")
    if body.get("list_type") == "FDW_IMPORT_SCHEMA_LIMIT_TO":
        for item in body.get("table_list", []):
            w.relations.add(_qualified(local, item.get("RangeVar", {}).get("relname", "")))
    else:
        w.whole_schema(local)
    w.children("ImportForeignSchemaStmt", body, scope, skip=_TABLE_LIST)


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
    name = setting_name(body.get("name", ""))  # SET "ROLE", SET "Search_Path": the same settings
    kind = body.get("kind", "")
    if name in ("role", "session_authorization"):
        cls = "role"
    elif kind == "VAR_SET_MULTI" and name.startswith("transaction"):
        cls = "transaction"
    else:
        cls = "set"
    w.statement("VariableSetStmt", cls)
    if w.depth > 0:  # in a function body: a change the broker would not see take effect
        w.forbid(f"SET {name} in a function body: the session's settings are not followed there")
    elif kind == "VAR_SET_VALUE" and not _reading_kept(name, body.get("args", [])):
        w.forbid(f"SET {name}: the statements after it would not read as the policy parses them")
    changes_path = name == "search_path" and kind != "VAR_SET_CURRENT"  # FROM CURRENT: as is
    if body is w.top and (changes_path or kind == "VAR_RESET_ALL"):
        values = body.get("args", []) if kind == "VAR_SET_VALUE" else []
        w.search_path = tuple(_const_text(v) for v in values)
    if body is w.top and (cls == "role" or kind == "VAR_RESET_ALL"):
        # Whose schema "$user" names, and which schemas are usable, follow the role.
        values = body.get("args", []) if kind == "VAR_SET_VALUE" else []
        role = _const_text(values[0]) if len(values) == 1 else ""
        w.role = "" if role.lower() == "none" else role
    w.children("VariableSetStmt", body, scope)


# The settings that change how PostgreSQL reads the text of later statements, and their
# values under which it reads them as the policy's parser does (UTF-8, standard strings).
# RESET and DEFAULT go back to the values of the session's start, which the broker checked.
_READING: Final = {
    "client_encoding": frozenset({"utf8", "utf-8", "utf_8", "unicode"}),
    "standard_conforming_strings": frozenset({"on", "true", "yes", "1"}),
}


def _reading_kept(name: str, values: list[JsonNode]) -> bool:
    """Whether ``SET name = values`` keeps statement text reading as the parser reads it."""
    safe = _READING.get(name)
    if safe is None:
        return True
    return len(values) == 1 and _const_text(values[0]).strip().lower() in safe


def _discard(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.statement("DiscardStmt", "other")
    if body is w.top and body.get("target") == "DISCARD_ALL":
        w.search_path = ()
        w.role = ""  # DISCARD ALL includes SET SESSION AUTHORIZATION DEFAULT


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
        if len(source) != 1:
            w.forbid("CREATE FUNCTION with an object file")
        else:
            path = _function_search_path(body, w.schema)
            for schema in path or (w.schema,):
                w.sql_body(source[0], schema, anywhere=path is None)
    w.children("CreateFunctionStmt", body, scope)


def _function_search_path(body: JsonNode, current: str) -> list[str] | None:
    """The schemas a string body's unqualified names resolve to when the function runs: the
    ones its ``SET search_path`` clause lists (``FROM CURRENT``: the path of this statement,
    decided under ``current``); None when it runs under the caller's path, which may be any
    (no such clause, ``"$user"``, the server default)."""
    for elem in _defelems(body.get("options", [])):
        setting = elem.get("arg", {}).get("VariableSetStmt", {})
        if elem.get("defname") != "set" or setting_name(setting.get("name", "")) != "search_path":
            continue
        if setting.get("kind") == "VAR_SET_CURRENT":
            return [current]
        values = [_const_text(v) for v in setting.get("args", [])]
        if setting.get("kind") != "VAR_SET_VALUE" or "$user" in values or "" in values:
            return None
        return values
    return None


def _alter_function(w: _Walker, body: JsonNode, scope: Scope) -> None:
    """``ALTER FUNCTION ... SET search_path`` (or its ``RESET``, ``RESET ALL``) moves where the
    function's string body finds its unqualified names, which were checked under the path it
    had: any relation (``*.*``), as for a body that runs under the caller's path."""
    w.statement("AlterFunctionStmt", "ddl")
    for elem in _defelems(body.get("actions", [])):
        setting = elem.get("arg", {}).get("VariableSetStmt", {})
        if elem.get("defname") != "set" or not setting:
            continue
        if setting.get("kind") == "VAR_RESET_ALL" or (
            setting_name(setting.get("name", "")) == "search_path"
        ):
            w.relations.add("*.*")
    w.children("AlterFunctionStmt", body, scope)


def _cascading(kind: str, cls: str | None) -> Handler:
    """``CASCADE`` acts on objects the statement does not name, found in the catalog:
    ``TRUNCATE ... CASCADE`` empties every table whose foreign key references a named one,
    ``DROP ... CASCADE`` (and ``ALTER TABLE ... DROP ... CASCADE``) drops the views,
    materialized views, columns and constraints that depend on it, in any schema and whoever
    owns them. They are unknown relations (``*.*``). ``cls`` None: not a statement node."""

    def handler(w: _Walker, body: JsonNode, scope: Scope) -> None:
        if cls is not None:
            w.statement(kind, cls)
        if body.get("behavior") == "DROP_CASCADE":
            w.relations.add("*.*")
        w.children(kind, body, scope)

    return handler


def _def_elem(w: _Walker, body: JsonNode, scope: Scope) -> None:
    """An option ``program`` or ``filename`` is file_fdw's (shipped with PostgreSQL): a foreign
    table with it runs a command on the database server, or reads a server file, at every
    scan, as ``COPY ... PROGRAM`` and ``COPY`` of a file do. No other option list PostgreSQL
    has takes such a name (a wrong one is an error there), and another wrapper may read them
    alike, so the name is enough, in any case and any statement."""
    detail = _SERVER_SIDE_OPTIONS.get(str(body.get("defname", "")).lower())
    if detail is not None:
        w.forbid(detail)
    w.children("DefElem", body, scope)


_SERVER_SIDE_OPTIONS: Final = {
    "program": "the option 'program' runs a command on the database server, as COPY ... "
    "PROGRAM does",
    "filename": "the option 'filename' reads a file on the database server, as COPY of a file does",
}


def _alter_subscription(w: _Walker, body: JsonNode, scope: Scope) -> None:
    w.statement("AlterSubscriptionStmt", "ddl")
    if body.get("kind") == "ALTER_SUBSCRIPTION_CONNECTION":
        w.forbid("ALTER SUBSCRIPTION ... CONNECTION makes the server connect to another server")
    w.children("AlterSubscriptionStmt", body, scope)


def _objects(kind: str, type_field: str, objects_field: str) -> Handler:
    """DROP, COMMENT, SECURITY LABEL, ALTER ... OWNER: relations behind object names."""

    def handler(w: _Walker, body: JsonNode, scope: Scope) -> None:
        w.statement(kind, _STMT_CLASS[kind])
        if body.get("behavior") == "DROP_CASCADE":  # as in _cascading
            w.relations.add("*.*")
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
        rel, newname = body["relation"], body.get("newname", "")
        if rel.get("schemaname"):
            w.relations.add(_qualified(rel["schemaname"], newname))
        else:  # the new name goes where the old one was found
            w.unqualified(rel.get("relname", ""), newname)
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
    # PostgreSQL runs the elements with the new schema in front of the search path: a name
    # they read unqualified may also be found in a schema of the path (a view's SELECT
    # FROM secrets reads the path's secrets when the new schema has none). So the elements
    # are walked again in this statement's schema, except for the relations they create.
    created = {_qualified(saved, name) for name in _created_names(body)}
    before = set(w.relations)
    w.children("CreateSchemaStmt", body, scope)
    w.relations -= (w.relations - before) & created


def _created_names(body: JsonNode) -> list[str]:
    """The names of the relations the elements of a ``CREATE SCHEMA`` create."""
    names: list[str] = []
    for element in body.get("schemaElts", []):
        for kind, field in _CREATING.items():
            if kind in element:
                created = element[kind].get(field)
                if isinstance(created, dict):
                    created = created.get("relname")
                if isinstance(created, str):
                    names.append(created)
    return names


_CREATING: Final = {"CreateStmt": "relation", "ViewStmt": "view", "CreateSeqStmt": "sequence",
                    "IndexStmt": "idxname"}  # fmt: skip


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
    "TypeCast": _type_cast,
    "CreatePublicationStmt": _publication("CreatePublicationStmt"),
    "AlterPublicationStmt": _publication("AlterPublicationStmt"),
    "PublicationObjSpec": _publication_object,
    "ImportForeignSchemaStmt": _import_foreign_schema,
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
    "AlterFunctionStmt": _alter_function,
    "DefElem": _def_elem,
    "DropStmt": _objects("DropStmt", "removeType", "objects"),
    "TruncateStmt": _cascading("TruncateStmt", "truncate"),
    "AlterTableCmd": _cascading("AlterTableCmd", None),
    "AlterDomainStmt": _cascading("AlterDomainStmt", "ddl"),
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
