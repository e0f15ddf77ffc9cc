"""PostgreSQL's functions that take a relation by name, as data (no I/O).

PostgreSQL turns an untyped string literal into the type of the parameter it is passed to, so
``pg_relation_size('vault.items')`` reads ``'vault.items'`` as ``regclass`` (the relation
``vault.items``) without any cast in the query; and some functions take a relation name as
``text`` and look it up themselves (``has_table_privilege('vault.items', 'select')``). The
analysis reports the relation such an argument names (see :mod:`tether.policy.sql_analyze`).

The tables are derived from the catalog of PostgreSQL 15, and ``tests/policy/test_sql_builtins.py``
checks them against a real server, so they cannot drift. Each overload is written as
``pg_get_function_arguments`` prints it, without its ``OUT`` arguments (they are not inputs):

* :data:`REGCLASS_FUNCTIONS`: every built-in (``pg_catalog``, ``information_schema``) with an
  input argument of type ``regclass``; :data:`EXTENSION_REGCLASS_FUNCTIONS`: the same for the
  functions of every extension shipped with PostgreSQL (contrib). Every ``regclass`` argument
  names a relation.
* :data:`TEXT_RELATION_FUNCTIONS` (built-ins) and :data:`EXTENSION_TEXT_RELATION_FUNCTIONS`
  (contrib): the functions that read a ``text`` (or ``cstring``) argument as a relation name,
  with its position. Found by calling every such function with the name of a missing relation
  in each text position: these are the overloads that fail with "relation ... does not exist"
  (SQLSTATE 42P01). Added by hand, each checked by the test on its own: ``to_regclass`` (it
  answers NULL for a missing relation instead of failing) and pageinspect's
  ``get_raw_page(text, text, bigint)`` (it checks its fork name first).
* :data:`UNREADABLE_RELATION_FUNCTIONS`: ``pg_get_object_address`` takes a relation as an
  array of name parts (``'{vault,items}'``): any call of it names an unknown relation.

Overloads of the same arity taking the relation as an OID (``has_table_privilege(oid, text)``,
``pg_get_viewdef(oid)``, ``row_security_active(oid)``) have it at the same position, so an OID
there counts like any value that is not a name: an unknown relation, ``*.*``. Extension
functions are matched by name in any schema (an extension may be installed in any schema).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

REGCLASS_FUNCTIONS: Final[dict[str, tuple[str, ...]]] = {
    "brin_desummarize_range": ("regclass, bigint",),
    "brin_summarize_new_values": ("regclass",),
    "brin_summarize_range": ("regclass, bigint",),
    "currval": ("regclass",),
    "gin_clean_pending_list": ("regclass",),
    "nextval": ("regclass",),
    "pg_column_is_updatable": ("regclass, smallint, boolean",),
    "pg_extension_config_dump": ("regclass, text",),
    "pg_get_replica_identity_index": ("regclass",),
    "pg_index_column_has_property": ("regclass, integer, text",),
    "pg_index_has_property": ("regclass, text",),
    "pg_indexes_size": ("regclass",),
    "pg_nextoid": ("regclass, name, regclass",),
    "pg_partition_ancestors": ("partitionid regclass",),
    "pg_partition_root": ("regclass",),
    "pg_partition_tree": ("rootrelid regclass",),
    "pg_relation_filenode": ("regclass",),
    "pg_relation_filepath": ("regclass",),
    "pg_relation_is_publishable": ("regclass",),
    "pg_relation_is_updatable": ("regclass, boolean",),
    "pg_relation_size": ("regclass", "regclass, text"),
    "pg_sequence_last_value": ("regclass",),
    "pg_table_size": ("regclass",),
    "pg_total_relation_size": ("regclass",),
    "regclassout": ("regclass",),
    "regclasssend": ("regclass",),
    "setval": ("regclass, bigint", "regclass, bigint, boolean"),
    "table_to_xml": ("tbl regclass, nulls boolean, tableforest boolean, targetns text",),
    "table_to_xml_and_xmlschema": (
        "tbl regclass, nulls boolean, tableforest boolean, targetns text",
    ),
    "table_to_xmlschema": ("tbl regclass, nulls boolean, tableforest boolean, targetns text",),
}

# Extensions shipped with PostgreSQL (contrib): amcheck, pageinspect, pg_freespacemap,
# pg_prewarm, pg_surgery, pg_visibility, pgstattuple.
EXTENSION_REGCLASS_FUNCTIONS: Final[dict[str, tuple[str, ...]]] = {
    "bt_index_check": ("index regclass", "index regclass, heapallindexed boolean"),
    "bt_index_parent_check": (
        "index regclass",
        "index regclass, heapallindexed boolean",
        "index regclass, heapallindexed boolean, rootdescend boolean",
    ),
    "verify_heapam": (
        "relation regclass, on_error_stop boolean DEFAULT false, check_toast boolean DEFAULT"
        " false, skip text DEFAULT 'none'::text, startblock bigint DEFAULT NULL::bigint,"
        " endblock bigint DEFAULT NULL::bigint",
    ),
    "brin_page_items": ("page bytea, index_oid regclass",),
    "gist_page_items": ("page bytea, index_oid regclass",),
    "hash_bitmap_info": ("index_oid regclass, blkno bigint",),
    "heap_page_item_attrs": (
        "page bytea, rel_oid regclass",
        "page bytea, rel_oid regclass, do_detoast boolean",
    ),
    "pg_freespace": ("regclass, bigint", "rel regclass"),
    "pg_prewarm": (
        "regclass, mode text DEFAULT 'buffer'::text, fork text DEFAULT 'main'::text, first_block"
        " bigint DEFAULT NULL::bigint, last_block bigint DEFAULT NULL::bigint",
    ),
    "heap_force_freeze": ("reloid regclass, tids tid[]",),
    "heap_force_kill": ("reloid regclass, tids tid[]",),
    "pg_check_frozen": ("regclass",),
    "pg_check_visible": ("regclass",),
    "pg_truncate_visibility_map": ("regclass",),
    "pg_visibility_map_summary": ("regclass",),
    "pg_visibility_map": ("regclass", "regclass, blkno bigint"),
    "pg_visibility": ("regclass", "regclass, blkno bigint"),
    "pg_relpages": ("relname regclass",),
    "pgstatginindex": ("relname regclass",),
    "pgstathashindex": ("relname regclass",),
    "pgstatindex": ("relname regclass",),
    "pgstattuple_approx": ("reloid regclass",),
    "pgstattuple": ("reloid regclass",),
}

# function -> {arguments of an overload: position of the relation name}
TEXT_RELATION_FUNCTIONS: Final[dict[str, dict[str, int]]] = {
    "currtid2": {"text, tid": 0},
    "has_any_column_privilege": {"text, text": 0, "name, text, text": 1, "oid, text, text": 1},
    "has_column_privilege": {
        "text, text, text": 0,
        "text, smallint, text": 0,
        "name, text, text, text": 1,
        "name, text, smallint, text": 1,
        "oid, text, text, text": 1,
        "oid, text, smallint, text": 1,
    },
    "has_sequence_privilege": {"text, text": 0, "name, text, text": 1, "oid, text, text": 1},
    "has_table_privilege": {"text, text": 0, "name, text, text": 1, "oid, text, text": 1},
    "pg_get_serial_sequence": {"text, text": 0},
    "pg_get_viewdef": {"text": 0, "text, boolean": 0},
    "regclass": {"text": 0},
    "regclassin": {"cstring": 0},
    "row_security_active": {"text": 0},
    "to_regclass": {"text": 0},
}

# pageinspect, pgrowlocks, pgstattuple.
EXTENSION_TEXT_RELATION_FUNCTIONS: Final[dict[str, dict[str, int]]] = {
    "bt_metap": {"relname text": 0},
    "bt_page_items": {"relname text, blkno bigint": 0},
    "bt_page_stats": {"relname text, blkno bigint": 0},
    "get_raw_page": {"text, bigint": 0, "text, text, bigint": 0},
    "pgrowlocks": {"relname text": 0},
    "pg_relpages": {"relname text": 0},
    "pgstatindex": {"relname text": 0},
    "pgstattuple": {"relname text": 0},
}

# Functions whose relation argument cannot be read as one name: any call names ``*.*``.
UNREADABLE_RELATION_FUNCTIONS: Final = frozenset({"pg_get_object_address"})


@dataclass(frozen=True, slots=True)
class Overload:
    """One overload: how many arguments it takes (fewer when the last ones have defaults),
    which of them name a relation (by position and by parameter name), and the names of its
    other parameters."""

    least: int
    most: int
    positions: frozenset[int]
    names: frozenset[str]
    other_names: frozenset[str]


def _overload(arguments: str, positions: frozenset[int] | None) -> Overload:
    """An overload from its arguments (``[name] type [DEFAULT value]``, comma-separated) and
    the positions naming a relation (None: those of type ``regclass``)."""
    parts = [part.partition(" DEFAULT ") for part in arguments.split(", ")] if arguments else []
    words = [declared.split() for declared, _, _ in parts]
    if positions is None:
        positions = frozenset(i for i, w in enumerate(words) if w[-1] == "regclass")
    names = {w[0]: i for i, w in enumerate(words) if len(w) == 2}
    defaults = sum(1 for _, default, _ in parts if default)
    return Overload(
        least=len(parts) - defaults,
        most=len(parts),
        positions=positions,
        names=frozenset(n for n, i in names.items() if i in positions),
        other_names=frozenset(n for n, i in names.items() if i not in positions),
    )


def _overloads() -> dict[str, tuple[Overload, ...]]:
    table: dict[str, list[Overload]] = {}
    for regclass in (REGCLASS_FUNCTIONS, EXTENSION_REGCLASS_FUNCTIONS):
        for name, signatures in regclass.items():
            table.setdefault(name, []).extend(_overload(s, None) for s in signatures)
    for text in (TEXT_RELATION_FUNCTIONS, EXTENSION_TEXT_RELATION_FUNCTIONS):
        for name, overloads in text.items():
            for arguments, position in overloads.items():
                table.setdefault(name, []).append(_overload(arguments, frozenset({position})))
    return {name: tuple(overloads) for name, overloads in table.items()}


RELATION_PARAMETERS: Final = _overloads()


def relation_parameters(
    name: str, arity: int
) -> tuple[frozenset[int], frozenset[str], frozenset[str]] | None:
    """For a call of function ``name`` (its last name part, lower case) with ``arity``
    arguments: the positions and parameter names that name a relation, and the names of
    parameters that do not; None when ``name`` takes no relation.

    The overloads of that arity are merged (a position naming a relation in any of them
    counts). A call of an arity no overload has (a user's function of the same name, or an
    error) merges all overloads: the safe side."""
    overloads = RELATION_PARAMETERS.get(name)
    if overloads is None:
        return None
    fitting = [o for o in overloads if o.least <= arity <= o.most] or list(overloads)
    positions = frozenset[int]().union(*(o.positions for o in fitting))
    names = frozenset[str]().union(*(o.names for o in fitting))
    others = frozenset[str]().union(*(o.other_names for o in fitting)) - names
    return positions, names, others
