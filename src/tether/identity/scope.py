"""Narrowing of scopes: a credential derived from another never reaches further.

A scope is a list of target-name globs (``*`` matches any run of characters). A requested
glob is *covered* by a held scope when every target name it can match is matched by one
held glob. The check is conservative: it may refuse a request a full glob-inclusion solver
would allow, never the reverse.
"""

from __future__ import annotations

from collections.abc import Sequence

from tether.policy.names import compile_name_glob


def covered(requested: str, held: Sequence[str]) -> bool:
    """Whether every name matched by ``requested`` is matched by some glob in ``held``."""
    for glob in held:
        if glob in ("*", requested):
            return True
        if "*" not in requested and compile_name_glob(glob)(requested):
            return True
        prefix = glob[:-1]
        if glob.endswith("*") and "*" not in prefix and requested.startswith(prefix):
            return True
    return False


def narrowed(requested: Sequence[str] | None, held: Sequence[str]) -> tuple[str, ...] | None:
    """``requested`` if every glob is covered by ``held`` (``held`` itself when None is
    requested); None when the request is wider than what is held."""
    if requested is None:
        return tuple(held)
    if not requested or not all(covered(r, held) for r in requested):
        return None
    return tuple(requested)
