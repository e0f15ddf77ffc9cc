"""HTTP request paths, path patterns and methods (spec 5.1): the policy's HTTP vocabulary.

This module is the entry point; the parts live in three modules, each documenting its own
security decisions:

* :mod:`tether.policy.httppath` -- the canonical form of a request target. Anything two
  servers behind the broker might read differently is denied as ``ambiguous-path`` rather than
  normalised, since a normalised path is not the path that gets forwarded.
* :mod:`tether.policy.httppattern` -- path patterns (``*``, ``{name}``, ``**``), written
  decoded, compiled once, matched without backtracking.
* :mod:`tether.policy.httpmethods` -- method tokens and method-override headers, which must be
  allowed as well as the request's own method.
"""

from __future__ import annotations

from tether.policy.httpmethods import (
    OVERRIDE_HEADERS,
    PATH_OVERRIDE_HEADERS,
    may_override_method,
    method_ok,
    methods_match,
    override_methods,
    override_paths,
    overrides,
    query_override_methods,
)
from tether.policy.httppath import MAX_TARGET, HttpPath, canonicalize_path
from tether.policy.httppattern import PathPattern

__all__ = [
    "MAX_TARGET",
    "OVERRIDE_HEADERS",
    "PATH_OVERRIDE_HEADERS",
    "HttpPath",
    "PathPattern",
    "canonicalize_path",
    "may_override_method",
    "method_ok",
    "methods_match",
    "override_methods",
    "override_paths",
    "overrides",
    "query_override_methods",
]
