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
``REINDEX DATABASE``) reports ``*.*``, so only a rule whose tables cover all of it allows it;
so does ``CASCADE`` (``TRUNCATE``, ``DROP``, ``ALTER ... DROP``), which acts on dependent
objects the statement does not name, in any schema. A
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
SUBSCRIPTION`` and ``ALTER SUBSCRIPTION ... CONNECTION`` (the server connects elsewhere), an
option named ``program`` or ``filename`` in any statement (file_fdw's: a foreign table with one
runs a command or reads a server file at each scan, as ``COPY ... PROGRAM`` does), and
``CREATE FUNCTION``/``PROCEDURE`` whose body is not SQL: a body in PL/pgSQL, C, ``internal`` or
any other language cannot be checked (``internal`` even re-exports built-ins under new names). A
``LANGUAGE sql`` string body is parsed and checked like the statement itself: its classes,
relations and functions are added to the ``CREATE``; with a ``SET search_path`` clause its
unqualified names resolve in each schema listed there (the body runs with that path). Without
one (or with ``"$user"`` or ``DEFAULT`` in it) the body is parsed at each call under the
caller's path, which may be any: each unqualified relation in it also reports ``*.*``. So does
``ALTER FUNCTION ... SET search_path`` (or ``RESET``), which moves a body checked under its old
path.

Relations named in strings: ``'t'::regclass`` names ``t``, and so does a function argument in a
position where the function takes a relation: every ``regclass`` parameter of a built-in (an
untyped literal is read as ``regclass``: ``pg_relation_size('t')``, ``nextval('s')``), every
built-in ``text`` parameter looked up as a relation (``has_table_privilege``,
``pg_get_viewdef``...), and the same for the functions of the extensions shipped with
PostgreSQL (``get_raw_page('t', 0)``), matched in any schema. The tables are in
:mod:`tether.policy.sql_builtins`, derived from the catalog; a named argument counts unless it
names another parameter of the function. The string is read as ``regclass`` input reads it; an
argument there that is not a string constant (an expression, a parameter, an OID) is an unknown
relation, ``*.*``. ``nextval`` and ``setval`` also need ``update``; the others add no class
(most read metadata: the statement's own class, ``select`` for a ``SELECT``, covers them, as
for ``to_regclass``). Reading a constant makes the statement literal-sensitive. ``CREATE
PUBLICATION ... FOR ALL TABLES`` reports ``*.*``, ``TABLES IN SCHEMA s`` and ``IMPORT FOREIGN
SCHEMA ... INTO s`` report ``s.*``.

Limits, not seen by any parse-tree analysis: functions that take a relation's OID as ``oid``
(``pg_get_indexdef(16384)``), users' functions with a ``regclass`` parameter, a string compared
with a ``regclass`` value only the catalog types (``relid = 't'``: it reveals an OID, no
contents), code run by operators, casts, triggers, views, rules
and functions defined earlier (their definitions were checked when created through Tether), the
attribute notation ``x.f`` for functions of composite arguments, and ``COPY t TO ''`` (the parse
tree drops the empty name; PostgreSQL refuses an empty file name, so nothing is read or written).
"""

from __future__ import annotations

from typing import Final

from tether.policy.sql_tables import (
    _NO_SCOPE,
    FORBIDDEN_FUNCTION_PREFIXES,
    FORBIDDEN_FUNCTIONS,
    JsonNode,
    Scope,
    is_forbidden_function,
)
from tether.policy.sql_walk import StatementFacts
from tether.policy.sql_walk import _Walker as _Walker  # tests reach it here

__all__ = [
    "FORBIDDEN_FUNCTIONS",
    "FORBIDDEN_FUNCTION_PREFIXES",
    "STATEMENT_CLASSES",
    "JsonNode",
    "Scope",
    "StatementFacts",
    "analyze_statement",
    "is_forbidden_function",
]

STATEMENT_CLASSES: Final = frozenset(
    {
        "select", "insert", "update", "delete", "merge", "truncate", "ddl", "grant",
        "transaction", "set", "role", "explain", "other",
    }
)  # fmt: skip


def analyze_statement(stmt: JsonNode, default_schema: str) -> StatementFacts:
    """Walk one top-level statement node (``{"SelectStmt": {...}}``)."""
    walker = _Walker(default_schema)
    walker.top = next(iter(stmt.values()), None)
    walker.node(stmt, _NO_SCOPE)
    return walker.facts()
