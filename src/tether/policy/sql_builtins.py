"""PostgreSQL's built-in functions that take a relation by name, as data (no I/O).

PostgreSQL turns an untyped string literal into the type of the parameter it is passed to, so
``pg_relation_size('vault.items')`` reads ``'vault.items'`` as ``regclass`` (the relation
``vault.items``) without any cast in the query; and some built-ins take a relation name as
``text`` and look it up themselves (``has_table_privilege('vault.items', 'select')``). The
analysis reports the relation such an argument names (see :mod:`tether.policy.sql_analyze`).

Both tables are derived from the catalog of a fresh PostgreSQL 15 cluster, and
``tests/policy/test_sql_builtins.py`` checks them against a real server, so they cannot drift:

* :data:`REGCLASS_FUNCTIONS`: every function of the catalog with an input argument of type
  ``regclass``, each overload as ``pg_get_function_identity_arguments`` prints it (``OUT``
  arguments are not inputs and are dropped here). Every ``regclass`` argument names a relation.
* :data:`TEXT_RELATION_FUNCTIONS`: the functions that read a ``text`` (or ``cstring``)
  argument as a relation name, with its position. Found by calling every catalog function with
  a text argument with the name of a missing relation in each text position: these are the
  overloads that fail with "relation ... does not exist" (SQLSTATE 42P01). ``to_regclass`` is
  added by hand: it answers NULL for a missing relation instead of failing.
  ``pg_get_object_address`` takes a relation as an array of name parts (``'{vault,items}'``)
  and is in :data:`UNREADABLE_RELATION_FUNCTIONS`: any call of it names an unknown relation.

Overloads of the same arity taking the relation as an OID (``has_table_privilege(oid, text)``,
``pg_get_viewdef(oid)``, ``row_security_active(oid)``) have it at the same position, so an OID
there counts like any value that is not a name: an unknown relation, ``*.*``.
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

# function -> {identity arguments of an overload: position of the relation name}
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

# Functions whose relation argument cannot be read as one name: any call names ``*.*``.
UNREADABLE_RELATION_FUNCTIONS: Final = frozenset({"pg_get_object_address"})


@dataclass(frozen=True, slots=True)
class Overload:
    """One overload: how many arguments it takes, which of them name a relation (by position
    and by parameter name), and the names of its other parameters."""

    arity: int
    positions: frozenset[int]
    names: frozenset[str]
    other_names: frozenset[str]


def _regclass_overload(arguments: str) -> Overload:
    parts = [part.split() for part in arguments.split(", ")] if arguments else []
    positions = {i for i, words in enumerate(parts) if words[-1] == "regclass"}
    names = {words[0] for i, words in enumerate(parts) if i in positions and len(words) == 2}
    others = {words[0] for i, words in enumerate(parts) if i not in positions and len(words) == 2}
    return Overload(len(parts), frozenset(positions), frozenset(names), frozenset(others))


def _overloads() -> dict[str, tuple[Overload, ...]]:
    table: dict[str, list[Overload]] = {}
    for name, signatures in REGCLASS_FUNCTIONS.items():
        table.setdefault(name, []).extend(_regclass_overload(s) for s in signatures)
    for name, positions in TEXT_RELATION_FUNCTIONS.items():
        for arguments, position in positions.items():
            arity = len(arguments.split(", "))
            table.setdefault(name, []).append(
                Overload(arity, frozenset({position}), frozenset(), frozenset())
            )
    return {name: tuple(overloads) for name, overloads in table.items()}


RELATION_PARAMETERS: Final = _overloads()


def relation_parameters(
    name: str, arity: int
) -> tuple[frozenset[int], frozenset[str], frozenset[str]] | None:
    """For a call of built-in ``name`` (its last name part, lower case) with ``arity``
    arguments: the positions and parameter names that name a relation, and the names of
    parameters that do not; None when ``name`` takes no relation.

    The overloads of that arity are merged (a position naming a relation in any of them
    counts). A call of an arity no overload has (a user's function of the same name, or an
    error) merges all overloads: the safe side."""
    overloads = RELATION_PARAMETERS.get(name)
    if overloads is None:
        return None
    fitting = [o for o in overloads if o.arity == arity] or list(overloads)
    positions = frozenset[int]().union(*(o.positions for o in fitting))
    names = frozenset[str]().union(*(o.names for o in fitting))
    others = frozenset[str]().union(*(o.other_names for o in fitting)) - names
    return positions, names, others
