"""HTTP methods and method-override headers (spec 5.1), for :mod:`tether.policy.httpmatch`.

Methods
=======

Method names compare case-sensitively, ``"*"`` allows any method. ``method_ok`` checks the
RFC 9110 token syntax (and, spec silent, a length of at most 64). Override headers
(``X-HTTP-Method-Override``, ``X-HTTP-Method``, ``X-Method-Override``) are found in any case,
and (spec silent) also when spelled with ``_`` for ``-`` or surrounded by blanks, because CGI,
WSGI and some proxies fold those spellings together. Frameworks commonly upper-case the
override value, so an override ``delete`` yields both ``delete`` and ``DELETE``: each must be
allowed, and a deny rule on ``DELETE`` catches it. A value that is not a method token (empty,
a list) is an ``invalid-request``.

Method-override parameters (spec silent): a ``_method`` parameter of the query string (name
matched after percent-decoding, any case, blanks around it, and ``.`` or a blank inside read
as ``_``, as PHP registers ``.method`` as ``$_GET['_method']``) makes Symfony, Laravel and
Express's ``method-override`` treat a ``POST`` as the method it names; it must be allowed too,
like an override header's (the body's ``_method`` is not visible here). Header names are also
found with ``.`` for ``-`` (PHP's server folds ``X-HTTP-Method.Override`` into
``HTTP_X_HTTP_METHOD_OVERRIDE``).

Path-override headers (spec silent): ``X-Original-URL`` and ``X-Rewrite-URL`` make some
servers and frameworks (IIS URL Rewrite, older Symfony and Zend) route the request to the path
they name instead of the request line's, the classic way around a front-end's path rules; and
WebDAV's ``Destination`` (RFC 4918: the target of ``COPY`` and ``MOVE``, an absolute URI
whose path is taken) names a second path the request writes. The path each names (found as
override headers are) must be allowed too, with every method of the request; one that is not
in canonical form (5.1) is ``ambiguous-path``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote_plus

from tether.policy.errors import InvalidRequest
from tether.policy.httppath import HttpPath, canonicalize_path, show

__all__ = [
    "OVERRIDE_HEADERS",
    "PATH_OVERRIDE_HEADERS",
    "header_key",
    "method_ok",
    "methods_match",
    "override_methods",
    "override_paths",
    "overrides",
    "query_override_methods",
]

OVERRIDE_HEADERS: Final = frozenset(
    {"x-http-method-override", "x-http-method", "x-method-override"}
)
PATH_OVERRIDE_HEADERS: Final = frozenset({"x-original-url", "x-rewrite-url", "destination"})
_URI_PREFIX: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*")
_PHP_NAME: Final = str.maketrans({".": "_", " ": "_"})
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")


def header_key(name: str) -> str:
    """A header name folded as override headers are found: lower case, ``_`` and ``.`` for
    ``-``, surrounding blanks dropped."""
    return name.strip(" \t").replace("_", "-").replace(".", "-").lower()


def method_ok(method: str) -> bool:
    """True if ``method`` is an RFC 9110 token of at most 64 characters."""
    return _TOKEN.fullmatch(method) is not None


def methods_match(allowed: frozenset[str], method: str) -> bool:
    """True if ``method`` is listed in ``allowed`` (case-sensitive) or ``allowed`` has ``*``."""
    return method in allowed or "*" in allowed


def overrides(headers: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[HttpPath, ...]]:
    """In one pass over ``headers``: the methods named by method-override headers (each also
    upper-cased) and the paths named by path-override headers, without repeats.

    Raises ``InvalidRequest`` if an override method is not a method token, then
    ``AmbiguousPath`` if an override path is not a request target in canonical form.
    """
    methods: dict[str, None] = {}
    targets: dict[str, None] = {}
    for name, value in headers.items():
        key = header_key(name)
        if key in OVERRIDE_HEADERS:
            method = value.strip(" \t")
            if not method_ok(method):
                raise InvalidRequest(f"header {show(name)} names no valid method: {show(value)}")
            methods[method] = None
            methods[method.upper()] = None
        elif key in PATH_OVERRIDE_HEADERS:
            target = value.strip(" \t")
            # Destination is an absolute URI (RFC 4918 10.3): its path after the authority.
            authority = _URI_PREFIX.match(target) if key == "destination" else None
            targets[target[authority.end() :] or "/" if authority else target] = None
    return tuple(methods), tuple(canonicalize_path(target) for target in targets)


def override_methods(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The methods named by method-override headers (:func:`overrides`)."""
    return overrides(headers)[0]


def override_paths(headers: Mapping[str, str]) -> tuple[HttpPath, ...]:
    """The paths named by path-override headers (:func:`overrides`)."""
    return overrides(headers)[1]


def query_override_methods(query: str) -> tuple[str, ...]:
    """The methods named by ``_method`` parameters of ``query``, each also upper-cased.

    Raises ``InvalidRequest`` if one is not a method token.
    """
    found: dict[str, None] = {}
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if unquote_plus(name).strip(" \t").lower().translate(_PHP_NAME) != "_method":
            continue
        method = unquote_plus(value).strip(" \t")
        if not method_ok(method):
            raise InvalidRequest(f"query parameter _method names no valid method: {show(value)}")
        found[method] = None
        found[method.upper()] = None
    return tuple(found)


def may_override_method(query: str) -> bool:
    """False only if ``query`` certainly holds no ``_method`` parameter (cheap test)."""
    return "%" in query or "method" in query.lower()
