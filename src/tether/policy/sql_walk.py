"""The walk over one statement's JSON parse tree, for :mod:`tether.policy.sql_analyze`.

A :class:`_Walker` visits every node generically and collects the facts; node kinds with a
handler of their own are in :mod:`tether.policy.sql_handlers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pglast import parser as pg_parser

from tether.policy.sql_catalog import CATALOG_RELATIONS
from tether.policy.sql_handlers import _DISPATCH
from tether.policy.sql_tables import (
    _ALWAYS_FORBIDDEN,
    _LEAVES_AND_NAMES,
    _LITERAL_FREE,
    _MAX_BODY_DEPTH,
    _NO_SCOPE,
    _NO_STRUCTS,
    _NOTHING,
    _RELATION_MEMBERS,
    _RELATION_OBJECTS,
    _STRUCTS_OF,
    JsonNode,
    Scope,
    _default_class,
    _part,
    _qualified,
    _strings,
    is_forbidden_function,
    relation_name_parts,
)


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
    role: str | None = None


class _Walker:
    """Collects the facts of one statement; mutable, lives for one call."""

    def __init__(self, default_schema: str, depth: int = 0) -> None:
        self.schema = default_schema
        self.depth = depth
        # A string body resolved at each call under the caller's search path: an unqualified
        # name there may be any schema's relation (see ``sql_body``).
        self.anywhere = False
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
        self.role: str | None = None

    def facts(self) -> StatementFacts:
        return StatementFacts(
            classes=frozenset(self.classes or ("other",)),
            relations=frozenset(self.relations),
            functions=frozenset(self.functions),
            forbidden_functions=frozenset(self.forbidden_functions),
            forbidden=self.forbidden,
            search_path=self.search_path,
            role=self.role,
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
        if target and name == "pg_settings" and schema in (None, "pg_catalog"):
            # Its rules call set_config (always forbidden): a write sets a setting unseen.
            self.forbid("writing pg_settings changes the session's settings, as set_config does")
        if schema is None:
            if not target and name in scope:
                return
            self.unqualified(name, name)
            return
        self.relations.add(_qualified(schema, name))

    def unqualified(self, name: str, named: str) -> None:
        """The relation ``named`` in the schema an unqualified ``name`` is found in: the
        catalog's for a catalog relation, else this walk's schema, and both for any other
        ``pg_`` name (the catalog is searched first: :mod:`tether.policy.sql_catalog`). In a
        function body resolved under the caller's path, any relation (``*.*``) as well."""
        if self.anywhere:
            self.relations.add("*.*")
        if name.startswith("pg_"):
            self.relations.add(_qualified("pg_catalog", named))
            if name in CATALOG_RELATIONS:
                return
        self.relations.add(_qualified(self.schema, named))

    def named_relation(self, names: list[str]) -> None:
        """A relation given as a name list (``[schema,] name``, a catalog part is ignored)."""
        if not names:
            return
        if len(names) > 1:
            self.relations.add(_qualified(names[-2], names[-1]))
        else:
            self.unqualified(names[-1], names[-1])

    def relation_text(self, node: JsonNode, *, unknown: bool) -> None:
        """A relation named by a value (``nextval('s')``, ``'t'::regclass``): a string constant
        under any casts is read as ``regclass`` reads it; anything else (an expression, a
        parameter, an OID) is an unknown relation, reported as ``*.*`` when ``unknown``."""
        self.sensitive = True  # the relation is read from a constant
        while "TypeCast" in node:
            node = node["TypeCast"].get("arg", {})
        const = node.get("A_Const", {})
        text = const.get("sval", {}).get("sval") if "sval" in const else None
        parts = relation_name_parts(text) if isinstance(text, str) else None
        if parts is None or len(parts) > 3:
            if unknown:
                self.relations.add("*.*")
            return
        self.named_relation(parts[-2:])

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

    def sql_body(self, body: str, schema: str, *, anywhere: bool = False) -> None:
        """A ``LANGUAGE sql`` function body given as a string: checked like a query, its
        unqualified names resolved to ``schema``. PostgreSQL parses such a body at each call,
        under the search path in force then: with ``anywhere`` (the function does not pin its
        own path), an unqualified name may be any schema's relation, so it also reports
        ``*.*`` (the path of the statement that creates the function is no guide)."""
        if self.depth >= _MAX_BODY_DEPTH:
            self.forbid("function bodies nested too deeply")
            return
        try:
            stmts = json.loads(pg_parser.parse_sql_json(body)).get("stmts", [])
        except pg_parser.ParseError:
            self.forbid("the function body does not parse as SQL")
            return
        for stmt in stmts:
            inner = _Walker(schema, self.depth + 1)
            inner.anywhere = self.anywhere or anywhere
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
