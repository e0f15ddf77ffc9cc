"""YAML reading that keeps line numbers, so every load error can name its line.

Mappings come back as :class:`Node` (a ``dict`` that remembers the line of the
mapping and of each key). Duplicate keys, which plain YAML loaders silently
resolve to the last value, are load errors: a policy must never say two things.
Aliases (``*name``, and so merge keys ``<<: *name``) are load errors too: a policy
needs none, and a few hundred bytes of nested aliases in a test's ``request`` expand
to gigabytes when the tests are read (the node froze on such a reload). A document
nested too deeply for the parser is a load error, not a ``RecursionError``.
"""

from __future__ import annotations

from typing import Any

import yaml

from tether.policy.errors import PolicyLoadError


class Node(dict[str, Any]):
    """A YAML mapping with the (1-based) line of itself and of each of its keys."""

    line: int
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


# libyaml's parser when present (about 3x faster on large policy sets); same line marks.
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """A safe loader whose mappings remember lines and refuse duplicate keys and aliases."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # The composer (libyaml's, in C) resolves an alias to the very node it names, so
        # a node met a second time is an alias of it (or a merge key's copy of it).
        if node in self.constructed_objects:
            message = "YAML aliases are not taken (this node is named again by an alias)"
            raise PolicyLoadError(message, line=node.start_mark.line + 1)
        return super().construct_object(node, deep)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Node:
    loader.flatten_mapping(node)
    result = Node()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise PolicyLoadError(f"mapping keys must be strings, got {key!r}", line=line)
        if key in result:
            raise PolicyLoadError(f"duplicate key {key!r}", line=line)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, file: str) -> Any:
    """Parse one YAML document; errors become :class:`PolicyLoadError` naming file and line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except PolicyLoadError as error:
        raise PolicyLoadError(error.message, file=file, line=error.line) from None
    except RecursionError:
        raise PolicyLoadError("invalid YAML: nested too deeply", file=file) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(p for p in (error.context, error.problem) if p) or "invalid YAML"
        raise PolicyLoadError(f"invalid YAML: {message}", file=file, line=line) from None
    except yaml.YAMLError as error:
        raise PolicyLoadError(f"invalid YAML: {error}", file=file) from None
