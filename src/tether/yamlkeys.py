"""A safe YAML loader that refuses a key given twice in one mapping.

Plain YAML loaders keep the last value of a repeated key without a word. In a node's
configuration a second ``audit:`` section appended at the bottom silently replaced the
first, its SIEM sinks with it; in a target file a second ``base_url`` or ``tls_verify``
won unseen. Policies already refuse it (:mod:`tether.policy.yamlsrc`); this loader is for
the other files an operator writes.
"""

from __future__ import annotations

from typing import Any

import yaml


class UniqueKeyLoader(yaml.SafeLoader):
    """:class:`yaml.SafeLoader` whose mappings refuse a repeated key (a ``ConstructorError``
    marked at the second one, so the caller's message names its line)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str | int | float | bool] = set()
        for key_node, _value in node.value:
            if key_node.tag == _MERGE:  # a merge's keys may be overridden: that is its use
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                continue  # not hashable as such; the reader refuses it as a name anyway
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {key!r}", key_node.start_mark,
                )  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_MERGE = "tag:yaml.org,2002:merge"
